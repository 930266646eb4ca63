"""The pool of parked target connections (bastion/relay/upstream_pool.py), with fake
connections and a fake clock: who may take one, for how long, and what is never parked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bastion.config.model import Target
from bastion.credentials.vault import Credential
from bastion.relay import upstream_pool
from bastion.relay.upstream import Upstream
from bastion.relay.upstream_pool import PoolKey, UpstreamPool
from bastion.secret import Secret


class FakeConn:
    def __init__(self) -> None:
        self.closed = False
        self._channels: dict[int, object] = {}

    def close(self) -> None:
        self.closed = True

    def is_closed(self) -> bool:
        return self.closed


class Timers:
    """call_later that runs nothing until ``advance``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.due: list[tuple[float, Callable[[], None], list[bool]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        cancelled = [False]
        self.due.append((self.now + delay, callback, cancelled))

        class Handle:
            def cancel(self) -> None:
                cancelled[0] = True
        return Handle()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for when, callback, cancelled in list(self.due):
            if when <= self.now and not cancelled[0]:
                cancelled[0] = True
                callback()


def _upstream(certificate: object = None) -> Upstream:
    return Upstream(conn=FakeConn(), host_key_fingerprint="SHA256:x",  # type: ignore[arg-type]
                    address="127.0.0.1:22", certificate=certificate)  # type: ignore[arg-type]


TARGET = Target(name="web01", host="127.0.0.1", port=22, host_keys=("ssh-ed25519 AAAA",))


def _key(person: str = "issuer|alice", secret: str = "key-text", target: Target = TARGET,
         login: str = "deploy") -> PoolKey:
    return PoolKey.of(person, target, login, Credential("password", Secret(secret)))


def _pool(linger: float = 10.0) -> tuple[UpstreamPool, Timers]:
    timers = Timers()
    return UpstreamPool(linger, call_later=timers.call_later), timers


def test_the_same_person_target_login_and_credential_take_the_parked_connection() -> None:
    pool, _ = _pool()
    upstream = _upstream()
    assert pool.park(_key(), upstream)
    assert pool.take(_key()) is upstream
    assert pool.take(_key()) is None  # taken: one session at a time
    assert not upstream.conn.closed


def test_anyone_or_anything_else_dials_anew() -> None:
    pool, _ = _pool()
    upstream = _upstream()
    pool.park(_key(), upstream)
    other_target = Target(name="web01", host="127.0.0.2", port=22, host_keys=TARGET.host_keys)
    repinned = Target(name="web01", host="127.0.0.1", port=22, host_keys=("ssh-ed25519 BBBB",))
    for key in (_key(person="issuer|bob"), _key(secret="rotated"), _key(login="root"),
                _key(target=other_target), _key(target=repinned)):
        assert pool.take(key) is None, key
    assert pool.take(_key()) is upstream


def test_a_parked_connection_is_closed_after_the_linger() -> None:
    pool, timers = _pool(linger=10.0)
    upstream = _upstream()
    pool.park(_key(), upstream)
    timers.advance(9.9)
    assert not upstream.conn.closed
    timers.advance(0.2)
    assert upstream.conn.closed and len(pool) == 0
    assert pool.take(_key()) is None


def test_never_parked_certificates_open_channels_closed_connections_or_linger_zero() -> None:
    pool, _ = _pool()
    certified = _upstream(certificate=object())
    busy = _upstream()
    busy.conn._channels[0] = object()  # type: ignore[attr-defined]
    gone = _upstream()
    gone.conn.closed = True  # type: ignore[attr-defined]
    for upstream in (certified, busy, gone):
        assert not pool.park(_key(), upstream)
        assert upstream.conn.closed  # type: ignore[attr-defined]
    assert not pool.park(None, _upstream())  # no key: a certificate target's session
    off, _ = _pool(linger=0)
    off_upstream = _upstream()
    assert not off.park(_key(), off_upstream) and off_upstream.conn.closed
    assert len(pool) == 0


def test_a_connection_that_died_while_parked_is_not_handed_out() -> None:
    pool, _ = _pool()
    stale, fresh = _upstream(), _upstream()
    pool.park(_key(), stale)
    pool.park(_key(), fresh)
    fresh.conn.closed = True  # type: ignore[attr-defined]  # the target hung up meanwhile
    assert pool.take(_key()) is stale
    assert len(pool) == 0


def test_parallel_sessions_each_park_one_up_to_the_bounds(monkeypatch: Any) -> None:
    pool, _ = _pool()
    upstreams = [_upstream() for _ in range(upstream_pool.MAX_PER_KEY + 2)]
    for upstream in upstreams:
        pool.park(_key(), upstream)
    assert len(pool) == upstream_pool.MAX_PER_KEY
    assert [u.conn.closed for u in upstreams[:2]] == [True, True]  # the oldest went
    taken = [pool.take(_key()) for _ in range(upstream_pool.MAX_PER_KEY)]
    assert taken == list(reversed(upstreams[2:]))
    monkeypatch.setattr(upstream_pool, "MAX_PARKED", 3)
    many = [_upstream() for _ in range(5)]
    for n, upstream in enumerate(many):
        pool.park(_key(person=f"issuer|p{n}"), upstream)
    assert len(pool) == 3 and [u.conn.closed for u in many] == [True, True, False, False, False]
    pool.close_all()
    assert len(pool) == 0 and all(u.conn.closed for u in many)


def test_the_key_never_shows_the_credential() -> None:
    key = _key(secret="hunter2-secret")
    assert "hunter2" not in repr(key) and "deploy" in repr(key)
    assert "hunter2" not in repr(UpstreamPool(5.0))


def test_a_parked_connection_is_used_only_if_the_target_still_answers() -> None:
    class Answering(FakeConn):
        def __init__(self, answer: bool) -> None:
            super().__init__()
            self.answer = answer
            self.asked: list[bytes] = []

        async def _make_global_request(self, request: bytes) -> tuple[int, bytes]:
            self.asked.append(request)
            if not self.answer:
                await asyncio.Event().wait()  # a frozen target: no reply, ever
            return 82, b""  # REQUEST_FAILURE is an answer too

    def upstream(conn: FakeConn) -> Upstream:
        return Upstream(conn=conn, host_key_fingerprint="SHA256:x",  # type: ignore[arg-type]
                        address="127.0.0.1:22")

    async def run() -> None:
        live, frozen, closed = Answering(True), Answering(False), Answering(True)
        closed.closed = True
        assert await upstream_pool.responsive(upstream(live), 1.0)
        assert live.asked == [b"keepalive@openssh.com"]
        started = time.monotonic()
        assert not await upstream_pool.responsive(upstream(frozen), 0.2)
        assert time.monotonic() - started < 1.0
        assert not await upstream_pool.responsive(upstream(closed), 1.0)
        assert not await upstream_pool.responsive(upstream(FakeConn()), 1.0)  # no such method
    asyncio.run(run())
