"""Which worker accepts next (bastion/server/balance.py): the counts are shared with forked
workers, the worker holding fewest takes a connection at once, a busier one waits a bounded
time, and a worker that is not accepting is left out."""

from __future__ import annotations

import asyncio
import os

from bastion.server import balance
from bastion.server.balance import NOT_ACCEPTING, WorkerLoads


def test_counts_written_in_a_forked_worker_are_seen_by_the_others() -> None:
    loads = WorkerLoads(slots=8)
    slot = loads.free_slot(set())
    assert slot == 0 and loads.free_slot({0}) == 1
    pid = os.fork()
    if pid == 0:  # the "worker": publishes, then exits without running pytest's teardown
        loads.publish(slot, 5)
        os._exit(0)
    os.waitpid(pid, 0)
    loads.publish(1, 3)
    assert loads.busier_than_another(0)  # 5 against 3
    assert not loads.busier_than_another(1)


def test_a_worker_that_is_not_accepting_does_not_count() -> None:
    loads = WorkerLoads(slots=4)
    loads.publish(0, 2)
    loads.publish(1, 0)
    assert loads.busier_than_another(0)
    loads.publish(1, NOT_ACCEPTING)  # draining after a reload, stopping, or gone
    assert not loads.busier_than_another(0)
    loads.publish(2, 2)  # as many: not busier
    assert not loads.busier_than_another(0)


def test_the_fewest_take_at_once_and_the_busier_wait_a_bounded_time() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        loads = WorkerLoads(slots=4)
        loads.publish(0, 1)
        loads.publish(1, 4)
        started = loop.time()
        await loads.my_turn(0)
        assert loop.time() - started < balance.DEFER_STEP  # fewest: no wait
        started = loop.time()
        await loads.my_turn(1)  # nobody took it: the busier worker does, after DEFER_MAX
        assert balance.DEFER_MAX <= loop.time() - started < 1.0

        async def the_other_takes_it() -> None:
            await asyncio.sleep(balance.DEFER_STEP)
            loads.publish(0, 5)  # worker 0 accepted (and more arrived meanwhile)

        started = loop.time()
        await asyncio.gather(loads.my_turn(1), the_other_takes_it())
        assert loop.time() - started < balance.DEFER_MAX  # it stopped waiting at once

    asyncio.run(run())
