"""Places under shared limits in the state database, on both backends (SQLite, PostgreSQL):
exact caps (also when threads and processes race for the last place), leases that lapse and
are renewed, rate entries over a sliding window, and the places of a dead process or node
dropped at once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable

from harness.state import StateBackend

from bastion.state.limits import LEASE, SWEEP_AFTER, LimitStore, Scope

ALICE = "https://idp.test|alice-sub"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_cap_is_exact_and_a_release_frees_one_place(state_backend: StateBackend) -> None:
    clock = Clock()
    worker_a = LimitStore(state_backend.open(), "node-a", 101, clock)
    worker_b = LimitStore(state_backend.open(), "node-a", 102, clock)
    assert [worker_a.acquire(Scope.SESSION, ALICE, 3, f"c{i}") for i in range(2)] == [True, True]
    assert worker_b.acquire(Scope.SESSION, ALICE, 3, "c1")  # same holder name, other process
    assert not worker_b.acquire(Scope.SESSION, ALICE, 3, "c2")
    assert not worker_a.acquire(Scope.SESSION, ALICE, 3, "c3")
    assert worker_a.acquire(Scope.SESSION, "https://idp.test|bob-sub", 3, "c3")  # bob's own
    assert worker_a.count(Scope.SESSION, ALICE) == 3
    # A release names the holder: b cannot give back a's place, only its own.
    assert not worker_b.release(Scope.SESSION, ALICE, "c0")
    assert worker_a.release(Scope.SESSION, ALICE, "c0")
    assert not worker_a.release(Scope.SESSION, ALICE, "c0")  # given back once
    assert worker_b.acquire(Scope.SESSION, ALICE, 3, "c2")
    assert not worker_a.acquire(Scope.SESSION, ALICE, 3, "c4")
    # A limit lowered while places are held: nobody more until the count is below it.
    assert not worker_a.acquire(Scope.SESSION, ALICE, 1, "c5")
    assert not worker_a.acquire(Scope.SESSION, ALICE, 0, "c6")


def test_forget_process_and_node_drop_leases_but_keep_rates(state_backend: StateBackend) -> None:
    clock = Clock()
    db = state_backend.open()
    a1, a2 = LimitStore(db, "node-a", 1, clock), LimitStore(db, "node-a", 2, clock)
    b1 = LimitStore(state_backend.open(), "node-b", 1, clock)
    for store in (a1, a2, b1):
        assert store.acquire(Scope.SESSION, ALICE, 10, "c1")
        assert store.acquire(Scope.UNAUTHENTICATED, f"{store.node}|10.0.0.7", 10, "c2")
        assert store.acquire(Scope.DEVICE_LOGIN, "10.0.0.7", 10, "d1", lease=False, ttl=60)
    assert a1.forget_process("node-a", 1) == 2
    assert a1.count(Scope.SESSION, ALICE) == 2
    assert a1.count(Scope.UNAUTHENTICATED, "node-a|10.0.0.7") == 1
    assert a1.count(Scope.DEVICE_LOGIN, "10.0.0.7") == 3  # starts stay counted for the minute
    assert b1.forget_node("node-a") == 2
    assert b1.count(Scope.SESSION, ALICE) == 1  # node-b's session only
    assert b1.count(Scope.UNAUTHENTICATED, "node-a|10.0.0.7") == 0
    assert b1.count(Scope.UNAUTHENTICATED, "node-b|10.0.0.7") == 1
    assert b1.count(Scope.DEVICE_LOGIN, "10.0.0.7") == 3


def test_rate_entries_lapse_after_their_window(state_backend: StateBackend) -> None:
    clock = Clock()
    store = LimitStore(state_backend.open(), "node-a", 1, clock)

    def start(n: int) -> bool:
        return store.acquire(Scope.DEVICE_LOGIN, "10.0.0.7", 2, f"d{n}", lease=False, ttl=60)

    assert [start(1), start(2), start(3)] == [True, True, False]
    clock.now += 30
    assert not start(4)
    clock.now += 29.9
    assert not start(5)  # a sliding minute: still two starts within the last 60 s
    clock.now += 0.1
    assert [start(6), start(7), start(8)] == [True, True, False]
    assert store.count(Scope.DEVICE_LOGIN, "10.0.0.7") == 2
    assert store.renew() == 0  # rate entries are never renewed
    clock.now += 61 + SWEEP_AFTER
    assert store.sweep() == 2


def test_leases_lapse_unless_renewed(state_backend: StateBackend) -> None:
    clock = Clock()
    alive = LimitStore(state_backend.open(), "node-a", 1, clock)
    crashed = LimitStore(state_backend.open(), "node-b", 7, clock)
    assert alive.acquire(Scope.SESSION, ALICE, 2, "c1")
    assert crashed.acquire(Scope.SESSION, ALICE, 2, "c1")
    assert not alive.acquire(Scope.SESSION, ALICE, 2, "c2")
    clock.now += LEASE - 1
    assert alive.renew() == 1  # node-a lives on; node-b stopped renewing (it died)
    clock.now += 1
    assert alive.count(Scope.SESSION, ALICE) == 1
    assert alive.acquire(Scope.SESSION, ALICE, 2, "c2")  # takes over the lapsed place
    assert not alive.acquire(Scope.SESSION, ALICE, 2, "c3")
    # The dead node's late release finds its place taken over and gives back nothing.
    assert not crashed.release(Scope.SESSION, ALICE, "c1")
    assert alive.count(Scope.SESSION, ALICE) == 2


def test_threads_racing_never_exceed_the_cap(state_backend: StateBackend) -> None:
    """Eight workers, each with its own connection, take and give back places as fast as they
    can: the places held at once (counted outside the database) never exceed the cap, and of
    eight racing for the last free places exactly that many win."""
    cap, rounds, workers = 3, 15, 8
    stores = [LimitStore(state_backend.open(), "node-a", 100 + n) for n in range(workers)]
    lock = threading.Lock()
    held = 0
    peak = 0
    errors: list[BaseException] = []

    def churn(store: LimitStore) -> None:
        nonlocal held, peak
        try:
            for n in range(rounds):
                if store.acquire(Scope.SESSION, ALICE, cap, f"c{n}"):
                    with lock:
                        held += 1
                        peak = max(peak, held)
                    store.count(Scope.SESSION, ALICE)  # hold it while others try
                    with lock:
                        held -= 1
                    assert store.release(Scope.SESSION, ALICE, f"c{n}")
        except BaseException as exc:
            errors.append(exc)

    _run_threads([lambda s=s: churn(s) for s in stores])
    assert errors == []
    assert 1 <= peak <= cap
    assert stores[0].count(Scope.SESSION, ALICE) == 0

    barrier = threading.Barrier(workers)
    won: list[bool] = []

    def race(store: LimitStore) -> None:
        barrier.wait()
        won.append(store.acquire(Scope.SESSION, ALICE, cap, "last"))

    _run_threads([lambda s=s: race(s) for s in stores])
    assert sorted(won) == [False] * (workers - cap) + [True] * cap
    assert stores[0].count(Scope.SESSION, ALICE) == cap


def _run_threads(targets: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive()


_RACER = """
import os, sys
from bastion.secret import Secret
from bastion.state.limits import LimitStore, Scope
kind, where = sys.argv[1], sys.argv[2]
if kind == "sqlite":
    from bastion.state.sqlite import SqliteStateDB
    from pathlib import Path
    db = SqliteStateDB(Path(where))
else:
    from bastion.state.postgres import PostgresStateDB
    db = PostgresStateDB(Secret(where), pool_size=1)
store = LimitStore(db, "node-p", os.getpid())
print("ready", flush=True)
sys.stdin.readline()
print(store.acquire(Scope.SESSION, "carol", 4, "c1"), flush=True)
db.close()
"""


def test_processes_racing_for_the_last_places_get_exactly_the_cap(
        state_backend: StateBackend) -> None:
    store = LimitStore(state_backend.open(), "node-p", 1)
    assert store.acquire(Scope.SESSION, "carol", 4, "c0")  # three places left for six racers
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, state_backend.name,
                                state_backend.location], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env) for _ in range(6)]
    try:
        for racer in racers:
            assert racer.stdout is not None
            assert racer.stdout.readline() == "ready\n", racer.stderr
        for racer in racers:  # all at once, as near as the OS allows
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        outcomes = [racer.communicate(timeout=120) for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
    assert all(r.returncode == 0 for r in racers), [err for _, err in outcomes]
    assert sorted(out.strip() for out, _ in outcomes) == ["False"] * 3 + ["True"] * 3
    assert store.count(Scope.SESSION, "carol") == 4
    # The racers exited without giving back: their supervisor drops their places.
    for racer in racers:
        store.forget_process("node-p", racer.pid)
    assert store.count(Scope.SESSION, "carol") == 1
