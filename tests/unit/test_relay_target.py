"""The target's output entering the pipeline (bastion/relay/target.py): small chunks of one
event-loop pass joined (at most JOIN_MAX), bulk chunks passed on as they came, order kept."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh

from bastion.relay.pipeline import Stream
from bastion.relay.target import BULK_CHUNK, JOIN_MAX, TargetChannel


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


def _channel() -> tuple[TargetChannel, FakeOutput]:
    relay: Any = FakeRelay()
    return TargetChannel(relay), relay.output


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


def test_a_bulk_chunk_goes_on_at_once_after_what_was_held() -> None:
    async def run() -> None:
        channel, out = _channel()
        bulk = b"B" * BULK_CHUNK
        channel.data_received(b"head", None)
        channel.data_received(bulk, None)
        assert out.fed == [(b"head", Stream.DATA), (bulk, Stream.DATA)]
        assert out.fed[1][0] is bulk  # not copied
        channel.data_received(b"tail", None)
        await _next_pass()
        assert [d for d, _ in out.fed] == [b"head", bulk, b"tail"]
    asyncio.run(run())


def test_joined_output_never_grows_past_join_max() -> None:
    """After a pause, asyncssh hands over a whole window's worth of small chunks in one pass:
    the joins stay small (a 2 MiB join was one of the bastion's largest allocations)."""
    async def run() -> None:
        channel, out = _channel()
        piece = b"x" * 4096
        count = 2 * 1024 * 1024 // len(piece)
        for _ in range(count):
            channel.data_received(piece, None)
        await _next_pass()
        sizes = [len(d) for d, _ in out.fed]
        assert sum(sizes) == count * len(piece)
        assert max(sizes) <= JOIN_MAX
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
