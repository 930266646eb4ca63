"""The user's side of the line catcher: keystrokes split into keys, and a readline-like model.

``KeyReader`` splits input into keys (printable runs, control characters, escape sequences,
whole bracketed pastes), keeping an incomplete one for the next chunk. ``TypedLine`` is the line
as the keystrokes built it: exact while only editing keys it knows were used.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass

PASTE_CAP = 64 * 1024  # a bracketed paste longer than this is refused as a whole
_CSI_FINAL = re.compile(rb"[\x40-\x7e]")
# Keys that make readline run the line: CR, LF (Ctrl-J) and Ctrl-O (operate-and-get-next).
_ACCEPT = frozenset((0x0D, 0x0A, 0x0F))
PASTE_START = b"\x1b[200~"
PASTE_END = b"\x1b[201~"


class KeyKind(enum.Enum):
    """What one keystroke (or one paste) is to the line editor model."""

    TEXT = "text"  # printable characters
    ENTER = "enter"  # CR or LF: the shell runs the line
    CONTROL = "control"  # a C0 control character (Ctrl-A ...)
    ESCAPE = "escape"  # an escape sequence (cursor keys, Alt-x, ...)
    PASTE = "paste"  # a whole bracketed paste (``text`` is its content)


@dataclass(frozen=True)
class Key:
    """One keystroke (or a run of printable characters, or a whole paste) and its bytes."""

    kind: KeyKind
    text: str
    raw: bytes


class KeyReader:
    """Splits user input into keys; keeps an incomplete escape sequence or paste for the next chunk.

    Per-byte Python work is fine here: this is keystroke input, and a paste is capped.
    """

    def __init__(self) -> None:
        self._partial = b""  # bytes of an unfinished sequence from the previous chunk
        self.paste_overflow = False  # set when a paste exceeded PASTE_CAP (it is dropped)

    @property
    def pending(self) -> bool:
        """Whether an incomplete key waits for more input."""
        return bool(self._partial)

    def keys(self, data: bytes) -> Iterator[Key]:
        """The complete keys in ``data`` (with any incomplete one left from before)."""
        buf = self._partial + data
        self._partial = b""
        i, n = 0, len(buf)
        while i < n:
            b = buf[i]
            if buf.startswith(PASTE_START, i) or (b == 0x1B and PASTE_START.startswith(buf[i:])):
                close = buf.find(PASTE_END, i + len(PASTE_START))
                if close < 0:
                    if n - i > PASTE_CAP:
                        self.paste_overflow = True
                        return
                    self._partial = buf[i:]
                    return
                text = buf[i + len(PASTE_START):close].decode("utf-8", "replace")
                j = close + len(PASTE_END)
                yield Key(KeyKind.PASTE, text, buf[i:j])
                i = j
            elif b == 0x1B:
                end = _escape_end(buf, i)
                if end is None:
                    self._partial = buf[i:]
                    return
                yield Key(KeyKind.ESCAPE, buf[i:end].decode("latin-1"), buf[i:end])
                i = end
            elif b in _ACCEPT:
                yield Key(KeyKind.ENTER, chr(b), buf[i:i + 1])
                i += 1
            elif b < 0x20 or b == 0x7F:
                yield Key(KeyKind.CONTROL, chr(b), buf[i:i + 1])
                i += 1
            else:
                j = i + 1
                while j < n and buf[j] >= 0x20 and buf[j] != 0x7F and buf[j] != 0x1B:
                    j += 1
                raw = buf[i:j]
                if j == n:  # keep an incomplete UTF-8 character for the next chunk
                    cut = _utf8_complete(raw)
                    self._partial, raw = raw[cut:], raw[:cut]
                if raw:
                    yield Key(KeyKind.TEXT, raw.decode("utf-8", "replace"), raw)
                i = j

    def take_partial(self) -> bytes:
        """Hand back the bytes of an incomplete key (they go on with held input)."""
        partial, self._partial = self._partial, b""
        return partial

    def drop_partial(self) -> None:
        """Forget an incomplete key (the input it belonged to was dropped)."""
        self._partial = b""
        self.paste_overflow = False


def _escape_end(buf: bytes, i: int) -> int | None:
    """Where the escape sequence at ``buf[i]`` ends, or None if the chunk ends inside it."""
    n = len(buf)
    if i + 1 >= n:
        return None
    nxt = buf[i + 1]
    if nxt == 0x5B:  # CSI: ESC [ params final
        match = _CSI_FINAL.search(buf, i + 2)
        return None if match is None else match.end()
    if nxt == 0x4F:  # SS3: ESC O x
        return None if i + 2 >= n else i + 3
    return i + 2  # Alt-x (ESC x)


def _utf8_complete(text: bytes) -> int:
    """Length of ``text`` up to an incomplete trailing UTF-8 character."""
    for back in range(1, min(4, len(text)) + 1):
        byte = text[-back]
        if byte & 0xC0 == 0x80:
            continue
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else (
            4 if byte & 0xF8 == 0xF0 else 1)
        return len(text) - back if need > back else len(text)
    return len(text)


_HOME = {"\x1b[H", "\x1bOH", "\x1b[1~", "\x1b[7~"}
_END = {"\x1b[F", "\x1bOF", "\x1b[4~", "\x1b[8~"}
_LEFT = {"\x1b[D", "\x1bOD"}
_RIGHT = {"\x1b[C", "\x1bOC"}


class TypedLine:
    """The line as the user's keystrokes built it (an emacs-mode readline subset)."""

    def __init__(self) -> None:
        self.text = ""
        self.cursor = 0
        self.certain = True  # False once a key with a shell-dependent effect was used
        self.used = False  # any key typed since the line began
        self._killed = ""

    def reset(self) -> None:
        """A new, empty line (after Enter or Ctrl-C)."""
        self.text, self.cursor, self.certain, self.used, self._killed = "", 0, True, False, ""

    def apply(self, key: Key) -> None:
        """Update the model with one key (ENTER is the caller's business)."""
        self.used = True
        if key.kind is KeyKind.TEXT or key.kind is KeyKind.PASTE:
            self._insert(key.text.replace("\r\n", "\n").replace("\r", "\n"))
        elif key.kind is KeyKind.CONTROL:
            self._control(key.text)
        elif key.kind is KeyKind.ESCAPE:
            self._escape(key.text)

    def _insert(self, text: str) -> None:
        self.text = self.text[:self.cursor] + text + self.text[self.cursor:]
        self.cursor += len(text)

    def _control(self, char: str) -> None:
        t, c = self.text, self.cursor
        match char:
            case "\x7f" | "\x08":
                if c:
                    self.text, self.cursor = t[:c - 1] + t[c:], c - 1
            case "\x01":
                self.cursor = 0
            case "\x05":
                self.cursor = len(t)
            case "\x02":
                self.cursor = max(0, c - 1)
            case "\x06":
                self.cursor = min(len(t), c + 1)
            case "\x04":
                self.text = t[:c] + t[c + 1:]
            case "\x15":
                self._killed, self.text, self.cursor = t[:c], t[c:], 0
            case "\x0b":
                self._killed, self.text = t[c:], t[:c]
            case "\x17":
                start = len(t[:c].rstrip(" \t"))
                while start and t[start - 1] not in " \t":
                    start -= 1
                self._killed, self.text, self.cursor = t[start:c], t[:start] + t[c:], start
            case "\x19":
                # Ctrl-Y yanks the shell's newest kill, which may be from an earlier line (even
                # the bastion's own Ctrl-U of a refused line): only the screen knows.
                self._insert(self._killed)
                self.certain = False
            case "\x03":
                self.reset()
            case "\x0c" | "\x07" | "\x00":
                pass  # redraw, bell, set-mark: the line is unchanged
            case _:
                self.certain = False  # Tab, Ctrl-R/S/P/N/T, undo...: the shell decides

    def _escape(self, seq: str) -> None:
        if seq in _LEFT:
            self.cursor = max(0, self.cursor - 1)
        elif seq in _RIGHT:
            self.cursor = min(len(self.text), self.cursor + 1)
        elif seq in _HOME:
            self.cursor = 0
        elif seq in _END:
            self.cursor = len(self.text)
        elif seq == "\x1b[3~":
            self.text = self.text[:self.cursor] + self.text[self.cursor + 1:]
        else:
            self.certain = False  # history, Alt-keys, anything else
