"""Terminal escape sequences: stripped into a side map so detectors match on the visible text and
masks land on the right raw bytes, leaving every escape sequence intact.

Stripping works in blocks cut at *ground points* (``ground``: no escape sequence spans them), so
the visible text of a block is exactly its part of the whole's. Only blocks that hold a detector
match pay for a position map (``Stripped``); the hold-back point of a chunk needs only the map of
its last bytes (``suffix_raw_index``). Building the map of a whole 2 MB chunk for one hit was
most of the cost of coloured output with secrets (docs/masking.md, "Performance").
"""

from __future__ import annotations

import bisect
import itertools
import re

# A character erased by the echo of a backspace: the character, BS, then a space and BS or
# erase-to-end-of-line (how shells echo a deleted last character). The terminal shows neither,
# so a secret typed with a correction (``AKIA...X``, Backspace, ``...``) is one visible word.
_ERASED = rb"(?:[\x20-\x7e]|[\xc2-\xf4][\x80-\xbf]{1,3})\x08(?: \x08|\x1b\[0?K)|"
# CSI, OSC (BEL or ST terminated), DCS/SOS/PM/APC strings, two/three-byte escapes, and C0
# controls other than tab, line feed and carriage return. Each alternative stops at a byte class
# that excludes ESC, so a failed attempt scans at most to the next ESC: linear overall.
ESCAPE = re.compile(
    _ERASED + rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\"
    rb"|[ -/]*[0-OQ-WYZ\\`a-~])|[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")
# The same, in two C-level steps for ``strip`` (escape sequences start with a literal ESC, which
# re finds fast; controls go by ``translate``): 2.5 times faster than ESCAPE on coloured text.
_SEQUENCE = re.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\"
    rb"|[ -/]*[0-OQ-WYZ\\`a-~])")
_SEQUENCE_GROUP = re.compile(b"(" + _SEQUENCE.pattern + b")")
_ESCAPE_GROUP = re.compile(b"(" + ESCAPE.pattern + b")")
_CONTROLS = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
PARTIAL_LIMIT = 512  # a longer unterminated escape at a chunk's end is taken as text


def partial_escape_start(raw: bytes) -> int | None:
    """Where an escape sequence cut off by the end of ``raw`` starts, or None."""
    first = max(0, len(raw) - PARTIAL_LIMIT)
    esc = raw.rfind(b"\x1b", first)
    if esc < 0:
        return None
    match = ESCAPE.match(raw, esc)
    if match is not None:
        return None
    if esc == len(raw) - 1:
        # A last ESC may be the first byte of the terminator (ESC \) of an OSC or DCS string
        # opened by the ESC before it: the string starts there (else its text would be read as
        # visible, and a secret after it judged with the wrong \b context).
        opened = raw.rfind(b"\x1b", first, esc)
        kind = raw[opened + 1:opened + 2] if opened >= 0 else b""
        if kind in (b"P", b"X", b"^", b"_") or (kind == b"]" and b"\x07" not in raw[opened:esc]):
            return opened
    return esc


class EscapeMap:
    """Maps positions in the visible text (escapes removed) back to positions in the raw bytes."""

    def __init__(self, raw: bytes, base: int = 0) -> None:
        self.base = base
        # One split (text, escape, text, ...) and accumulate run in C: no Python step per
        # escape sequence.
        pattern = _SEQUENCE_GROUP if len(raw.translate(None, _CONTROLS)) == len(raw) \
            else _ESCAPE_GROUP
        pieces = pattern.split(raw)
        lengths = list(map(len, pieces[0:-1:2]))
        self.visible_at = list(itertools.accumulate(lengths))  # where each escape sits
        self.removed_after = list(itertools.accumulate(map(len, pieces[1::2])))

    def raw_index(self, visible: int) -> int:
        """The raw position of the visible byte at ``visible`` (after escapes just before it)."""
        j = bisect.bisect_right(self.visible_at, visible)
        return self.base + visible + (self.removed_after[j - 1] if j else 0)

    def raw_segments(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """The raw pieces of the visible span ``start:end``: (raw start, raw end, visible start)."""
        out = []
        pos = start
        raw = self.raw_index(start)
        j = bisect.bisect_right(self.visible_at, start)
        while j < len(self.visible_at) and self.visible_at[j] < end:
            cut = self.visible_at[j]
            if cut > pos:
                out.append((raw, raw + cut - pos, pos))
            # skip this escape and any that sit at the same visible position
            while j < len(self.visible_at) and self.visible_at[j] == cut:
                raw = self.base + self.visible_at[j] + self.removed_after[j]
                j += 1
            pos = cut
        if end > pos:
            out.append((raw, raw + end - pos, pos))
        return out


def ground(raw: bytes, at: int) -> int:
    """The first position at or after ``at`` that no escape sequence of ``strip`` spans.

    Every alternative of an escape sequence stops at the next ESC, except the string terminator
    ``ESC \\`` that ends one: so an ESC not followed by a backslash is where ``strip`` (scanning
    left to right) starts a new match attempt, and an ``ESC \\`` always ends a sequence.
    Only the last ESC at or before ``at`` has to be looked at. Nor is a point next to a
    backspace one: a character's erase (``_ERASED``, at most 4 bytes before its BS) would be
    cut there.
    """
    point = _escape_ground(raw, at)
    while point < len(raw) and b"\x08" in raw[max(0, point - 1):point + 4]:
        point = _escape_ground(raw, point + 1)
    return point


def _escape_ground(raw: bytes, at: int) -> int:
    esc = raw.rfind(b"\x1b", 0, at + 1)
    if esc < 0:
        return at
    if raw[esc + 1:esc + 2] == b"\\":
        return max(at, esc + 2)
    match = _SEQUENCE.match(raw, esc)
    return match.end() if match is not None and match.end() > at else at


def suffix_raw_index(raw: bytes, tail: int) -> int:
    """Raw position where the last ``tail`` visible bytes of ``raw`` begin (escapes just before
    them are not part of them). Maps only a window at the end that starts at a ground point."""
    if tail <= 0:
        return len(raw)
    size = 2 * tail + 256
    while True:
        start = ground(raw, len(raw) - size) if size < len(raw) else 0
        emap = EscapeMap(raw[start:], start)
        visible_len = len(raw) - start - (emap.removed_after[-1] if emap.removed_after else 0)
        if start == 0 or visible_len >= tail:
            return emap.raw_index(visible_len - tail)
        size *= 4


BLOCK = 32 * 1024  # raw bytes per block of Stripped (a position map costs about 1 ms per block)


class Stripped:
    """The visible text of ``raw``, stripped block by block; ``raw_index`` and ``raw_segments``
    as EscapeMap's, with the map of a block built only when a position in it is asked for."""

    def __init__(self, raw: bytes, block: int | None = None) -> None:
        block = block or BLOCK
        self.raw = raw
        bounds = [0]
        while bounds[-1] + block < len(raw):
            cut = ground(raw, bounds[-1] + block)
            if cut >= len(raw):
                break
            bounds.append(cut)
        bounds.append(len(raw))
        parts = [strip(raw[a:b]) for a, b in itertools.pairwise(bounds)] if len(bounds) > 2 \
            else [strip(raw)]
        self.visible = parts[0] if len(parts) == 1 else b"".join(parts)
        self.raw_starts = bounds
        self.visible_starts = [0, *itertools.accumulate(map(len, parts))]
        self._maps: dict[int, EscapeMap] = {}

    def _block(self, visible: int) -> tuple[int, EscapeMap]:
        """The block holding visible position ``visible`` (the last block at the end)."""
        index = min(bisect.bisect_right(self.visible_starts, visible) - 1,
                    len(self.raw_starts) - 2)
        emap = self._maps.get(index)
        if emap is None:
            start, end = self.raw_starts[index], self.raw_starts[index + 1]
            emap = self._maps[index] = EscapeMap(self.raw[start:end], start)
        return index, emap

    def raw_index(self, visible: int) -> int:
        """The raw position of the visible byte at ``visible`` (after escapes just before it)."""
        index, emap = self._block(visible)
        return emap.raw_index(visible - self.visible_starts[index])

    def raw_segments(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """As EscapeMap.raw_segments: (raw start, raw end, visible start) of ``start:end``."""
        out: list[tuple[int, int, int]] = []
        pos = start
        while pos < end:
            index, emap = self._block(pos)
            first = self.visible_starts[index]
            stop = min(end, self.visible_starts[index + 1])
            for raw_start, raw_end, vis_start in emap.raw_segments(pos - first, stop - first):
                vis_start += first
                if out and out[-1][1] == raw_start:  # one piece cut by a block boundary
                    raw_start, _, vis_start = out.pop()
                out.append((raw_start, raw_end, vis_start))
            pos = stop
        return out


def strip(raw: bytes) -> bytes:
    """The visible text of ``raw`` (raw itself when it has no escapes or controls)."""
    if b"\x08" in raw:  # an erased character: one pass of ESCAPE, as EscapeMap splits
        return ESCAPE.sub(b"", raw)
    if b"\x1b" in raw:
        raw = _SEQUENCE.sub(b"", raw)
    return raw.translate(None, _CONTROLS)
