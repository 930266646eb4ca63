"""One socket write per event-loop pass (bastion/relay/wire.py): the stand-in transport on its
own, then on the bastion's real asyncssh connections (in process, both sides coalesced)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from harness.inprocess import relay_bed

from bastion.relay import wire
from bastion.relay.wire import CoalescingTransport, coalesce_writes


class FakeTransport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False
        self.fail: type[Exception] | None = None

    def write(self, data: bytes) -> None:
        if self.fail:
            raise self.fail("gone")
        self.calls.append(("write", data))

    def writelines(self, chunks: list[bytes]) -> None:
        if self.fail:
            raise self.fail("gone")
        self.calls.append(("writelines", list(chunks)))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7

    def close(self) -> None:
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.calls.append(("abort", None))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 22) if name == "peername" else default


async def _next_pass() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def _wrapped() -> tuple[CoalescingTransport, FakeTransport]:
    fake = FakeTransport()
    return CoalescingTransport(fake, asyncio.get_running_loop()), fake  # type: ignore[arg-type]


def test_the_writes_of_one_pass_go_out_in_one_call_in_order() -> None:
    async def run() -> None:
        wrapped, fake = _wrapped()
        wrapped.write(b"ignore")
        wrapped.write(b"data-1")
        wrapped.write(b"data-2")
        assert fake.calls == []  # nothing before the pass ends
        assert wrapped.get_write_buffer_size() == 18 + 7
        await _next_pass()
        assert fake.calls == [("writelines", [b"ignore", b"data-1", b"data-2"])]
        wrapped.write(b"alone")
        await _next_pass()
        assert fake.calls[-1] == ("write", b"alone")  # a single write stays a write
        assert len(fake.calls) == 2
    asyncio.run(run())


def test_abort_and_close_hand_over_what_is_held_first() -> None:
    async def run() -> None:
        wrapped, fake = _wrapped()
        wrapped.write(b"disconnect")
        wrapped.abort()  # asyncssh aborts right after writing its DISCONNECT
        assert fake.calls == [("write", b"disconnect"), ("abort", None)]
        await _next_pass()  # the scheduled flush finds nothing more
        assert len(fake.calls) == 2
        wrapped, fake = _wrapped()
        wrapped.write(b"last")
        wrapped.close()
        assert fake.calls == [("write", b"last"), ("close", None)]
    asyncio.run(run())


def test_nothing_goes_to_a_closing_transport_and_a_lost_connection_is_not_an_error() -> None:
    async def run() -> None:
        wrapped, fake = _wrapped()
        wrapped.write(b"late")
        fake.closing = True
        await _next_pass()
        assert fake.calls == []
        fake.closing, fake.fail = False, ConnectionResetError
        wrapped.write(b"reset")
        await _next_pass()  # raised inside the transport, swallowed as asyncssh's _send does
        assert fake.calls == []
    asyncio.run(run())


def test_everything_else_is_the_transports() -> None:
    async def run() -> None:
        wrapped, _ = _wrapped()
        assert wrapped.get_extra_info("peername") == ("127.0.0.1", 22)
        assert wrapped.is_closing() is False
    asyncio.run(run())


def test_a_connection_without_the_attribute_is_left_alone() -> None:
    class NotAConnection:
        pass

    async def run() -> None:
        assert coalesce_writes(NotAConnection()) is False  # type: ignore[arg-type]
        assert not hasattr(NotAConnection(), "_transport")
    asyncio.run(run())


def test_the_relay_coalesces_both_connections_and_moves_every_byte(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the in-process bastion: 4 MiB of stdin to an echoing target and back. Both of
    the bastion's connections (the user's, the target's) have their transport wrapped, with
    this asyncssh version, and hand over many packets per call."""
    counts = {"writes": 0, "calls": 0}
    wrapped: list[CoalescingTransport] = []
    original_write, original_flush = CoalescingTransport.write, CoalescingTransport.flush
    original_install = wire.coalesce_writes

    def counting_write(self: CoalescingTransport, data: bytes) -> None:
        counts["writes"] += 1
        original_write(self, data)

    def counting_flush(self: CoalescingTransport) -> None:
        counts["calls"] += bool(self._held)
        original_flush(self)

    def recording_install(conn: Any) -> bool:
        installed = original_install(conn)
        wrapped.append(conn._transport)
        return installed

    monkeypatch.setattr(CoalescingTransport, "write", counting_write)
    monkeypatch.setattr(CoalescingTransport, "flush", counting_flush)
    monkeypatch.setattr(wire, "coalesce_writes", recording_install)
    monkeypatch.setattr("bastion.relay.upstream.coalesce_writes", recording_install)
    payload = os.urandom(4 * 1024 * 1024)

    async def run() -> None:
        async with relay_bed(tmp_path) as bed, asyncssh.connect(
                "127.0.0.1", bed.server.port, username="app01",
                client_keys=[bed.client_key], known_hosts=None) as conn:
            result = await asyncio.wait_for(
                conn.run("cat", input=payload, encoding=None), 120)
        assert result.exit_status == 3
        assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(payload).digest()

    asyncio.run(run())
    assert len(wrapped) == 2  # the user's connection and the target's
    assert all(isinstance(t, CoalescingTransport) for t in wrapped)
    # 4 MiB each way is at least 2 * 128 data packets, each after an MSG_IGNORE: far more
    # packets than socket calls.
    assert counts["writes"] >= 4 * 128
    assert counts["calls"] * 4 < counts["writes"], counts


def test_a_full_socket_stops_reading_the_relayed_ones_until_it_drains() -> None:
    class Reading(FakeTransport):
        def pause_reading(self) -> None:
            self.calls.append(("pause_reading", None))

        def resume_reading(self) -> None:
            self.calls.append(("resume_reading", None))

        def set_write_buffer_limits(self, high: int) -> None:
            self.calls.append(("limits", high))

    class Conn:
        def __init__(self) -> None:
            self._transport: Any = Reading()
            self.seen: list[str] = []

        def pause_writing(self) -> None:  # asyncssh's own: does nothing
            self.seen.append("pause")

        def resume_writing(self) -> None:
            self.seen.append("resume")

        def connection_lost(self, exc: Exception | None) -> None:
            self.seen.append("lost")

    async def run() -> None:
        user, target = Conn(), Conn()
        user_socket, target_socket = user._transport, target._transport
        assert coalesce_writes(user) and coalesce_writes(target)  # type: ignore[arg-type]
        assert wire.couple_backpressure(user, target)  # type: ignore[arg-type]
        assert ("limits", wire.WRITE_HIGH_WATER) in user_socket.calls
        user.pause_writing()  # the transport: the user's socket buffer is full
        assert target_socket.calls[-1] == ("pause_reading", None)
        assert ("pause_reading", None) not in user_socket.calls
        user.resume_writing()
        assert target_socket.calls[-1] == ("resume_reading", None)
        target.pause_writing()  # and the other way: an upload to a target that stopped reading
        assert user_socket.calls[-1] == ("pause_reading", None)
        target.connection_lost(None)  # gone while full: the user's socket is read again
        assert user_socket.calls[-1] == ("resume_reading", None)
        assert user.seen == ["pause", "resume"] and target.seen == ["pause", "lost"]
        assert not wire.couple_backpressure(user, object())  # type: ignore[arg-type]
    asyncio.run(run())
