"""Ctrl-C in a pty shell: nothing typed after it reaches the shell before the shell answers it.

A scripted terminal stands in for bash, so that when (and whether) the shell answers Ctrl-C is
up to the test: the outcomes are decided by the order of events, not by timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest
from catcher_harness import RULES, FakeContext, channel_info

from bastion.policy.commands import CommandPolicy
from bastion.relay import command_stage
from bastion.relay.command_stage import CommandCatcher, ShellControl
from bastion.relay.pipeline import Pipeline, Stream

PROMPT = b"\r\n$ "


class ScriptedShell:
    """A terminal behind the catcher's stages: echoes keys, runs lines, and answers Ctrl-C
    only when ``answer_interrupt`` is called (as a busy or SIGINT-ignoring shell would)."""

    def __init__(self) -> None:
        self.info = channel_info()
        self.ctx = FakeContext(self.info, to_target=self._receive)
        self.received = bytearray()  # every byte that reached the shell
        self.ran: list[bytes] = []  # lines whose Enter reached the shell
        self.line = bytearray()
        self.echo = True
        self.pipeline = Pipeline.build(
            [CommandCatcher(CommandPolicy(RULES), None)], self.info, self.ctx,
            to_target=lambda d, s: self._receive(d), target_end=lambda: None,
            record_input=lambda d, s: None, record_output=lambda d, s: None,
            to_user=lambda d, s: None, user_end=lambda: None)
        stage = self.pipeline.input.stages[0]
        self.control: ShellControl = stage._control  # type: ignore[attr-defined]
        self.output(b"$ ")

    def output(self, data: bytes) -> None:
        self.pipeline.output.feed(data, Stream.DATA)

    def type(self, data: bytes) -> None:
        self.pipeline.input.feed(data, Stream.DATA)

    def answer_interrupt(self) -> None:
        """The shell handles SIGINT: the line is dropped, a fresh prompt drawn."""
        self.line.clear()
        self.output(b"^C" + PROMPT)

    def _receive(self, data: bytes) -> None:
        self.received += data
        for byte in data:
            char = bytes([byte])
            if char == b"\r":
                self.ran.append(bytes(self.line))
                self.output(b"\r\n> " if self.line.endswith(b"\\") else PROMPT)
                self.line.clear()
            elif char == b"\x15":  # Ctrl-U (after Ctrl-E): the line is killed
                self.line.clear()
            elif byte >= 0x20:
                self.line += char
                if self.echo:
                    self.output(char)


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def idle(shell: ScriptedShell) -> Callable[[], bool]:
    """No input is held (no line judged, no Ctrl-C waiting for its prompt)."""
    return lambda: shell.control._held is None


def scenario(body: Callable[[ScriptedShell], Awaitable[None]]) -> ScriptedShell:
    async def main() -> ScriptedShell:
        shell = ScriptedShell()
        try:
            await body(shell)
        finally:
            shell.pipeline.close()
        return shell
    return asyncio.run(main())


@pytest.fixture
def short_interrupt_wait(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(command_stage, "INTERRUPT_MAX", 0.2)
    yield


def test_keys_after_ctrl_c_wait_for_the_prompt_however_long_it_takes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(command_stage, "INTERRUPT_MAX", 60.0)  # the prompt, not a timer, decides

    async def body(shell: ScriptedShell) -> None:
        shell.type(b"rm -rf ")
        shell.type(b"\x03")
        shell.type(b"touch after")  # each in its own packet, while the shell is busy
        shell.type(b"\r")
        await until(lambda: shell.received.endswith(b"\x03"), "Ctrl-C to reach the shell")
        await asyncio.sleep(0.1)  # the shell is slow: nothing more may reach it meanwhile
        assert bytes(shell.received) == b"rm -rf \x03"
        shell.answer_interrupt()
        await until(lambda: bool(shell.ran), "the next line to run")
        await until(idle(shell), "the catcher to be idle")

    shell = scenario(body)
    assert shell.ran == [b"touch after"]
    assert ("touch after", "allow", None) in shell.ctx.commands
    assert not any(c[0].startswith("rm") for c in shell.ctx.commands)


def test_no_prompt_after_ctrl_c_drops_what_was_typed(short_interrupt_wait: None) -> None:
    async def body(shell: ScriptedShell) -> None:
        shell.type(b"rm -rf ")
        shell.type(b"\x03victim\r")
        await until(idle(shell), "the wait for the prompt to end")

    shell = scenario(body)
    assert bytes(shell.received) == b"rm -rf \x03"  # nothing sent into an unanswered Ctrl-C
    assert shell.ran == []
    assert any("no new prompt after Ctrl-C" in n for n in shell.ctx.notices)
    assert "no new prompt after Ctrl-C" in shell.ctx.markers


def test_a_shell_that_ignores_ctrl_c_runs_no_line_joined_to_the_text_before_it(
        short_interrupt_wait: None) -> None:
    # As bash under `stty intr undef -echo`: Ctrl-C does nothing and nothing is echoed, so the
    # shell holds "rm -rf " + "victim" while the keystrokes after Ctrl-C say only "victim".
    async def body(shell: ScriptedShell) -> None:
        shell.echo = False
        shell.type(b"rm -rf ")
        shell.type(b"\x03")
        await until(idle(shell), "the wait for the prompt to end")
        shell.type(b"victim")
        shell.type(b"\r")
        await until(idle(shell), "the line to be refused")
        assert shell.ran == []
        assert shell.line == b""  # the joined line was cleared (Ctrl-E Ctrl-U)
        shell.type(b"touch later\r")  # the next line is judged as usual
        await until(lambda: bool(shell.ran), "the next line to run")

    shell = scenario(body)
    assert shell.ran == [b"touch later"]
    assert ("victim", "refused", None) in shell.ctx.commands
    assert any("before the shell showed a new prompt" in n for n in shell.ctx.notices)
    assert b"\x05\x15" in shell.ctx.sent


def test_keys_sent_before_a_late_prompt_make_a_line_that_does_not_run(
        short_interrupt_wait: None) -> None:
    # The shell answers after the wait ran out, but the next keys had reached it before: bash
    # would have read some of them into the old line and lost them.
    async def body(shell: ScriptedShell) -> None:
        shell.type(b"echo ")
        shell.type(b"\x03")
        await until(idle(shell), "the wait for the prompt to end")
        shell.type(b"XYrm -rf victim")
        await until(lambda: shell.received.endswith(b"victim"), "the keys to reach the shell")
        shell.answer_interrupt()
        shell.type(b"\r")
        await until(lambda: b"\x05\x15" in shell.ctx.sent, "the line to be cleared")
        await until(idle(shell), "the catcher to be idle")

    shell = scenario(body)
    assert shell.ran == []
    assert shell.ctx.commands[-1][1] == "refused"


def test_a_late_prompt_before_the_next_keys_is_enough(short_interrupt_wait: None) -> None:
    async def body(shell: ScriptedShell) -> None:
        shell.type(b"rm -rf ")
        shell.type(b"\x03")
        await until(idle(shell), "the wait for the prompt to end")
        shell.answer_interrupt()
        shell.type(b"touch late\r")
        await until(lambda: bool(shell.ran), "the line to run")

    shell = scenario(body)
    assert shell.ran == [b"touch late"]
    assert ("touch late", "allow", None) in shell.ctx.commands


def test_the_bastions_own_ctrl_c_waits_for_the_prompt_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # A refused continued line is dropped with Ctrl-C; keys typed after the refusal reach the
    # shell only once it has answered that Ctrl-C.
    monkeypatch.setattr(command_stage, "INTERRUPT_MAX", 60.0)
    monkeypatch.setattr(command_stage, "SETTLE_MAX", 0.05)  # an echo wait is over at once

    async def body(shell: ScriptedShell) -> None:
        shell.type(b"rm -r\\")
        shell.type(b"\r")
        await until(lambda: shell.ran == [b"rm -r\\"], "the continued line's Enter")
        shell.type(b"f victim")
        shell.type(b"\r")
        await until(lambda: b"\x03" in shell.ctx.sent, "the bastion's Ctrl-C")
        shell.type(b"touch next\r")
        await asyncio.sleep(0.3)  # the shell is slow to answer: the keys must wait
        assert shell.received.endswith(b"\x03")
        shell.answer_interrupt()
        await until(lambda: len(shell.ran) == 2, "the next line to run")
        await until(idle(shell), "the catcher to be idle")

    shell = scenario(body)
    assert shell.ran == [b"rm -r\\", b"touch next"]
    assert any(c[1] == "deny" and "rm -rf victim" in c[0] for c in shell.ctx.commands)
