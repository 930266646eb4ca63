"""Which worker accepts the next connection: the one with the fewest open.

With one shared listening socket, the worker whose event loop wakes first accepts what is
queued. Sessions last for hours and arrive in bursts, so that left workers lopsided: 6 of 8
bulk sessions on one worker, or 30 of 50 streaming terminals against 21 (bench/RESULTS.md).
A keystroke's echo waits for the event loop of the worker carrying its session, so the busier
worker's sessions felt it: 10-11 ms added at p99 against 4 ms on evenly loaded workers.

So each worker publishes how many connections it holds in a slot of a small shared memory
array the supervisor maps before forking (``WorkerLoads``). A worker that holds more than
another accepting worker lets a waiting connection be, for at most ``DEFER_MAX``, so that the
less loaded one (also woken by the socket) takes it; after that it takes it itself, so a stuck
or busy worker cannot hold connections back. Each worker writes only its own slot; a reader
may see a count a moment old, which costs at most one connection placed less evenly.
"""

from __future__ import annotations

import asyncio
import mmap

SLOTS = 512  # workers alive at once (two generations of up to 256 during a reload)
NOT_ACCEPTING = -1  # a free slot, or a worker that stopped accepting (draining, stopping)
DEFER_STEP = 0.002  # seconds between looks at the other workers' counts
DEFER_MAX = 0.02  # the longest a worker leaves a connection to a less loaded one


class WorkerLoads:
    """Open connections per worker slot, shared by the supervisor and its forked workers."""

    def __init__(self, slots: int = SLOTS) -> None:
        self._memory = mmap.mmap(-1, 8 * slots)  # anonymous and shared: inherited by fork
        self._counts = memoryview(self._memory).cast("q")
        for slot in range(slots):
            self._counts[slot] = NOT_ACCEPTING

    def free_slot(self, taken: set[int]) -> int:
        """A slot for a new worker (the supervisor's): the lowest not in ``taken``."""
        slot = next(s for s in range(len(self._counts)) if s not in taken)
        self._counts[slot] = NOT_ACCEPTING  # until the worker accepts
        return slot

    def publish(self, slot: int, connections: int) -> None:
        """This worker holds ``connections`` (or NOT_ACCEPTING)."""
        self._counts[slot] = connections

    def busier_than_another(self, slot: int) -> bool:
        """Whether some other accepting worker holds fewer connections than ``slot``'s."""
        counts = self._counts.tolist()
        mine, counts[slot] = counts[slot], NOT_ACCEPTING
        return any(0 <= count < mine for count in counts)

    async def my_turn(self, slot: int) -> None:
        """Return when ``slot``'s worker should accept a waiting connection: at once if no
        other accepting worker holds fewer, else after DEFER_MAX at most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEFER_MAX
        while self.busier_than_another(slot) and loop.time() < deadline:
            await asyncio.sleep(DEFER_STEP)
