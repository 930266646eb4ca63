"""The end of an event-loop pass (bastion/relay/passend.py): what a joiner hands on in it is
written in the same pass, every connection's writes of the pass go out in one call, and one
failing callback does not keep the others from running."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from harness.inprocess import relay_bed
from test_relay_wire import FakeTransport

from bastion.relay import passend
from bastion.relay.target import PassJoiner
from bastion.relay.wire import CoalescingTransport


def _bed() -> tuple[PassJoiner, CoalescingTransport, FakeTransport]:
    fake = FakeTransport()
    transport = CoalescingTransport(fake, asyncio.get_running_loop())  # type: ignore[arg-type]
    return PassJoiner(transport.write), transport, fake


def test_what_a_joiner_hands_on_leaves_in_the_same_pass() -> None:
    # Before: the transport's own call_soon, made inside the joiner's, ran a pass later, so a
    # keystroke's echo waited through one more pass of every other session's traffic.
    async def run() -> None:
        joiner, _, fake = _bed()
        joiner.add(b"echo")
        assert fake.calls == []
        await asyncio.sleep(0)  # one pass: this task resumes after the pass-end callback
        assert fake.calls == [("write", b"echo")]
    asyncio.run(run())


def test_writes_of_a_pass_go_out_once_after_every_joiner() -> None:
    async def run() -> None:
        joiner, transport, fake = _bed()
        transport.write(b"window-adjust ")  # written before the joiner was woken
        joiner.add(b"data ")
        joiner.add(b"joined")
        await asyncio.sleep(0)
        assert fake.calls == [("writelines", [b"window-adjust ", b"data joined"])]
    asyncio.run(run())


def test_a_failing_callback_is_reported_and_the_others_run() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        ran: list[str] = []

        def broken() -> None:
            raise RuntimeError("stage bug")

        passend.at_pass_end(passend.JOIN, broken)
        passend.at_pass_end(passend.JOIN, lambda: ran.append("join"))
        passend.at_pass_end(passend.WRITE, lambda: ran.append("write"))
        await asyncio.sleep(0)
        assert ran == ["join", "write"]
        assert [type(c["exception"]) for c in reported] == [RuntimeError]
        # And the next pass is served: the failure left nothing stuck.
        passend.at_pass_end(passend.WRITE, lambda: ran.append("next"))
        await asyncio.sleep(0)
        assert ran == ["join", "write", "next"]
    asyncio.run(run())


def test_a_write_that_wakes_a_joiner_is_still_written_in_the_pass() -> None:
    async def run() -> None:
        joiner, transport, fake = _bed()
        passend.at_pass_end(passend.WRITE, lambda: joiner.add(b"late"))
        await asyncio.sleep(0)
        assert fake.calls == [("write", b"late")]
        assert transport.get_write_buffer_size() == 7  # nothing held: only the fake's own
    asyncio.run(run())


async def _echo_each_key(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """A terminal program that echoes every key as it comes (as a shell's line editor does)."""
    while True:
        try:
            key = await process.stdin.read(1)
        except asyncssh.TerminalSizeChanged:
            continue
        if not key or key == b"q":
            break
        process.stdout.write(key)
    process.exit(0)


def test_a_keystroke_and_its_echo_leave_at_once_not_at_the_pass_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the in-process bastion with a terminal: the key is written to the target, and
    its echo to the user, by the callback that received it (ChannelRelay.typed, echo_due)."""
    at_once: Counter[int] = Counter()  # id(transport): writes handed over outside the pass end
    in_pass_end = [False]
    original_run, original_flush = passend._PassEnd._run, CoalescingTransport.flush

    def marked_run(self: Any) -> None:
        in_pass_end[0] = True
        try:
            original_run(self)
        finally:
            in_pass_end[0] = False

    def watched_flush(self: CoalescingTransport) -> None:
        if self._held and not in_pass_end[0]:
            at_once[id(self)] += 1
        original_flush(self)

    monkeypatch.setattr(passend._PassEnd, "_run", marked_run)
    monkeypatch.setattr(CoalescingTransport, "flush", watched_flush)

    async def run() -> None:
        async with relay_bed(tmp_path, target_process=_echo_each_key) as bed, \
                asyncssh.connect("127.0.0.1", bed.server.port, username="app01",
                                 client_keys=[bed.client_key], known_hosts=None) as conn:
            writer, reader, _ = await conn.open_session(term_type="xterm", encoding=None)
            writer.write(b"-")  # typed before the target's channel is open: held until it is
            assert await asyncio.wait_for(reader.readexactly(1), 10) == b"-"
            for key in b"abc":
                before = Counter(at_once)
                writer.write(bytes([key]))
                assert await asyncio.wait_for(reader.readexactly(1), 10) == bytes([key])
                # Two connections handed a write over at once: the target's (the key) and
                # the user's (the echo).
                assert len(at_once - before) == 2, (at_once, before)
            writer.write(b"q")
            await asyncio.wait_for(reader.read(), 10)

    asyncio.run(run())


class SteppingClock:
    """Each reading is ``step`` later than the one before: every callback "takes" ``step``."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_past_its_budget_the_pass_end_lets_the_loop_read_its_sockets_first() -> None:
    # Before: every joiner and write of a pass ran before the loop looked at its sockets again,
    # so a keystroke that arrived meanwhile waited for all of them.
    async def run() -> None:
        loop = asyncio.get_running_loop()
        pass_end = passend._PassEnd(loop, SteppingClock(passend.BUDGET / 2))
        ran: list[object] = []

        def join(n: int) -> None:
            ran.append(n)
            if n == 0:  # what a socket read in the meantime does: a callback of the loop's
                loop.call_soon(ran.append, "keystroke")

        for n in range(6):
            pass_end.add(passend.JOIN, lambda n=n: join(n))  # type: ignore[misc]
        pass_end.add(passend.WRITE, lambda: ran.append("write"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert ran.index("keystroke") < ran.index(5)
        assert [r for r in ran if r != "keystroke"] == [0, 1, 2, 3, 4, 5, "write"]
    asyncio.run(run())


def test_a_steady_stream_of_joins_does_not_hold_the_writes_back() -> None:
    async def run() -> None:
        pass_end = passend._PassEnd(asyncio.get_running_loop(), SteppingClock(0.0))
        ran: list[str] = []

        def join(left: int) -> None:
            ran.append("join")
            if left:  # each join's data brings more (a target streaming as fast as it can)
                pass_end.add(passend.JOIN, lambda: join(left - 1))

        pass_end.add(passend.JOIN, lambda: join(50))
        pass_end.add(passend.WRITE, lambda: ran.append("write"))
        await asyncio.sleep(0)
        assert ran[:2] == ["join", "write"]
        assert ran.count("join") == 51
    asyncio.run(run())
