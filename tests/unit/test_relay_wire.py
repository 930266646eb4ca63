"""One socket write per event-loop pass (bastion/relay/wire.py): the stand-in transport on its
own, then on the bastion's real asyncssh connections (in process, both sides coalesced)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_CHANNEL_WINDOW_ADJUST, MSG_IGNORE
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
    payload = os.urandom(4 * 1024 * 1024)

    assert _cat_through_bastion(tmp_path, payload) == 3
    assert len(wrapped) == 2  # the user's connection and the target's
    assert all(isinstance(t, CoalescingTransport) for t in wrapped)
    # 4 MiB each way is at least 2 * 128 data packets: far more packets than socket calls.
    assert counts["writes"] >= 2 * 128
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

        # A target connection parked and taken by the next session: coupled to its user now.
        first, second, parked = Conn(), Conn(), Conn()
        for conn in (first, second, parked):
            assert coalesce_writes(conn)  # type: ignore[arg-type]
        assert wire.couple_backpressure(first, parked)  # type: ignore[arg-type]
        wire.decouple_backpressure(parked)  # type: ignore[arg-type]  # first's session ended
        assert parked._transport.transport.calls[-1] == ("resume_reading", None)
        parked.pause_writing()  # parked: holds nobody back
        assert ("pause_reading", None) not in first._transport.transport.calls
        assert wire.couple_backpressure(second, parked)  # type: ignore[arg-type]
        parked.pause_writing()
        assert second._transport.transport.calls[-1] == ("pause_reading", None)
        assert ("pause_reading", None) not in first._transport.transport.calls
        second.pause_writing()
        assert parked._transport.transport.calls[-1] == ("pause_reading", None)
        assert parked.seen == ["pause", "pause"]  # wrapped once, not once per session
    asyncio.run(run())


def test_a_large_read_reaches_asyncssh_in_pieces_and_stops_once_closed() -> None:
    class Reads(FakeTransport):
        protocol: Any = None

        def set_protocol(self, protocol: Any) -> None:
            self.protocol = protocol

    class Conn:
        def __init__(self) -> None:
            self._transport: Any = Reads()
            self.got: list[bytes] = []

        def data_received(self, data: bytes, datatype: Any = None) -> None:
            self.got.append(bytes(data))  # a memoryview: asyncssh only appends it to bytes
            if self.got[-1].startswith(b"BYE"):
                self._socket.closing = True  # asyncssh aborted its transport on this packet

    async def run() -> None:
        conn = Conn()
        conn._socket = conn._transport  # type: ignore[attr-defined]
        assert coalesce_writes(conn)  # type: ignore[arg-type]
        assert wire.read_in_pieces(conn)  # type: ignore[arg-type]
        assert conn._socket.protocol is conn  # set again, so uvloop takes the new method
        payload = os.urandom(5 * wire.READ_PIECE + 100)
        conn._socket.protocol.data_received(payload)
        assert b"".join(conn.got) == payload
        assert max(map(len, conn.got)) == wire.READ_PIECE and len(conn.got) == 6
        conn.got.clear()
        conn.data_received(b"x" * 10)
        assert conn.got == [b"x" * 10]  # a small read goes as it is
        conn.got.clear()
        conn.data_received(b"BYE".ljust(wire.READ_PIECE, b".") + b"after the close" * 5000)
        assert conn.got == [b"BYE".ljust(wire.READ_PIECE, b".")]
        assert not wire.read_in_pieces(object())  # type: ignore[arg-type]
    asyncio.run(run())


def test_the_relay_parses_reads_in_pieces_on_both_connections(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the in-process bastion: 8 MiB up to an echoing target and back. asyncssh's
    parser on the bastion's two connections is never handed more than one piece at a time,
    and every byte comes back."""
    largest: dict[int, int] = {}
    pieced: set[int] = set()
    original = asyncssh.connection.SSHConnection.data_received

    def recording(self: Any, data: bytes, datatype: Any = None) -> None:
        largest[id(self)] = max(largest.get(id(self), 0), len(data))
        if "data_received" in vars(self):  # wrapped: one of the bastion's two connections
            pieced.add(id(self))
        original(self, data, datatype)

    monkeypatch.setattr(asyncssh.connection.SSHConnection, "data_received", recording)
    payload = os.urandom(8 * 1024 * 1024)

    _cat_through_bastion(tmp_path, payload)
    # The test's client and the in-process target read whole socket reads; the bastion's
    # connection to the user and its connection to the target, one piece at a time.
    assert len(pieced) == 2, largest
    assert all(largest[conn] <= wire.READ_PIECE for conn in pieced), largest
    assert max(largest.values()) > wire.READ_PIECE  # the others did get larger reads


def test_the_padding_ignore_is_dropped_unless_the_cipher_is_cbc() -> None:
    class Conn:
        def __init__(self, cipher: str | None) -> None:
            self.cipher = cipher
            self.sent: list[tuple[int, tuple[bytes, ...]]] = []

        def send_packet(self, pkttype: int, *args: bytes, handler: Any = None) -> None:
            self.sent.append((pkttype, args))

        def set_extra_info(self, **info: Any) -> None:
            self.info = info

    empty = b"\x00\x00\x00\x00"
    for cipher, kept in (("aes128-gcm@openssh.com", False), ("aes256-ctr", False),
                         ("aes128-cbc", True), (None, True)):
        conn = Conn(cipher)
        assert wire.drop_ignore_padding(conn)  # type: ignore[arg-type]
        if cipher is not None:  # what asyncssh does as a key exchange switches keys
            conn.set_extra_info(send_cipher=cipher, recv_cipher="x")
            assert conn.info == {"send_cipher": cipher, "recv_cipher": "x"}
        conn.send_packet(MSG_IGNORE, empty)  # what asyncssh sends before each packet
        conn.send_packet(MSG_IGNORE, b"\x00\x00\x00\x03abc")  # an ignore with a body: kept
        conn.send_packet(94, b"data")
        assert conn.sent == ([(MSG_IGNORE, (empty,))] if kept else []) + [
            (MSG_IGNORE, (b"\x00\x00\x00\x03abc",)), (94, (b"data",))], cipher


def test_the_bastion_sends_no_padding_ignores_on_either_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the in-process bastion (a real asyncssh client and target): the packets that
    reach the socket from the bastion's two connections hold no MSG_IGNORE, the test's own
    client (asyncssh as shipped) sends one before each packet, and every byte comes back."""
    sent: dict[int, Counter[int]] = {}
    bastions: set[int] = set()
    original = asyncssh.connection.SSHConnection.send_packet

    def counting(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
        if "send_packet" in vars(self):  # wrapped: one of the bastion's two connections
            bastions.add(id(self))
        sent.setdefault(id(self), Counter())[pkttype] += 1
        original(self, pkttype, *args, handler=handler)

    monkeypatch.setattr(asyncssh.connection.SSHConnection, "send_packet", counting)
    payload = os.urandom(2 * 1024 * 1024)

    _cat_through_bastion(tmp_path, payload)
    assert len(bastions) == 2
    for conn_id, counts in sent.items():
        if conn_id in bastions:
            assert counts[MSG_IGNORE] == 0 and counts[MSG_CHANNEL_DATA] >= 64, counts
        else:  # asyncssh unchanged: one padding packet before each encrypted packet
            assert counts[MSG_IGNORE] > 0, counts


def test_the_bastion_s_connections_and_channels_skip_asyncssh_s_packet_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the in-process bastion: asyncssh's packet log call (which formats every
    packet's name and size before it looks whether the log is on) is not made for the data
    the bastion's connections and channels send or receive; the test's client and target
    still make it (the key exchange and authentication handlers are asyncssh's own)."""
    data_logged: Counter[str] = Counter()
    original = asyncssh.packet.SSHPacketHandler._log_packet

    def counting(self: Any, msg: str, pkttype: int, *args: Any, **kwargs: Any) -> None:
        conn = getattr(self, "_conn", self)  # a channel's connection, or the connection
        if pkttype in (MSG_CHANNEL_DATA, MSG_CHANNEL_WINDOW_ADJUST):
            data_logged["bastion" if "send_packet" in vars(conn) else "other"] += 1
        original(self, msg, pkttype, *args, **kwargs)

    monkeypatch.setattr(asyncssh.packet.SSHPacketHandler, "_log_packet", counting)
    _cat_through_bastion(tmp_path, os.urandom(1024 * 1024))
    assert data_logged["bastion"] == 0 and data_logged["other"] > 64, data_logged
    assert not wire.no_packet_log(object())  # nothing to replace: left alone


def _cat_through_bastion(tmp_path: Path, payload: bytes) -> int | None:
    """``payload`` through the in-process bastion to an echoing target and back, intact;
    the exit status the user got."""
    async def run() -> int | None:
        async with relay_bed(tmp_path) as bed, asyncssh.connect(
                "127.0.0.1", bed.server.port, username="app01",
                client_keys=[bed.client_key], known_hosts=None) as conn:
            result = await asyncio.wait_for(
                conn.run("cat", input=payload, encoding=None), 120)
        assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(payload).digest()
        return result.exit_status

    return asyncio.run(run())
