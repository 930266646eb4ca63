"""Terminal escape sequences: stripped into a side map so detectors match on the visible text and
masks land on the right raw bytes, leaving every escape sequence intact.

Only chunks that contain a detector match pay for the full map; the hold-back point of a chunk
needs only the map of its last few hundred bytes.
"""

from __future__ import annotations

import bisect
import itertools
import re

# CSI, OSC (BEL or ST terminated), DCS/SOS/PM/APC strings, two/three-byte escapes, and C0
# controls other than tab, line feed and carriage return. Each alternative stops at a byte class
# that excludes ESC, so a failed attempt scans at most to the next ESC: linear overall.
ESCAPE = re.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\"
    rb"|[ -/]*[0-OQ-WYZ\\`a-~])|[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")
# The same, in two C-level steps for ``strip`` (escape sequences start with a literal ESC, which
# re finds fast; controls go by ``translate``): 2.5 times faster than ESCAPE on coloured text.
_SEQUENCE = re.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\"
    rb"|[ -/]*[0-OQ-WYZ\\`a-~])")
_CONTROLS = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
PARTIAL_LIMIT = 512  # a longer unterminated escape at a chunk's end is taken as text


def partial_escape_start(raw: bytes) -> int | None:
    """Where an escape sequence cut off by the end of ``raw`` starts, or None."""
    esc = raw.rfind(b"\x1b", max(0, len(raw) - PARTIAL_LIMIT))
    if esc < 0:
        return None
    match = ESCAPE.match(raw, esc)
    if match is not None:
        return None
    return esc


class EscapeMap:
    """Maps positions in the visible text (escapes removed) back to positions in the raw bytes."""

    def __init__(self, raw: bytes, base: int = 0) -> None:
        self.base = base
        # split/findall and accumulate run in C: no Python step per escape sequence.
        pattern = _SEQUENCE if len(raw.translate(None, _CONTROLS)) == len(raw) else ESCAPE
        lengths = list(map(len, pattern.split(raw)))
        lengths.pop()
        self.visible_at = list(itertools.accumulate(lengths))  # where each escape sits
        self.removed_after = list(itertools.accumulate(map(len, pattern.findall(raw))))

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


def suffix_raw_index(raw: bytes, tail: int) -> int:
    """Raw position where the last ``tail`` visible bytes of ``raw`` begin.

    Maps only a window at the end of ``raw``; the window's first bytes may be the end of an
    escape cut by the window and read as text, so it is widened until it holds a margin.
    """
    if tail <= 0:
        return len(raw)
    size = 2 * tail + 256
    while True:
        start = max(0, len(raw) - size)
        window = raw[start:]
        emap = EscapeMap(window, start)
        visible_len = len(window) - (emap.removed_after[-1] if emap.removed_after else 0)
        if start == 0 or visible_len >= tail + 256:
            return emap.raw_index(visible_len - tail)
        size *= 4


def strip(raw: bytes) -> bytes:
    """The visible text of ``raw`` (raw itself when it has no escapes or controls)."""
    if b"\x1b" in raw:
        raw = _SEQUENCE.sub(b"", raw)
    return raw.translate(None, _CONTROLS)
