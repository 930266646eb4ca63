"""Command control on a channel: every command line is judged before its Enter reaches the target.

``CommandCatcher`` is the pipeline's ``StageFactory``. On a shell with a pty it adds an input
stage that forwards keystrokes as they come but holds each Enter (CR, LF, Ctrl-O) until the
line is judged, and an output stage that passes output through and keeps a bounded tail for the
line catcher (O(1) work per chunk). On a shell without a pty (a script on stdin) whole lines are
held and judged. Exec requests are judged before the exec is dialled: ``check_exec``.

What happens to a judged line (the strictest verdict of the screen's and the keystrokes' line):

- allow, warn: noted (marker, session.json, audit), then the Enter goes on;
- deny: the Enter is never sent; the line on the target is cleared (Ctrl-E Ctrl-U; Ctrl-C when
  continued lines are pending) and the screen is read again to confirm; the user sees one line;
- approve: the user sees the request id; input typed meanwhile is held (Ctrl-C cancels); the
  Enter goes on only when an approver approved; denial, timeout or cancel clear it as a deny.

Several lines arriving at once (a paste, typeahead) are all checked on their typed text before
any of them goes on: one denied line drops the whole chunk. A line ending in a backslash
continues: the continuation's Enter goes on only if the joined text so far is not denied, and
the joined command is judged as one at its last Enter.

Ctrl-C (the user's, or the bastion's own that drops continued lines) goes on once the keys
before it were echoed (or after ``SETTLE_MAX``); then nothing more goes on until the shell
answers it with a new prompt (a new row with text), at most ``INTERRUPT_MAX``. Keys that reach
bash while it still handles SIGINT are read into the old line and the first ones are lost:
"echo x", Ctrl-C, "Xecho joined", Enter shows "echo xXecho joined" and runs "cho joined" (so
"XYrm -rf /" would run "rm -rf /"). If no new prompt comes in time, the keys typed meanwhile are
dropped, and a line any of whose keys reached the shell before the prompt (or at all, if the
shell ignored Ctrl-C, as bash does under ``stty intr undef``) is not run: its Enter is refused
and the line cleared.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable

from bastion.masking.noecho import SECRET_PROMPT
from bastion.policy.commands import (
    CommandPolicy,
    CommandScope,
    Verdict,
    line_is_incomplete,
)
from bastion.relay.command_judge import Approvals, LineJudge, continues_line, describe, masked_line
from bastion.relay.command_script import ScriptLineStage
from bastion.relay.linecatcher import Key, KeyKind, KeyReader, LineCatcher, TypedLine
from bastion.relay.pipeline import (
    ChannelInfo,
    ChannelKind,
    ChannelStages,
    Stage,
    StageContext,
    Stream,
)

log = logging.getLogger("bastion.relay")

SETTLE_QUIET = 0.03  # output quiet this long after the last key's echo: the screen is settled
SETTLE_MAX = 0.5  # never wait longer than this for an echo (none comes under ``stty -echo``)
# Keys after Ctrl-C wait at most this long for the shell's new prompt, then they are dropped
# (not sent into a shell that may still be handling SIGINT): long enough for a loaded host.
INTERRUPT_MAX = 5.0
HOLD_CAP = 4096  # input held while a line is judged; beyond it the user's input is paused
_CONTROLS = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|[\x00-\x1f]")
_CLEAR_LINE = b"\x05\x15"  # Ctrl-E Ctrl-U: end of line, kill to its start (readline, tty)
_ABORT_LINE = b"\x03"  # Ctrl-C: also drops continued lines the shell already holds


class CommandCatcher:
    """The command control ``StageFactory``; also judges exec requests (``check_exec``)."""

    def __init__(self, policy: CommandPolicy, approvals: Approvals | None) -> None:
        self.policy = policy
        self.approvals = approvals

    @staticmethod
    def scope(info: ChannelInfo) -> CommandScope:
        """Who runs commands where, as the rules see it."""
        return CommandScope(target=info.target.name, login=info.login, user=info.user,
                            names=info.rule_names,
                            groups=info.groups)

    def __call__(self, info: ChannelInfo, ctx: StageContext) -> ChannelStages | None:
        scope = self.scope(info)
        # An exec with a pty (``ssh -t host bash``) is a terminal too: its command was judged by
        # check_exec, and the lines typed into it are judged like a shell's.
        terminal_exec = info.kind is ChannelKind.EXEC and info.pty
        if not (info.kind is ChannelKind.SHELL or terminal_exec) or not self.policy.active(scope):
            return None
        if not info.pty:
            script = ScriptLineStage(LineJudge(self, info, ctx, scope))
            return ChannelStages(input=[script])
        control = ShellControl(LineJudge(self, info, ctx, scope), info)
        return ChannelStages(input=[control.input_stage], output=[control.output_stage])

    async def check_exec(self, info: ChannelInfo, ctx: StageContext) -> bool:
        """Judge an exec request before it is dialled; True if it may run (after approval)."""
        scope = self.scope(info)
        if info.command is None or not self.policy.active(scope):
            return True
        judge = LineJudge(self, info, ctx, scope)
        decision = self.policy.evaluate_exec(info.command, scope)
        return await judge.enforce(decision, info.command, asyncio.Event())


class _Input(Stage):
    def __init__(self, control: ShellControl) -> None:
        self._control = control

    def feed(self, data: bytes, stream: Stream) -> None:
        self._control.on_input(data)

    def end(self) -> None:
        self._control.on_input_end()

    def resize(self, width: int, height: int) -> None:
        self._control.catcher.resize(width, height)

    def close(self) -> None:
        self._control.close()


class _Output(Stage):
    def __init__(self, control: ShellControl) -> None:
        self._control = control
        self._tail_feed = control.catcher.output
        self._loop = asyncio.get_running_loop()

    def feed(self, data: bytes, stream: Stream) -> None:
        self._tail_feed(data)  # O(1): append to the bounded tail
        self._control.last_output = self._loop.time()
        self.emit(data, stream)


class ShellControl:
    """The shared state of a pty shell's input and output stages."""

    def __init__(self, judge: LineJudge, info: ChannelInfo) -> None:
        self.judge = judge
        self.ctx = judge.ctx
        self.catcher = LineCatcher(info.width, info.height)
        self.input_stage = _Input(self)
        self.output_stage = _Output(self)
        self.loop = asyncio.get_running_loop()
        self.last_output = 0.0
        self.last_forward = 0.0
        self.continued = ""  # joined text of lines continued with a trailing backslash
        self._held: bytearray | None = None  # input after a held Enter (None: nothing held)
        self._enter = b""
        self._paused = False
        self._ended = False
        self._abort = False  # clear the refused line with Ctrl-C (continued lines pending)
        self._ctrl_x = False  # the last key was Ctrl-X (a prefix of edit-and-execute)
        self._interrupt_at: int | None = None  # output offset of a Ctrl-C not answered yet
        self._tainted = False  # keys of this line reached the shell before it answered Ctrl-C
        self._cancelled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- input ------------------------------------------------------------------------------
    def forward(self, data: bytes) -> None:
        """Send user input on to the target."""
        if data:
            self.last_forward = self.loop.time()
            self.input_stage.emit(data, Stream.DATA)

    def on_input(self, data: bytes) -> None:
        """A chunk of the user's input."""
        if self._held is not None:
            self._hold(data)
            return
        self.catcher.scan_output()
        if self.catcher.alternate:  # a full-screen program: recorded, not judged
            if self.catcher.line_started:
                self.catcher.end_line()
            self.forward(self.catcher.reader.take_partial() + data)
            return
        self._process(data)

    def on_input_end(self) -> None:
        if self._held is not None:
            self._ended = True  # ends after the held line is settled
        else:
            self.input_stage.emit_end()

    def _hold(self, data: bytes) -> None:
        assert self._held is not None
        if self.judge.waiting is not None and b"\x03" in data:
            self._cancelled.set()  # Ctrl-C cancels the request; it goes no further itself
            return
        self._held += data
        if len(self._held) > HOLD_CAP and not self._paused:
            self._paused = True
            self.ctx.pause_input()

    def _process(self, data: bytes) -> None:
        catcher = self.catcher
        keys = self._expand_pastes(catcher.keys(data))
        if catcher.reader.paste_overflow:
            catcher.reader.drop_partial()
            self.ctx.notify_user("a paste this long cannot be checked; it was not sent")
            self.ctx.audit("command.paste_dropped")
            return
        if self._several_lines(keys) and not self._precheck(keys):
            return
        if keys:
            self._note_unanswered()
        out: list[bytes] = []
        for index, key in enumerate(keys):
            if key.kind is KeyKind.ENTER:
                self.forward(b"".join(out))
                rest = b"".join(k.raw for k in keys[index + 1:]) + catcher.reader.take_partial()
                self._hold_line(key, rest)
                return
            if key.kind is KeyKind.CONTROL and key.text == "\x05" and self._ctrl_x:
                # Ctrl-X Ctrl-E: readline runs what an editor leaves, unseen by the catcher.
                self._ctrl_x = False
                self.ctx.notify_user("Ctrl-X Ctrl-E (edit and run) is not available through "
                                     "the bastion")
                continue
            self._ctrl_x = key.kind is KeyKind.CONTROL and key.text == "\x18"
            catcher.typed_key(key)
            if key.kind is KeyKind.CONTROL and key.text == "\x03":
                # Keys that reach bash while it handles SIGINT go into the old line and the
                # first ones are lost: what follows waits for the new prompt. The line's mark
                # stays: if the shell ignored Ctrl-C, the screen still shows the text before it.
                self.forward(b"".join(out))
                rest = b"".join(k.raw for k in keys[index + 1:]) + catcher.reader.take_partial()
                self._held = bytearray(rest)
                self.continued = ""
                self._task = self.loop.create_task(self._after_interrupt(key.raw))
                return
            out.append(key.raw)
        self.forward(b"".join(out))

    async def _after_interrupt(self, ctrl_c: bytes) -> None:
        if self.last_output <= self.last_forward:
            # The echo of the keys before Ctrl-C first: a row it wraps to (readline writes CR LF
            # on a terminal without automatic margins) must not pass for the new prompt.
            await self._settle()
        await self._interrupt(lambda: self.forward(ctrl_c))
        self._release(new_line=False)

    async def _interrupt(self, send: Callable[[], None]) -> bool:
        """Send Ctrl-C (``send``); wait for the shell's new prompt; True if it came in time.

        If it did not, the input held meanwhile is dropped, and the keys typed next (until the
        prompt shows) make a line that is not run: see ``_note_unanswered``.
        """
        self._interrupt_at = self.catcher.tail.end
        send()
        if await self._settle(new_row_after=self._interrupt_at):
            self._interrupt_at = None
            self._tainted = False  # the shell dropped the line: nothing of it is left
            return True
        self.ctx.marker("no new prompt after Ctrl-C")
        if self._held:
            self._held = bytearray()
            self.ctx.notify_user("the shell showed no new prompt after Ctrl-C; what was typed "
                                 "after it was not sent")
        return False

    def _note_unanswered(self) -> None:
        """Keys go to the shell now: if it has not answered a Ctrl-C yet, their line won't run."""
        if self._interrupt_at is None:
            return
        if self._prompt_redrawn(self._interrupt_at):
            self._interrupt_at = None  # answered late, but before these keys
        else:
            self._tainted = True

    def _expand_pastes(self, keys: list[Key]) -> list[Key]:
        """A paste the program did not ask for is typing: its newlines are Enters."""
        if self.catcher.tail.bracketed_paste or not any(k.kind is KeyKind.PASTE for k in keys):
            return keys
        out: list[Key] = []
        for key in keys:
            if key.kind is KeyKind.PASTE:
                inner = key.raw[len(b"\x1b[200~"):-len(b"\x1b[201~")]
                out += KeyReader().keys(inner)
            else:
                out.append(key)
        return out

    @staticmethod
    def _several_lines(keys: list[Key]) -> bool:
        enters = sum(1 for k in keys if k.kind is KeyKind.ENTER)
        pasted = any(k.kind is KeyKind.PASTE and ("\n" in k.text or "\r" in k.text)
                     for k in keys)
        return pasted or enters > 1 or (enters == 1 and keys[-1].kind is not KeyKind.ENTER)

    def _precheck(self, keys: list[Key]) -> bool:
        """Judge every line of a multi-line chunk on its typed text; False if one is denied."""
        model = TypedLine()
        current = self.catcher.typed
        model.text, model.cursor = current.text, current.cursor
        lines: list[str] = []
        for key in keys:
            if key.kind is KeyKind.ENTER:
                lines.append(model.text)
                model.reset()
            else:
                model.apply(key)
                if key.kind is KeyKind.PASTE:
                    lines.append(model.text)  # the pasted lines, judged as one script
        decisions = [(line, self.judge.evaluate([self.continued + line])) for line in lines
                     if line.strip()]
        denied = [(line, d) for line, d in decisions if d.verdict is Verdict.DENY]
        if not denied:
            return True
        line, decision = denied[0]
        self.ctx.note_command(masked_line(self.continued + line), "deny", decision.rule)
        self.ctx.notify_user(f"{describe(decision)}; nothing of this input was sent")
        self.catcher.reader.drop_partial()
        if self.catcher.line_started or self.continued:
            self._abort = bool(self.continued)
            self._held = bytearray()
            self._task = self.loop.create_task(self._clear_then_release())
        return False

    # -- judging one line -------------------------------------------------------------------
    def _hold_line(self, enter: Key, rest: bytes) -> None:
        self._held = bytearray(rest)
        self._enter = enter.raw
        self._cancelled = asyncio.Event()
        self._task = self.loop.create_task(self._judge())

    async def _settle(self, new_row_after: int | None = None) -> bool:
        """Wait until the target has echoed what was typed (bounded); False if time ran out.

        With ``new_row_after`` (an output offset), also until a newline came after it: the
        shell's fresh prompt after Ctrl-C.
        """
        deadline = self.loop.time() + (SETTLE_MAX if new_row_after is None else INTERRUPT_MAX)
        while True:
            now = self.loop.time()
            if (self.last_output > self.last_forward and now - self.last_output >= SETTLE_QUIET
                    and (new_row_after is None or self._prompt_redrawn(new_row_after))):
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(SETTLE_QUIET / 3)

    def _prompt_redrawn(self, since: int) -> bool:
        """Whether a new row with text on it (the fresh prompt) came after output ``since``."""
        output = self.catcher.tail.since(since)
        newline = output.rfind(b"\n")
        return newline >= 0 and bool(_CONTROLS.sub(b"", output[newline + 1:]).strip())

    async def _judge(self) -> None:
        try:
            run = await self._judge_line()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not let the line through: end the channel instead
            log.exception("command check failed")
            self.ctx.end_channel("the command check failed; the session was ended")
            return
        if run:
            self.forward(self._enter)
            if self._held:
                # Keys typed meanwhile belong to the next line: let the command's output and
                # the next prompt arrive first, so the next line starts after its prompt.
                await self._settle()
            self._release()
            return
        if self._held:
            # Typed before the user saw the refusal, so meant to follow the refused line.
            self._held = bytearray()
            self.ctx.notify_user("input typed after the refused line was dropped")
        await self._clear_then_release()

    async def _judge_line(self) -> bool:
        catcher = self.catcher
        prefix = self.continued
        if self._tainted:
            return self._refuse_unanswered(prefix)
        if not catcher.line_started and not prefix:
            return True  # Enter on an empty line
        await self._settle()
        reading = catcher.read()
        texts = [prefix + text for text in reading.candidates]
        if not any(text.strip() for text in texts):
            if not reading.echoed and not reading.typed_certain:
                # No echo to read, and keys the keystroke model cannot follow (history
                # recall, Ctrl-A, Delete): the shell holds a line nobody can see. Not run.
                return self._refuse_unreadable(prefix)
            return True
        shown = prefix + reading.shown
        # The shell asks for more (PS2) and runs nothing yet: a trailing backslash, an open
        # quote, an unclosed ``if``/``$(``/heredoc... The whole text is judged at its last line.
        # Only when every reading says so: if one is complete, the shell may run it now.
        incomplete = all(line_is_incomplete(text) for text in texts)
        # The shell already holds continued lines: only Ctrl-C drops them all.
        self._abort = bool(prefix) or incomplete
        if incomplete and not continues_line(shown):
            # The parser's idea of "incomplete" is a guess: ``reboot; $``, ``rm -rf /; [`` and
            # ``reboot =~`` look unfinished to it, and bash runs them at once. A line that
            # holds a command a rule denies or holds for approval is judged now, as complete.
            early = self.judge.evaluate(texts)
            if any(match.action in (Verdict.DENY, Verdict.APPROVE) for match in early.matched):
                self.continued = ""
                return await self.judge.enforce(early, shown, self._cancelled)
        if incomplete:
            if continues_line(shown):
                # Judged early too: a denied prefix is refused now rather than lines later.
                joined = [t[:-1] if continues_line(t) else t for t in texts]
                decision = self.judge.evaluate(joined)
                if decision.verdict is Verdict.DENY:
                    self.continued = ""
                    return await self.judge.enforce(decision, shown[:-1], self._cancelled)
                self.continued = shown[:-1]  # bash drops the backslash and the newline
            else:
                self.continued = shown + "\n"
            return True
        self.continued = ""
        if not reading.echoed and reading.screen is not None \
                and SECRET_PROMPT.search(reading.screen.prompt):
            # Typed unseen at a prompt asking for a secret (sudo, read -s, mysql -p): judged
            # as any line, but its text is never written down (masking hides its keys too).
            shown = f"[input at a password prompt, not echoed: {len(shown)} keys]"
        return await self.judge.enforce(self.judge.evaluate(texts), shown, self._cancelled)

    def _refuse_unreadable(self, prefix: str) -> bool:
        return self._refuse(prefix, "[a line typed without echo, not readable]",
                            "this line could not be read (the terminal does not echo it, and "
                            "it was edited or recalled from history); it was not run")

    def _refuse_unanswered(self, prefix: str) -> bool:
        """The line's keys reached the shell before it answered Ctrl-C: it does not run."""
        return self._refuse(prefix, self.catcher.read().shown,
                            "this line was typed before the shell showed a new prompt after "
                            "Ctrl-C; it was not run")

    def _refuse(self, prefix: str, line: str, notice: str) -> bool:
        """Refuse the line without judging it: noted as refused, the user told why."""
        self.ctx.note_command(masked_line(prefix + line), "refused")
        self.ctx.notify_user(notice)
        self._abort = bool(prefix)
        self.continued = ""
        return False

    async def _clear_then_release(self) -> None:
        """Clear the refused line on the target, check the screen shows it empty, go on."""
        abort, self._abort = self._abort, False
        self.continued = ""
        abort_line = functools.partial(self.forward_control, _ABORT_LINE)
        if abort:
            # The new prompt is drawn before the next line begins (or that line is not run).
            await self._interrupt(abort_line)
        else:
            self.forward_control(_CLEAR_LINE)
            await self._settle()
            reading = self.catcher.read()
            if reading.screen is not None and reading.screen.found \
                    and reading.screen.text.strip():
                self.ctx.marker("line not cleared by Ctrl-U; sent Ctrl-C")
                await self._interrupt(abort_line)  # not empty: interrupt the line instead
            else:
                self._interrupt_at = None  # the line, and anything a Ctrl-C left in it, is gone
        self._release()

    def forward_control(self, data: bytes) -> None:
        """Send keys the user did not type (recorded as a marker by the relay)."""
        self.last_forward = self.loop.time()
        self.ctx.send_to_target(data)

    def _release(self, new_line: bool = True) -> None:
        """The judged line is done: go on with what was typed after it."""
        held = bytes(self._held or b"")
        self._held = None
        if new_line:
            self.catcher.end_line()
            self._tainted = False
        if self._paused:
            self._paused = False
            self.ctx.resume_input()
        if held:
            self.on_input(held)
        if self._ended and self._held is None:
            self.input_stage.emit_end()

    def close(self) -> None:
        self._cancelled.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
