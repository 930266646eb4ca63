"""The limits of one worker process against the shared state database (both backends): the
allowance of connections not signed in shared by the workers of a node, the session cap and the
device-login rate shared by nodes, the cheap in-process check that spares the database a flood,
fail closed for new sessions when the database is away, releases retried until they land."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
from harness.state import StateBackend

from bastion.config.model import Config, ServerConfig
from bastion.errors import StateError
from bastion.server import limits_keeper
from bastion.server.limits import (
    MAX_CHECKS_IN_FLIGHT,
    TOO_MANY_CHECKS,
    TOO_MANY_UNAUTHENTICATED,
    ServerLimits,
    UnauthenticatedHold,
)
from bastion.state.limits import LEASE, LimitStore, Scope

ALICE = "https://idp.test|alice-sub"


def config(**server: Any) -> Config:
    return cast(Config, SimpleNamespace(server=ServerConfig(**server)))


class ObservedStore(LimitStore):
    """A LimitStore that counts the database calls and can fail or stall them on demand."""

    def __init__(self, store: LimitStore) -> None:
        super().__init__(store.db, store.node, store.pid, store.clock)
        self.acquires = 0
        self.released = 0
        self.fail_acquire = False
        self.fail_releases = 0  # how many releases fail before they work again
        self.gate: threading.Event | None = None  # acquires wait for it when set

    def acquire(self, scope: Scope, subject: str, limit: int, holder: str, *,
                lease: bool = True, ttl: float = LEASE) -> bool:
        self.acquires += 1
        if self.gate is not None:
            assert self.gate.wait(60)
        if self.fail_acquire:
            raise StateError("state database postgresql 127.0.0.1:1/x: connection refused")
        return super().acquire(scope, subject, limit, holder, lease=lease, ttl=ttl)

    def release(self, scope: Scope, subject: str, holder: str) -> bool:
        if self.fail_releases > 0:
            self.fail_releases -= 1
            raise StateError("state database postgresql 127.0.0.1:1/x: connection refused")
        done = super().release(scope, subject, holder)
        self.released += done
        return done


def worker(backend: StateBackend, node: str, pid: int, **server: Any) -> ServerLimits:
    store = ObservedStore(LimitStore(backend.open(), node, pid))
    return ServerLimits(config(**server), store)


def observed(limits: ServerLimits) -> ObservedStore:
    assert isinstance(limits.store, ObservedStore)
    return limits.store


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Connection:
    """What the server's connection does with its hold: remembers a refusal."""

    def __init__(self, limits: ServerLimits, source: str, conn_id: str) -> None:
        self.refused: str | None = None
        self.hold: UnauthenticatedHold | None = limits.open_unauthenticated(
            source, conn_id, self.refuse)

    def refuse(self, reason: str) -> None:
        self.refused = reason


def test_unauthenticated_allowance_is_shared_by_the_workers_of_a_node(
        state_backend: StateBackend) -> None:
    async def scenario() -> None:
        a = worker(state_backend, "node-a", 1, max_unauthenticated_per_source=2)
        b = worker(state_backend, "node-a", 2, max_unauthenticated_per_source=2)
        other_node = worker(state_backend, "node-b", 1, max_unauthenticated_per_source=2)
        first, second = Connection(a, "10.0.0.7", "1"), Connection(b, "10.0.0.7", "1")
        assert first.hold is not None and second.hold is not None
        await until(lambda: bool(first.hold and first.hold.shared and second.hold
                                 and second.hold.shared), "both places taken")
        third = Connection(a, "10.0.0.7", "2")  # a's own count (1) lets it through ...
        assert third.hold is not None
        await until(lambda: third.refused is not None, "the shared check to refuse")
        assert third.refused == TOO_MANY_UNAUTHENTICATED  # ... the node's does not
        third.hold.release()
        elsewhere = Connection(a, "10.0.0.8", "3")  # another address has its own
        on_b = Connection(other_node, "10.0.0.7", "1")  # and so has another node
        await until(lambda: bool(elsewhere.hold and elsewhere.hold.shared and on_b.hold
                                 and on_b.hold.shared), "other allowances")
        second.hold.release()  # signed in: its place is given back
        await until(lambda: a.store.count(Scope.UNAUTHENTICATED, "node-a|10.0.0.7") == 1,
                    "the place to be given back")
        fourth = Connection(a, "10.0.0.7", "4")
        await until(lambda: bool(fourth.hold and fourth.hold.shared), "a place again")
        assert fourth.refused is None
        for conn in (first, fourth, elsewhere, on_b):
            assert conn.hold is not None
            conn.hold.release()
        for limits in (a, other_node):
            assert limits.flush(30)
        assert a.store.count(Scope.UNAUTHENTICATED, "node-a|10.0.0.7") == 0
        assert a.sources._unauthenticated == {}

    asyncio.run(scenario())


def test_a_flood_from_one_address_stops_in_the_process(state_backend: StateBackend) -> None:
    async def scenario() -> None:
        limits = worker(state_backend, "node-a", 1, max_unauthenticated_per_source=5)
        conns = [Connection(limits, "10.0.0.9", str(n)) for n in range(200)]
        refused_at_once = [c for c in conns if c.hold is None]
        assert len(refused_at_once) == 195
        assert {c.refused for c in refused_at_once} == {TOO_MANY_UNAUTHENTICATED}
        await until(lambda: all(c.hold is not None and c.hold.shared for c in conns[:5]),
                    "the five to be checked")
        assert observed(limits).acquires == 5  # the database saw five, not two hundred
        for conn in conns[:5]:
            assert conn.hold is not None
            conn.hold.release()
        assert limits.flush(30)

    asyncio.run(scenario())


def test_checks_waiting_for_the_database_are_bounded(state_backend: StateBackend) -> None:
    async def scenario() -> None:
        limits = worker(state_backend, "node-a", 1)
        store = observed(limits)
        store.gate = threading.Event()  # the database stops answering
        try:
            conns = [Connection(limits, f"10.1.{n // 250}.{n % 250}", str(n))
                     for n in range(MAX_CHECKS_IN_FLIGHT + 20)]
            assert all(c.hold is not None for c in conns[:MAX_CHECKS_IN_FLIGHT])
            assert [c.refused for c in conns[MAX_CHECKS_IN_FLIGHT:]] == [TOO_MANY_CHECKS] * 20
        finally:
            store.gate.set()
        await until(lambda: all(c.hold.shared for c in conns if c.hold is not None),
                    "the waiting checks to finish")
        assert store.acquires == MAX_CHECKS_IN_FLIGHT
        for conn in conns:
            if conn.hold is not None:
                conn.hold.release()
        assert limits.flush(30)
        after = Connection(limits, "10.0.0.1", "late")  # room again once they answered
        assert after.hold is not None and after.refused is None
        await until(lambda: after.hold is not None and after.hold.shared, "its check")
        after.hold.release()
        assert limits.flush(30)

    asyncio.run(scenario())


def test_session_cap_across_workers_fails_closed_without_the_database(
        state_backend: StateBackend) -> None:
    async def scenario() -> None:
        a = worker(state_backend, "node-a", 1)
        b = worker(state_backend, "node-b", 1)
        assert await a.acquire_session(ALICE, 2, "1")
        assert await b.acquire_session(ALICE, 2, "1")
        assert not await a.acquire_session(ALICE, 2, "2")  # node b holds the other place
        assert not await a.acquire_session(ALICE, 1, "2")  # refused in-process, no database
        assert observed(a).acquires == 2
        b.release_session(ALICE, "1")
        assert b.flush(30)
        assert await a.acquire_session(ALICE, 2, "3")
        observed(b).fail_acquire = True
        with pytest.raises(StateError):
            await b.acquire_session(ALICE, 10, "2")
        assert b._per_identity == {}  # nothing counted for a session that did not start
        for holder in ("1", "3"):
            a.release_session(ALICE, holder)
        assert a.flush(30)
        assert a.store.count(Scope.SESSION, ALICE) == 0

    asyncio.run(scenario())


def test_a_release_the_database_missed_is_retried(state_backend: StateBackend,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits_keeper, "RETRY_EVERY", 0.05)

    async def scenario() -> None:
        limits = worker(state_backend, "node-a", 1)
        assert await limits.acquire_session(ALICE, 1, "1")
        observed(limits).fail_releases = 3  # the database is away for a while
        limits.release_session(ALICE, "1")
        assert limits._per_identity == {}  # this process forgets it at once
        assert limits.flush(30)  # and the keeper gets it to the database in the end
        assert observed(limits).fail_releases == 0
        assert limits.store.count(Scope.SESSION, ALICE) == 0

    asyncio.run(scenario())


def test_a_cancelled_acquire_gives_its_place_back(state_backend: StateBackend) -> None:
    async def scenario() -> None:
        limits = worker(state_backend, "node-a", 1)
        store = observed(limits)
        store.gate = threading.Event()
        waiting = asyncio.ensure_future(limits.acquire_session(ALICE, 1, "1"))
        await until(lambda: store.acquires == 1, "the acquire to reach the database")
        waiting.cancel()  # the user left while the database was answering
        with pytest.raises(asyncio.CancelledError):
            await waiting
        store.gate.set()
        await until(lambda: store.released == 1, "the place to be given back")
        assert limits.store.count(Scope.SESSION, ALICE) == 0
        store.gate = None
        assert await limits.acquire_session(ALICE, 1, "2")
        limits.release_session(ALICE, "2")
        assert limits.flush(30)

    asyncio.run(scenario())


def test_device_logins_per_minute_across_nodes(state_backend: StateBackend) -> None:
    async def scenario() -> None:
        a = worker(state_backend, "node-a", 1, device_logins_per_source=2)
        b = worker(state_backend, "node-b", 1, device_logins_per_source=2)
        assert await a.start_device_login("10.0.0.7")
        assert await b.start_device_login("10.0.0.7")
        assert not await a.start_device_login("10.0.0.7")
        assert not await b.start_device_login("10.0.0.7")
        assert await b.start_device_login("10.0.0.8")
        # The database away: this process's own count still applies.
        c = worker(state_backend, "node-c", 1, device_logins_per_source=2)
        observed(c).fail_acquire = True
        assert [await c.start_device_login("10.0.0.7") for _ in range(3)] == [True, True, False]

    asyncio.run(scenario())


def test_the_keeper_renews_leases_while_they_are_held(state_backend: StateBackend,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits_keeper, "RENEW_EVERY", 0.05)
    now = [1_000_000.0]

    async def scenario() -> None:
        store = ObservedStore(LimitStore(state_backend.open(), "node-a", 1, lambda: now[0]))
        limits = ServerLimits(config(), store)

        def expires() -> float:
            return float(store.db.query("SELECT expires FROM limit_holds")[0][0])

        assert await limits.acquire_session(ALICE, 1, "1")
        assert expires() == now[0] + LEASE
        now[0] += 100
        await until(lambda: expires() == now[0] + LEASE, "the lease to be renewed")
        limits.release_session(ALICE, "1")
        assert limits.flush(30)

    asyncio.run(scenario())
