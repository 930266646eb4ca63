"""Make recorded terminal output safe to show: a streaming escape-sequence filter.

A recording holds whatever the target sent, so it may hold escapes that attack the terminal that
replays it: OSC 52 writes the analyst's clipboard, OSC 50 changes fonts, titles can be set and
then read back as typed input, DCS/APC/PM/SOS strings reach terminal extensions, and queries
(DSR ``CSI 6n``, DA ``CSI c``, DECRQSS, ``CSI 21t``...) make the terminal type an answer into the
replayer's input. ``Sanitizer`` parses ECMA-48 as a terminal does, as a state machine fed chunk by
chunk (a sequence split across chunks is judged once whole), and passes only an allow-list:

* ``terminal`` mode: printable text, CR/LF/TAB/BS, SGR colours, cursor movement, erase,
  insert/delete, scroll regions, a few harmless DEC modes (cursor visibility, alternate screen,
  autowrap) and G0 charset selection. Everything else is dropped whole.
* ``plain`` mode: printable text, LF and TAB only; every escape sequence is dropped.

8-bit C1 controls (U+0080..U+009F) are parsed as their 7-bit forms (``U+009B`` is CSI), so a C1
sequence is filtered like its ESC form and never passed on as C1. Strings (OSC, DCS, APC, PM,
SOS) end at BEL (OSC), ST (``ESC \\`` or U+009C), CAN or SUB; an unterminated one swallows
what follows, as it would in a terminal, and never leaks its content.
"""

from __future__ import annotations

import enum
import re

MAX_SEQUENCE = 256  # a control sequence longer than this is dropped whole (no terminal needs it)

ESC = "\x1b"
_CAN, _SUB, _BEL = "\x18", "\x1a", "\x07"
# C1 controls that introduce the same sequences as ESC + (code - 0x40).
_C1_INTRODUCERS = {"\x9b": "[", "\x9d": "]", "\x90": "P", "\x9f": "_", "\x9e": "^", "\x98": "X"}
_C1_ST = "\x9c"

# CSI finals allowed with no private prefix and no intermediates, in terminal mode.
_CSI_ALLOWED = frozenset("ABCDEFGHfdea`JKX@LMPSTrsuIZbm")
_CSI_PARAMS = re.compile(r"[0-9;:]*\Z")
# DEC private modes (CSI ? n h/l) that change only how text is drawn, never what is sent back.
_DEC_MODES_ALLOWED = frozenset({"5", "6", "7", "12", "25", "47", "1047", "1048", "1049"})
_ANSI_MODES_ALLOWED = frozenset({"4"})  # IRM insert mode
_ESC_ALLOWED = frozenset("78DEMc")  # DECSC, DECRC, IND, NEL, RI, RIS (reset)
_G0_ALLOWED = frozenset("B0")  # ESC ( B (ASCII), ESC ( 0 (line drawing)
_TEXT_CONTROLS_TERMINAL = frozenset("\n\r\t\b")
_TEXT_CONTROLS_PLAIN = frozenset("\n\t")
# Runs of characters that need no decision at all (fast path). A lone surrogate (only a hostile
# recording has one: the recorder decodes with replacement) is no character: it cannot even be
# encoded for output, so it is replaced.
_PLAIN_RUN = re.compile(r"[^\x00-\x1f\x7f-\x9f\ud800-\udfff]+")
_SURROGATES = re.compile(r"[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


class Mode(enum.Enum):
    """What passes the filter."""

    TERMINAL = "terminal"  # safe colours and cursor movement pass
    PLAIN = "plain"  # text only


class _State(enum.Enum):
    GROUND = enum.auto()
    ESC = enum.auto()  # after ESC
    ESC_NEXT = enum.auto()  # ESC + intermediate: one more character ends it
    CSI = enum.auto()  # collecting a control sequence
    STRING = enum.auto()  # inside OSC/DCS/APC/PM/SOS: discarded
    STRING_ESC = enum.auto()  # ESC inside a string: ST if "\" follows


class Sanitizer:
    """Streaming filter; ``feed`` returns what is safe to write; state carries across calls."""

    def __init__(self, mode: Mode = Mode.TERMINAL) -> None:
        self.mode = mode
        self._state = _State.GROUND
        self._seq: list[str] = []  # the sequence being collected (7-bit form)
        self._string_is_osc = False
        self._text_controls = (_TEXT_CONTROLS_TERMINAL if mode is Mode.TERMINAL
                               else _TEXT_CONTROLS_PLAIN)

    @property
    def in_ground(self) -> bool:
        """True between sequences (nothing half-parsed is held)."""
        return self._state is _State.GROUND

    def copy(self) -> Sanitizer:
        """An independent copy of this filter and its parse state."""
        other = Sanitizer(self.mode)
        other._state = self._state
        other._seq = list(self._seq)
        other._string_is_osc = self._string_is_osc
        return other

    def reset(self) -> None:
        """Forget any half-parsed sequence."""
        self._state = _State.GROUND
        self._seq = []

    def feed(self, text: str) -> str:
        """Filter one chunk; a sequence left incomplete at its end is held for the next."""
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            if self._state is _State.GROUND:
                match = _PLAIN_RUN.match(text, i)
                if match:
                    out.append(match.group())
                    i = match.end()
                    continue
            self._step(text[i], out)
            i += 1
        return "".join(out)

    # -- the state machine ----------------------------------------------------------------------
    def _step(self, ch: str, out: list[str]) -> None:
        state = self._state
        if ch in (_CAN, _SUB) and state is not _State.GROUND:
            self.reset()  # CAN and SUB abort any sequence (ECMA-48)
            return
        if state is _State.GROUND:
            self._ground(ch, out)
        elif state is _State.ESC:
            self._after_esc(ch, out)
        elif state is _State.ESC_NEXT:
            if _is_c0(ch) and ch != ESC:
                self._c0_inside(ch, out)
            elif ch == ESC:
                self._state, self._seq = _State.ESC, [ESC]
            else:
                self._seq.append(ch)
                self._finish_esc(out)
        elif state is _State.CSI:
            self._in_csi(ch, out)
        elif state is _State.STRING:
            if ch == ESC:
                self._state = _State.STRING_ESC
            elif ch == _C1_ST or (ch == _BEL and self._string_is_osc):
                self.reset()
        else:  # STRING_ESC
            if ch == "\\":
                self.reset()  # ST: the string ends, all of it dropped
            else:  # ESC starts a new sequence and ends the string (as xterm does)
                self.reset()
                self._state, self._seq = _State.ESC, [ESC]
                self._after_esc(ch, out)

    def _ground(self, ch: str, out: list[str]) -> None:
        if ch == ESC:
            self._state, self._seq = _State.ESC, [ESC]
        elif ch in _C1_INTRODUCERS:
            self._state, self._seq = _State.ESC, [ESC]
            self._after_esc(_C1_INTRODUCERS[ch], out)
        elif ch in self._text_controls:
            out.append(ch)
        elif "\ud800" <= ch <= "\udfff":
            out.append(REPLACEMENT)
        # every other C0/C1 control, DEL and a stray ST: dropped

    def _c0_inside(self, ch: str, out: list[str]) -> None:
        if ch in self._text_controls:
            out.append(ch)

    def _after_esc(self, ch: str, out: list[str]) -> None:
        if ch == ESC:
            self._seq = [ESC]  # ESC ESC: the first one is void
            return
        if _is_c0(ch):
            self._c0_inside(ch, out)  # executed at once; the sequence goes on
            return
        if ch == "[":
            self._state = _State.CSI
            self._seq.append(ch)
        elif ch in "]P_^X":
            self._state = _State.STRING
            self._string_is_osc = ch == "]"
            self._seq = []
        elif " " <= ch <= "/":  # an intermediate: one final character follows
            self._state = _State.ESC_NEXT
            self._seq.append(ch)
        elif ch in _C1_INTRODUCERS:  # ESC then a C1 introducer: the ESC is void
            self.reset()
            self._ground(ch, out)
        else:
            self._seq.append(ch)
            self._finish_esc(out)

    def _finish_esc(self, out: list[str]) -> None:
        seq = "".join(self._seq)
        self.reset()
        if self.mode is not Mode.TERMINAL:
            return
        body = seq[1:]
        if (len(body) == 1 and body in _ESC_ALLOWED) or \
                (len(body) == 2 and body[0] == "(" and body[1] in _G0_ALLOWED):
            out.append(seq)

    def _in_csi(self, ch: str, out: list[str]) -> None:
        if ch == ESC:  # an unfinished sequence broken by a new one
            self._state, self._seq = _State.ESC, [ESC]
            return
        if ch in _C1_INTRODUCERS or ch == _C1_ST:
            self.reset()
            self._ground(ch, out)
            return
        code = ord(ch)
        if 0x40 <= code <= 0x7E:  # the final byte
            self._seq.append(ch)
            seq = "".join(self._seq)
            self.reset()
            if self.mode is Mode.TERMINAL and _csi_allowed(seq[2:-1], ch):
                out.append(seq)
            return
        if 0x20 <= code <= 0x3F:
            self._seq.append(ch)
            if len(self._seq) > MAX_SEQUENCE:
                self.reset()  # absurdly long: drop; its tail shows as text, harmlessly
            return
        if _is_c0(ch):
            self._c0_inside(ch, out)  # C0 controls inside a sequence act at once
            return
        # any other character ends the sequence as malformed: dropped


def _is_c0(ch: str) -> bool:
    return ch < " " or ch == "\x7f"


def _csi_allowed(params: str, final: str) -> bool:
    """Whether ``CSI params final`` only draws: colours, cursor, erase, harmless modes."""
    if final in "hl":
        if params.startswith("?"):
            modes = params[1:].split(";")
            return bool(modes) and all(m in _DEC_MODES_ALLOWED for m in modes)
        modes = params.split(";")
        return all(m in _ANSI_MODES_ALLOWED for m in modes)
    if final not in _CSI_ALLOWED or not _CSI_PARAMS.match(params):
        return False  # private prefixes (< = > ?) and intermediates: reports, queries, settings
    if final == "m":
        return ":" not in params or _colon_sgr_ok(params)
    return ":" not in params


def _colon_sgr_ok(params: str) -> bool:
    # ISO 8613-6 colon forms (38:2::r:g:b, 4:3 curly underline) are harmless if short.
    return len(params) <= 64


def without_surrogates(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (so that it can be encoded)."""
    return _SURROGATES.sub(REPLACEMENT, text)


def sanitize(text: str, mode: Mode = Mode.TERMINAL) -> str:
    """Filter a whole text at once (an unfinished sequence at its end is dropped)."""
    return Sanitizer(mode).feed(text)


def one_line(text: str, limit: int = 200) -> str:
    """Plain, single-line text for a status line or a table cell (control characters gone)."""
    flat = sanitize(text, Mode.PLAIN).replace("\n", " ").replace("\t", " ")
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


_CARET = {i: f"^{chr(i + 64)}" for i in range(32)}
_CARET[0x7F] = "^?"


def visible_keys(text: str) -> str:
    """Recorded keystrokes as visible text: controls in caret notation (``^C``, ``^[``),
    C1 and other non-printables as ``<U+XXXX>``; nothing in it is a control character."""
    parts = []
    for ch in text:
        code = ord(ch)
        if code in _CARET:
            parts.append(_CARET[code])
        elif 0x80 <= code <= 0x9F or not ch.isprintable():
            parts.append(f"<U+{code:04X}>")
        else:
            parts.append(ch)
    return "".join(parts)
