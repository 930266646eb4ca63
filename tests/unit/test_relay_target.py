"""The target's output entering the pipeline (bastion/relay/target.py): the chunks of one
event-loop pass joined, never much more than JOIN_MAX at once, order kept."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh

from bastion.relay.pipeline import Stream
from bastion.relay.target import JOIN_MAX, TargetChannel


class FakeOutput:
    def __init__(self) -> None:
        self.fed: list[tuple[bytes, Stream]] = []
        self.ended = False

    def feed(self, data: bytes, stream: Stream) -> None:
        self.fed.append((data, stream))

    def end(self) -> None:
        self.ended = True


class FakeRelay:
    def __init__(self) -> None:
        self.output = FakeOutput()
        self.typed_recently = False
        self.user_flushes = 0

    def echo_due(self) -> bool:
        return self.typed_recently

    def flush_to_user(self) -> None:
        self.user_flushes += 1


def _channel() -> tuple[TargetChannel, FakeOutput]:
    relay: Any = FakeRelay()
    return TargetChannel(relay), relay.output


def test_a_keystroke_s_echo_goes_to_the_user_at_once() -> None:
    async def run() -> None:
        relay: Any = FakeRelay()
        channel = TargetChannel(relay)
        relay.typed_recently = True
        channel.data_received(b"l", None)
        assert relay.output.fed == [(b"l", Stream.DATA)]  # not held to the pass's end
        assert relay.user_flushes == 1  # and written to the user's socket now
        relay.typed_recently = False  # output long after the last key is joined again
        channel.data_received(b"tail -f ", None)
        channel.data_received(b"line\r\n", None)
        assert relay.output.fed == [(b"l", Stream.DATA)]
        await _next_pass()
        assert relay.output.fed[1:] == [(b"tail -f line\r\n", Stream.DATA)]
        assert relay.user_flushes == 1
    asyncio.run(run())


async def _next_pass() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_small_chunks_of_one_pass_become_one_feed() -> None:
    async def run() -> None:
        channel, out = _channel()
        for part in (b"prompt$ ", b"l", b"s\r\n"):
            channel.data_received(part, None)
        assert out.fed == []  # held until the pass ends: keystroke echo is not split
        await _next_pass()
        assert out.fed == [(b"prompt$ ls\r\n", Stream.DATA)]
    asyncio.run(run())


def test_a_chunk_of_join_max_goes_on_at_once_after_what_was_held() -> None:
    async def run() -> None:
        channel, out = _channel()
        big = b"B" * JOIN_MAX
        channel.data_received(big, None)
        assert out.fed == [(big, Stream.DATA)]
        assert out.fed[0][0] is big  # alone: not copied
        channel.data_received(b"head", None)
        channel.data_received(big, None)
        assert out.fed[1] == (b"head" + big, Stream.DATA)  # in order, at once
        channel.data_received(b"tail", None)
        await _next_pass()
        assert [d for d, _ in out.fed][2:] == [b"tail"]
    asyncio.run(run())


def test_joined_output_never_grows_with_the_window() -> None:
    """After a pause, asyncssh hands over a whole window's worth of packets in one pass: the
    joins stay bounded (a 2 MiB join was one of the bastion's largest allocations)."""
    async def run() -> None:
        channel, out = _channel()
        piece = b"x" * 32768
        count = 2 * 1024 * 1024 // len(piece)
        for _ in range(count):
            channel.data_received(piece, None)
        await _next_pass()
        sizes = [len(d) for d, _ in out.fed]
        assert sum(sizes) == count * len(piece)
        assert max(sizes) <= JOIN_MAX  # 32 KiB pieces: a join reaches JOIN_MAX exactly
        assert len(sizes) >= count * len(piece) // JOIN_MAX
    asyncio.run(run())


def test_stderr_eof_and_the_end_keep_the_targets_order() -> None:
    async def run() -> None:
        channel, out = _channel()
        channel.data_received(b"out-1", None)
        channel.data_received(b"err-1", asyncssh.EXTENDED_DATA_STDERR)
        channel.data_received(b"out-2", None)
        channel.eof_received()
        assert out.fed == [(b"out-1", Stream.DATA), (b"err-1", Stream.STDERR),
                           (b"out-2", Stream.DATA)]
        assert out.ended
        await _next_pass()
        assert len(out.fed) == 3  # the scheduled flush found nothing left
    asyncio.run(run())
