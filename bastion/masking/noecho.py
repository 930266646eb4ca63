"""Recorded keystrokes: typed secrets masked, and input the terminal does not echo hidden.

A password prompt (sudo, passwd, mysql -p, ssh-keygen, ``read -s``) turns echo off on the
target's terminal: the typed characters never appear in the output. ``KeystrokeRecorder`` (an
``input_record`` stage) holds the recorded copy of printable keys until ``EchoWatcher`` (an
``output_record`` stage of the same channel) sees them in the output; if they have not appeared
within the window, they are recorded as one ``*`` each (the count of keys, not the keys) until
the next Enter, with a marker ``input hidden: N keys``. Keys sent to the target are never held.

Full-screen programs (the alternate screen is on) do not echo their keys either (vim's ``dd``);
there no-echo detection is off, so their keys are recorded as typed.

Only input at a prompt that asks for a secret (the line before it says password, passphrase,
PIN, token...) is hidden. Echo turned off anywhere else (``stty -echo`` at a shell prompt) is no
way to type commands off the record: those keys are recorded as typed, with a marker
``input not echoed: N keys``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bastion.masking.engine import Scanner
from bastion.masking.escapes import strip
from bastion.masking.seam import Stage, Stream
from bastion.masking.timed import CallLater, SharedState, TimedMasker, TimerHandle, loop_call_later

HIDDEN_RUN = "hidden_input"
ALT_ON = (b"\x1b[?1049h", b"\x1b[?1047h", b"\x1b[?47h")
ALT_OFF = (b"\x1b[?1049l", b"\x1b[?1047l", b"\x1b[?47l")
LINE_END = frozenset(b"\r\n\x03\x04")  # Enter, Ctrl-C, Ctrl-D end a hidden run
_PRINTABLE = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_NOT_PRINTABLE = bytes(b for b in range(256) if b not in _PRINTABLE)
# What the prompts of sudo, passwd, su, mysql -p, psql, ssh, ssh-keygen, gpg, read -s ask for,
# in English and in the translations sudo, passwd and PAM ship (a Spanish sudo asks for the
# "contraseña": without it the password was recorded as typed).
SECRET_PROMPT = re.compile(
    r"pass(word|phrase|code)?|\bpin\b|secret|token|otp|one.time|verification code|"
    r"credential|\bkey\b|"
    r"contrase[ñn]a|contrasenya|senha|wachtwoord|has[łl]o|\bheslo|parola|parool|parole|"
    r"salasana|l[öo]senord|passord|adgangskode|jelsz[óo]|[şs]ifre|lozinka|geslo|"
    r"slapta[žz]odis|\bsandi\b|m[ậa]t kh[ẩa]u|пароль|парола|лозинка|κωδικ|סיסמ|"
    r"كلمة (ال)?(مرور|سر)|密码|密碼|口令|パスワード|暗証|비밀번호|암호", re.IGNORECASE)
_TAIL = 256  # bytes of recent output kept to read the prompt line from
_ALT_LEN = max(map(len, ALT_ON + ALT_OFF))


@dataclass
class EchoState:
    """Shared by the two stages: keys waiting for their echo and the output seen since."""

    typed: bytearray = field(default_factory=bytearray)  # printable keys not yet echoed
    seen: bytearray = field(default_factory=bytearray)  # visible output since the first of them
    enter_at: int | None = None  # len(seen) when a line end was typed after them
    alt_screen: bool = False
    tail: bytes = b""  # the last visible output (escapes stripped), bounded
    prompt: bytes = b""  # the output line the typing started on

    def prompt_asks_for_secret(self) -> bool:
        """Whether the line the hidden input was typed at asks for a secret."""
        text = self.prompt.decode("utf-8", "replace")
        return SECRET_PROMPT.search(text) is not None


class EchoWatcher(Stage):
    """Passes the output on; tells the keystroke recorder when typed keys were echoed."""

    def __init__(self, echo: EchoState) -> None:
        self.echo = echo
        self.keys: KeystrokeRecorder | None = None
        self._cut = b""  # the last chunk's end from its last ESC, if that is short

    def _alt_screen(self, data: bytes) -> None:
        for seq in ALT_ON:
            if seq in data:
                self.echo.alt_screen = True
        for seq in ALT_OFF:
            if seq in data:
                self.echo.alt_screen = False

    def feed(self, data: bytes, stream: Any) -> None:
        # The last output line: read when typing starts, to tell a password prompt from a shell.
        self.echo.tail = (self.echo.tail + strip(data[-_TAIL:]))[-_TAIL:]
        # ESC first: a memchr, where the three-byte search costed 0.7 ms per MB of plain text
        # (it stops at every "?").
        end = data
        cut = self._cut
        if cut:  # a sequence cut by the last chunk's end: look at it whole
            self._cut = b""
            self._alt_screen(cut + data[:_ALT_LEN])
            if len(data) < _ALT_LEN:
                end = cut + data
        if b"\x1b" in end:
            if b"\x1b[?" in data:
                self._alt_screen(data)
            last = end.rfind(b"\x1b", max(0, len(end) - _ALT_LEN + 1))
            if last >= 0:
                self._cut = end[last:]
        if self.echo.typed and self.keys is not None:
            limit = 256 + 8 * len(self.echo.typed)
            if len(self.echo.seen) < limit:
                self.echo.seen += strip(data)[: limit - len(self.echo.seen)]
            self.keys.check_echo()
        self.emit(data, stream)


class KeystrokeRecorder(TimedMasker):
    """The recorded copy of a pty's keystrokes (``input_record``)."""

    def __init__(self, scanner: Scanner, shared: SharedState, echo: EchoState, *,
                 record_hold: float, window: float,
                 call_later: CallLater = loop_call_later) -> None:
        super().__init__(scanner, shared, record_hold, call_later)
        self.echo = echo
        self.window = window
        self.queue = bytearray()  # recorded keys waiting for the echo decision
        self.after = bytearray()  # keys typed after a line end while that decision waits
        self.hidden = 0  # keys of the current hidden run
        self.in_hidden_run = False
        self.decide_timer: TimerHandle | None = None

    def feed(self, data: bytes, stream: Any) -> None:
        if self.in_hidden_run:
            self._hide(data, stream)
            return
        if self.echo.alt_screen and not self.queue:
            super().feed(data, stream)
            return
        if self.echo.enter_at is not None:  # the line is typed; its echo is being decided
            self.after += data
            return
        self.queue += data
        printable = data.translate(None, delete=_NOT_PRINTABLE)
        if self.echo.typed or printable:
            for byte in data:
                if byte in LINE_END:
                    self.echo.enter_at = len(self.echo.seen)
                    break
        if printable:
            if not self.echo.typed:
                self.echo.prompt = self.echo.tail.rsplit(b"\n", 1)[-1]
            self.echo.typed += printable
            if self.decide_timer is None:
                self.decide_timer = self.call_later(self.window, self._no_echo)
        elif not self.echo.typed:
            self._pass_queue()
            return
        self.check_echo()

    def check_echo(self) -> None:
        """Release the held keys once the typed characters appeared in the output, contiguous
        (an edited line may not match: its keys are then recorded hidden, failing closed)."""
        if not self.echo.typed:
            return
        if bytes(self.echo.typed) in self.echo.seen:
            self._pass_queue()
        elif self.echo.enter_at is not None and b"\n" in self.echo.seen[self.echo.enter_at:]:
            # A line end was typed and the output went on to a new line without the typed
            # characters: an echoing terminal would have shown them before that.
            self._no_echo()

    def _pass_queue(self) -> None:
        queued = bytes(self.queue)
        self._reset()
        if queued:
            super().feed(queued, Stream.DATA)
        self._feed_after()

    def _feed_after(self) -> None:
        after = bytes(self.after)
        self.after.clear()
        if after:
            self.feed(after, Stream.DATA)

    def _reset(self) -> None:
        self.queue.clear()
        self.echo.typed.clear()
        self.echo.seen.clear()
        self.echo.enter_at = None
        if self.decide_timer is not None:
            self.decide_timer.cancel()
            self.decide_timer = None

    def _no_echo(self) -> None:
        self.decide_timer = None
        if not self.echo.prompt_asks_for_secret():
            # Not a secret's prompt: keys typed with echo off are recorded as typed.
            keys = len(self.echo.typed)
            self._pass_queue()
            self.ctx.marker(f"input not echoed: {keys} keys")
            return
        queued = bytes(self.queue)
        self._reset()
        self.in_hidden_run = True
        self._hide(queued, Stream.DATA)
        self._feed_after()

    def _hide(self, data: bytes, stream: Any) -> None:
        out = bytearray()
        for index, byte in enumerate(data):
            if byte in LINE_END:
                self._end_run()
                out.append(byte)
                rest = data[index + 1:]
                if out:
                    self.emit(bytes(out), stream)
                if rest:
                    self.feed(rest, stream)
                return
            if byte in _PRINTABLE and not 0x80 <= byte < 0xC0:
                out += b"*"
                self.hidden += 1
            elif byte == 0x7F and self.hidden:  # a typed backspace takes one key back
                out.append(byte)
        if out:
            self.emit(bytes(out), stream)

    def _end_run(self) -> None:
        if self.in_hidden_run:
            self.shared.counts[HIDDEN_RUN] += 1
            self.ctx.marker(f"input hidden: {self.hidden} keys")
        self.in_hidden_run = False
        self.hidden = 0

    def end(self) -> None:
        if self.queue:
            self._no_echo() if self.echo.typed else self._pass_queue()
        self._feed_after()
        self._end_run()
        super().end()

    def close(self) -> None:
        if self.decide_timer is not None:
            self.decide_timer.cancel()
            self.decide_timer = None
        super().close()


def pair(scanner: Scanner, shared: SharedState, *, record_hold: float, window: float,
         call_later: CallLater = loop_call_later) -> tuple[KeystrokeRecorder, EchoWatcher]:
    """The keystroke recorder and the output watcher of one pty channel."""
    echo = EchoState()
    keys = KeystrokeRecorder(scanner, shared, echo, record_hold=record_hold, window=window,
                             call_later=call_later)
    watcher = EchoWatcher(echo)
    watcher.keys = keys
    return keys, watcher
