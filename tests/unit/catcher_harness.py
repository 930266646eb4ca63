"""A real bash in a local pty behind the command catcher's stages, with a recording fake context.

Unit-level: no SSH, but the shell, its readline, its echo and its line editing are real, so the
catcher is tested against the bytes bash really sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.config.model import CommandControl, CommandRule, Target
from bastion.policy.commands import CommandPolicy
from bastion.relay.command_stage import Approvals, CommandCatcher
from bastion.relay.pipeline import ChannelInfo, ChannelKind, Pipeline, Stream

RULES = CommandControl(rules=(
    CommandRule(name="no-rm-rf", action="deny", command="rm", options=("-r", "-f"),
                message="recursive forced removal is not allowed"),
    CommandRule(name="no-shutdown", action="deny", regex=r"^(shutdown|reboot|halt|poweroff)\b",
                message="power commands are not allowed"),
    CommandRule(name="restart-needs-approval", action="approve", command="systemctl",
                args=("stop|restart",), message="stopping services needs approval"),
    CommandRule(name="sudo-warn", action="warn", command="sudo", message="sudo is audited"),
), unresolved="deny")


@dataclass
class FakeContext:
    """A StageContext that records what the stages asked for."""

    info: ChannelInfo
    to_target: Any = None
    notices: list[str] = field(default_factory=list)
    commands: list[tuple[str, str, str | None]] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    audits: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    paused: int = 0
    ended: str | None = None

    def notify_user(self, text: str) -> None:
        self.notices.append(text)

    def send_to_target(self, data: bytes) -> None:
        self.sent.append(data)
        self.to_target(data)

    def marker(self, label: str) -> None:
        self.markers.append(label)

    def note_command(self, line: str, verdict: str, rule: str | None = None) -> None:
        self.commands.append((line, verdict, rule))

    def audit(self, event: str, **fields: Any) -> None:
        self.audits.append((event, fields))

    def pause_input(self) -> None:
        self.paused += 1

    def resume_input(self) -> None:
        self.paused -= 1

    def end_channel(self, reason: str) -> None:
        self.ended = reason


def channel_info(pty: bool = True, kind: ChannelKind = ChannelKind.SHELL,
                 command: str | None = None, width: int = 80, height: int = 24) -> ChannelInfo:
    target = Target(name="web01", host="127.0.0.1", host_keys=("x",))
    return ChannelInfo(kind=kind, pty=pty, term="xterm" if pty else None, width=width,
                       height=height, command=command, subsystem=None, session_id="s1",
                       channel=1, user="bob", identity_key="local|bob", groups=("ops",),
                       target=target, login="deploy")


class BashPty:
    """bash -i in a pty; its output passes the output stages, input passes the input stages."""

    def __init__(self, workdir: Path, approvals: Approvals | None = None,
                 width: int = 80, height: int = 24) -> None:
        self.workdir = workdir
        self.approvals = approvals
        self.width, self.height = width, height
        self.output = bytearray()
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> BashPty:
        master, slave = os.openpty()
        os.set_blocking(master, False)
        import fcntl
        import struct
        import termios
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", self.height, self.width, 0, 0))
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "TERM": "xterm", "HOME": str(self.workdir),
               "PS1": "$ ", "PS2": "> ", "INPUTRC": "/dev/null", "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(
            ["/bin/bash", "--norc", "--noprofile", "-i"], stdin=slave, stdout=slave,
            stderr=slave, cwd=self.workdir, env=env, start_new_session=True,
            preexec_fn=lambda: _ctty(0))
        os.close(slave)
        self.master = master
        self.info = channel_info(width=self.width, height=self.height)
        self.ctx = FakeContext(self.info, to_target=self._write)
        catcher = CommandCatcher(CommandPolicy(RULES), self.approvals)
        self.pipeline = Pipeline.build(
            [catcher], self.info, self.ctx, to_target=lambda d, s: self._write(d),
            target_end=lambda: None, record_input=lambda d, s: None,
            record_output=lambda d, s: None, to_user=self._to_user, user_end=lambda: None)
        asyncio.get_running_loop().add_reader(master, self._readable)
        await self.wait_for(b"$ ")
        return self

    async def __aexit__(self, *exc: object) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        self.pipeline.close()
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        os.close(self.master)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the pty is closed once the test is done
            os.write(self.master, data)

    def _to_user(self, data: bytes, stream: Stream) -> None:
        self.output += data

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, OSError):
            return
        if data:
            self.pipeline.output.feed(data, Stream.DATA)

    def type(self, data: bytes) -> None:
        """Keys from the user, as one chunk."""
        self.pipeline.input.feed(data, Stream.DATA)

    async def wait_for(self, needle: bytes, timeout: float = 10.0, after: int = 0) -> int:
        """Wait until the output (from offset ``after``) contains ``needle``; its offset."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.output.find(needle, after)
            if found >= 0:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never came; output: {bytes(self.output)!r}")
            await asyncio.sleep(0.01)

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until no line is held (judged, or waiting for approval)."""
        control = self.pipeline.input.stages[0]._control  # type: ignore[attr-defined]
        deadline = time.monotonic() + timeout
        while control._held is not None:
            if time.monotonic() > deadline:
                raise AssertionError("a line is still held")
            await asyncio.sleep(0.01)

    async def sync(self, timeout: float = 10.0) -> None:
        """Run a harmless marker command and wait for its output: what came before has run."""
        await self.idle()
        token = f"sync-{time.monotonic_ns()}".encode()
        start = len(self.output)
        self.type(b"echo " + token[:5] + b"''" + token[5:] + b"\r")
        await self.wait_for(token + b"\r\n", timeout, after=start)


def _ctty(fd: int) -> None:
    import fcntl
    import termios
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
