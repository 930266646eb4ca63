"""The user's input entering the pipeline (bastion/relay/channels.py, UserChannel): without a
terminal the packets of one event-loop pass are joined (never much more than JOIN_MAX at once),
keystrokes go on at once, and EOF, signals and a hang-up come after the bytes sent before them.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from bastion.relay.channels import UserChannel
from bastion.relay.pipeline import Stream
from bastion.relay.target import JOIN_MAX


class FakeRelay:
    """What UserChannel calls on its relay, in the order it calls it."""

    def __init__(self) -> None:
        self.attached = True
        self.recorder = None
        self.events: list[Any] = []
        self.input = SimpleNamespace(feed=self._feed, end=lambda: self.events.append("eof"))

    def _feed(self, data: bytes, stream: Stream) -> None:
        assert stream is Stream.DATA
        self.events.append(data)

    def send_signal(self, signal: str) -> None:
        self.events.append(f"signal {signal}")

    def hang_up(self) -> None:
        self.events.append("hang-up")

    def typed(self) -> None:
        self.events.append("typed")


def _channel(*, term: str | None) -> tuple[UserChannel, FakeRelay]:
    channel = UserChannel(SimpleNamespace(request=None))  # type: ignore[arg-type]
    relay = FakeRelay()
    channel.relay = relay  # type: ignore[assignment]
    channel._term = term  # as pty_requested sets it
    return channel, relay


async def _next_pass() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_packets_of_one_pass_without_a_terminal_become_one_feed() -> None:
    async def run() -> None:
        channel, relay = _channel(term=None)
        for part in (b"C0644 5 f\n", b"hel", b"lo\x00"):
            channel.data_received(part, None)
        assert relay.events == []
        await _next_pass()
        assert relay.events == [b"C0644 5 f\nhello\x00"]
    asyncio.run(run())


def test_a_terminal_s_keystrokes_go_on_at_once() -> None:
    async def run() -> None:
        channel, relay = _channel(term="xterm")
        for key in (b"l", b"s", b"\r"):
            channel.data_received(key, None)
        # Each key fed, then the relay told (it writes the key to the target now and sends
        # the echo on as it comes: ChannelRelay.typed).
        assert relay.events == [b"l", "typed", b"s", "typed", b"\r", "typed"]
        await _next_pass()
        assert len(relay.events) == 6
    asyncio.run(run())


def test_joined_input_never_grows_with_the_window() -> None:
    """A whole 2 MiB window of 32 KiB packets in one pass: joins of at most JOIN_MAX, in
    order, every byte."""
    async def run() -> None:
        channel, relay = _channel(term=None)
        pieces = [bytes([n]) * 32768 for n in range(64)]
        for piece in pieces:
            channel.data_received(piece, None)
        await _next_pass()
        fed = [e for e in relay.events if isinstance(e, bytes)]
        assert b"".join(fed) == b"".join(pieces)
        assert max(map(len, fed)) <= JOIN_MAX
        assert len(fed) == 2 * 1024 * 1024 // JOIN_MAX
    asyncio.run(run())


def test_eof_a_signal_and_a_hang_up_come_after_the_bytes_sent_before_them() -> None:
    async def run() -> None:
        channel, relay = _channel(term=None)
        channel.data_received(b"one", None)
        channel.signal_received("INT")
        channel.data_received(b"two", None)
        channel.eof_received()
        channel.data_received(b"three", None)
        channel.connection_lost(None)
        assert relay.events == [b"one", "signal INT", b"two", "eof", b"three", "hang-up"]
        await _next_pass()
        assert relay.events[-1] == "hang-up"  # the scheduled flushes found nothing left
    asyncio.run(run())


def test_input_held_when_the_relay_went_away_is_dropped() -> None:
    async def run() -> None:
        channel, relay = _channel(term=None)
        channel.data_received(b"late", None)
        relay.attached = False  # the relay stopped within the pass
        await _next_pass()
        assert relay.events == []
    asyncio.run(run())
