"""A shell without a pty reads a script on stdin: each whole line is judged before it goes on."""

from __future__ import annotations

import asyncio
import logging

from bastion.policy.commands import CommandDecision, Verdict
from bastion.relay.command_judge import LineJudge, continues_line, describe, masked_line
from bastion.relay.pipeline import Stage, Stream

log = logging.getLogger("bastion.relay")

SCRIPT_LINE_CAP = 64 * 1024  # a script line longer than this cannot be judged: fail closed


class ScriptLineStage(Stage):
    """A shell without a pty reads a script on stdin: each whole line is judged before it goes.

    Lines continued with a backslash are judged joined; the last line is judged at EOF.
    """

    def __init__(self, judge: LineJudge) -> None:
        self.judge = judge
        self._buf = bytearray()
        self._pending: list[bytes] = []  # lines judged fine, waiting behind an approval
        self._busy = False
        self._ended = False
        self._cancelled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def feed(self, data: bytes, stream: Stream) -> None:
        self._buf += data
        if len(self._buf) > SCRIPT_LINE_CAP and b"\n" not in self._buf:
            self.ctx.end_channel("a line this long cannot be checked; the session was ended")
            self._buf.clear()
            return
        self._pump()

    def end(self) -> None:
        self._ended = True
        self._pump()

    def close(self) -> None:
        self._cancelled.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _next_command(self) -> bytes | None:
        """The next complete command's bytes (continued lines joined), or None."""
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl < 0:
                if self._ended and self._buf:
                    return bytes(self._buf)
                return None
            text = self._buf[:nl].decode("utf-8", "replace")
            if not continues_line(text):
                return bytes(self._buf[:nl + 1])
            start = nl + 1

    def _pump(self) -> None:
        while not self._busy:
            raw = self._next_command()
            if raw is None:
                if self._ended and not self._buf:
                    self._ended = False
                    self.emit_end()
                return
            del self._buf[:len(raw)]
            text = raw.decode("utf-8", "replace").replace("\\\n", "").rstrip("\n")
            if not text.strip():
                self.emit(raw, Stream.DATA)
                continue
            decision = self.judge.evaluate([text])
            if decision.verdict is Verdict.APPROVE:
                self._busy = True
                self._task = asyncio.get_running_loop().create_task(self._wait(decision, raw,
                                                                               text))
                return
            if self._judged(decision, text):
                self.emit(raw, Stream.DATA)

    def _judged(self, decision: CommandDecision, text: str) -> bool:
        ctx, shown = self.ctx, masked_line(text)
        if decision.verdict is Verdict.DENY:
            ctx.note_command(shown, "deny", decision.rule)
            ctx.notify_user(describe(decision))
            return False
        ctx.note_command(shown, decision.verdict.value, decision.rule)
        return True

    async def _wait(self, decision: CommandDecision, raw: bytes, text: str) -> None:
        try:
            run = await self.judge.enforce(decision, text, self._cancelled)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("command check failed")
            self.ctx.end_channel("the command check failed; the session was ended")
            return
        if run:
            self.emit(raw, Stream.DATA)
        self._busy = False
        self._pump()
