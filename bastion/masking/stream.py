"""Masking of a byte stream that arrives in chunks, with a bounded hold-back.

``push`` returns what can be passed on now and keeps the tail that could be the start of a
secret completed by the next chunk (a cut escape sequence or UTF-8 character, or a match of a
detector's tail pattern). ``flush`` masks and returns everything held (the caller calls it on a
short timer, at the end of the stream, and when the hold grows past its byte bound).

Chunks of plain text take a fast path: the scanner's raw prefilter shows there is no escape
sequence to strip and nothing any detector could match, so only the chunk's end is looked at for
the hold-back (docs/masking.md, "Performance"). The rest are stripped of escape sequences, and
RE2 runs if the prefilter over the visible text finds something.

A private key block is state: after ``-----BEGIN ... PRIVATE KEY-----`` everything up to the
matching END line is masked as it streams. If the END does not come within ``KEY_MAX_BYTES``
or ``KEY_MAX_LINES`` the masking stops there (all of it stayed masked) and the state resets.
"""

from __future__ import annotations

from collections import Counter

import re2

from bastion.masking.detectors import PRIVATE_KEY, Detector
from bastion.masking.engine import TAIL_WINDOW, Hit, Scanner, options, replacement, stars
from bastion.masking.escapes import Stripped, partial_escape_start, suffix_raw_index

MAX_HOLD = 4096  # bytes held back at most; past it the stream is flushed
KEY_MAX_BYTES = 64 * 1024  # a private key block longer than this is cut off (fail closed)
KEY_MAX_LINES = 1000
KEY_END = re2.compile(rb"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----", options())
KEY_END_PARTIAL = re2.compile(rb"-{1,5}(?:E(?:N(?:D[A-Z0-9 -]{0,70})?)?)?$", options())
UNTERMINATED_KEY = "private_key_unterminated"
# What of a chunk no detector can match in may still be held: the tail search window, the byte
# before it (\b context) and a UTF-8 character cut by the chunk (at most 3 bytes), and a spare.
QUIET_END = TAIL_WINDOW + 8


class StreamMasker:
    """One direction of one stream: masks secrets, counts them per detector."""

    def __init__(self, scanner: Scanner, counts: Counter[str] | None = None) -> None:
        self.scanner = scanner
        self.counts: Counter[str] = Counter() if counts is None else counts
        self.pending = b""
        self.before = b""  # the last visible byte passed on: context for \b at the next scan
        self.in_key = False
        self.key_bytes = 0
        self.key_lines = 0
        self.count_only = False  # the caller drops the output: skip masking it (ScanOnly)
        self.binary = False  # counting only, and a NUL byte came: no escape stripping any more
        self.released = b""  # the raw bytes (before masking) of what the last call returned
        self.escape_held = False  # all that is held is an escape sequence cut by a chunk's end
        self.found: list[str] = []  # the detectors counted by the last push or flush

    def push(self, data: bytes) -> bytes:
        """Add a chunk; return the bytes that may go on now (masked)."""
        raw = self.pending + data if self.pending else data
        self.escape_held = False
        if self.found:
            self.found = []
        return self._process(raw, final=False)

    def state(self) -> tuple[object, ...]:
        """Everything the next ``push`` depends on besides its chunk: two maskers of one
        scanner in equal states turn equal chunks into equal output (``adopt``)."""
        return (self.pending, self.before, self.in_key, self.key_bytes, self.key_lines,
                self.escape_held)

    def adopt(self, other: StreamMasker) -> None:
        """Take ``other``'s result after it pushed the chunk this masker would have, from the
        state this one has now (``state`` equal, nothing held): its counts too. What ``other``
        holds is not taken: it reaches this masker when ``other`` releases it."""
        self.before, self.in_key = other.before, other.in_key
        self.key_bytes, self.key_lines = other.key_bytes, other.key_lines
        self.released, self.found = other.released, other.found
        for name in other.found:
            self.counts[name] += 1

    def flush(self, *, keep_escape: bool = False) -> bytes:
        """Return everything held, masked as far as it can be seen now.

        ``keep_escape`` (a timed release): an escape sequence cut by the last chunk's end stays
        held for the next chunk (``escape_held``). It shows nothing, and released as text its
        rest would be read as visible text in the next chunk: ``ESC[01;3`` + ``1mAKIA...`` made
        the key follow an "m", no word boundary, and go unmasked (``grep --color`` output).
        """
        raw, self.pending = self.pending, b""
        self.escape_held = False
        if self.found:
            self.found = []
        if not raw:
            self.released = b""
            return b""
        if keep_escape and not self.binary:
            cut = partial_escape_start(raw)
            if cut is not None:
                out = self._process(raw[:cut], final=True) if cut else b""
                if not cut:
                    self.released = b""
                self.pending = raw[cut:]
                self.escape_held = True
                return out
        return self._process(raw, final=True)

    def end(self) -> bytes:
        """The stream ended: flush, and forget an open private key block."""
        out = self.flush()
        self.in_key = False
        return out

    def mask_all(self, data: bytes) -> bytes:
        """Mask one complete text (no hold-back, state kept)."""
        self.pending += data
        return self.flush()

    # -- the work -------------------------------------------------------------------------
    def _process(self, raw: bytes, *, final: bool) -> bytes:
        cut = len(raw)
        if not final and not self.binary:  # binary: no escape sequence is stripped (below)
            partial = partial_escape_start(raw)
            if partial is not None:
                cut = partial
        main = raw[:cut] if cut < len(raw) else raw
        # The fast path: one Hyperscan pass shows there is nothing to strip and nothing to find;
        # what is left is the hold-back at the end (the same code as the full path).
        clean = not self.in_key and self.scanner.clean(main)
        # Counting binary data (an exec stream that has carried a NUL byte, which terminal text
        # does not): its ESC bytes start no escape sequence anyone sees, and random bytes hold
        # one in 256, which sent every piece of a file transfer through the stripping (a third
        # of the bastion's CPU on an scp -O upload). From the first NUL on, the detectors run
        # over the bytes as they are (docs/masking.md, "Exec channels").
        if self.count_only and not self.binary and b"\x00" in main:
            self.binary = True
        as_is = clean or self.binary
        # Counting only never maps positions: one block (no join of the blocks' parts).
        stripped = None if as_is else Stripped(main, len(main) + 1 if self.count_only else None)
        visible = main if stripped is None else stripped.visible
        # Quiet: no detector can match, only the hold-back is left (None: not known yet, a key
        # block is open).
        quiet = None if self.in_key else clean or not self.scanner.maybe(visible)
        hits: list[tuple[int, int, Detector]] = []
        context = len(self.before)
        if quiet is True and len(visible) > QUIET_END:
            # Only the end can be held: scan just that (no copy of a large chunk).
            base = len(visible) - QUIET_END
            hold = base + self._scan(visible[base:], hits, final, 0, quiet)
        elif context:  # scanned with the byte before it, so \b at its start is judged right
            hold = self._scan(self.before + visible, hits, final, context, quiet) - context
            hits = [(start - context, end - context, det) for start, end, det in hits]
        else:
            hold = self._scan(visible, hits, final, 0, quiet)
        if hold > 0:
            self.before = visible[hold - 1:hold]
        if not final and len(visible) - hold > MAX_HOLD:
            return self._process(raw, final=True)
        escapes = len(visible) != len(main)  # else visible positions are raw positions
        raw_hold = suffix_raw_index(main, len(visible) - hold) if escapes else hold
        self.pending = main[raw_hold:] + raw[cut:] if not final else b""
        self.released = main[:raw_hold]
        if not hits or self.count_only:
            return self.released
        emap = stripped if escapes else None
        out = bytearray(main[:raw_hold])
        for start, end, det in reversed(hits):
            segments = [(start, end, start)] if emap is None else emap.raw_segments(start, end)
            masked = replacement(det, visible[start:end])
            for raw_start, raw_end, vis_start in reversed(segments):
                piece = masked[vis_start - start: vis_start - start + raw_end - raw_start]
                out[raw_start:raw_end] = piece.replace(b"\x00", b"")
        return bytes(out)

    def _scan(self, visible: bytes, hits: list[tuple[int, int, Detector]], final: bool,
              pos: int, quiet: bool | None = None) -> int:
        """Fill ``hits`` with the spans to mask from ``pos``; return where to hold from.
        ``quiet``: whether the prefilter found nothing in ``visible[pos:]`` (None: ask it)."""
        size = len(visible) if final else self._complete(visible, pos)
        if self.in_key:
            pos, hold = self._key(visible, pos, hits, final)
            if self.in_key:
                return hold
        hold = size if final else self._tail(visible, pos, size)
        if pos >= hold or (quiet if quiet is not None else not self.scanner.maybe(visible)):
            return hold
        while self.scanner.regex is not None and pos < hold:
            found = self.scanner.search(visible, pos)
            if found is None:
                break
            start, end, hit = found
            if start >= hold:
                break
            if end > hold or (not final and end >= size):  # it may still grow
                hold = start
                break
            if hit is None:
                pos = start + 1
                continue
            self._count(hit.detector.name)
            if hit.detector.name == PRIVATE_KEY:
                self.in_key, self.key_bytes, self.key_lines = True, 0, 0
                pos, key_hold = self._key(visible, end, hits, final)
                if self.in_key:
                    return key_hold
                hold = size if final else self._tail(visible, pos, size)
                continue
            self._add(hits, hit)
            pos = end
        return hold

    def _count(self, name: str) -> None:
        self.counts[name] += 1
        self.found.append(name)

    def _add(self, hits: list[tuple[int, int, Detector]], hit: Hit) -> None:
        if hit.end > hit.start:
            hits.append((hit.start, hit.end, hit.detector))

    def _tail(self, visible: bytes, pos: int, size: int) -> int:
        return max(self.scanner.tail_start(visible, pos, size), pos)

    @staticmethod
    def _complete(visible: bytes, pos: int) -> int:
        """The end of the complete UTF-8 characters (a character cut by the chunk waits)."""
        for index in range(len(visible) - 1, max(len(visible) - 4, pos - 1), -1):
            byte = visible[index]
            if byte < 0x80:
                break
            if byte >= 0xC0:
                need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
                if len(visible) - index < need:
                    return index
                break
        return len(visible)

    def _key(self, visible: bytes, start: int, hits: list[tuple[int, int, Detector]],
             final: bool) -> tuple[int, int]:
        """Inside a private key block from ``start``: mask to its END (or as far as seen).

        Returns (position after the block, hold position).
        """
        size = len(visible)
        end_match = KEY_END.search(visible, start)
        stop = end_match.start() if end_match is not None else size
        if end_match is None and not final:
            partial = KEY_END_PARTIAL.search(visible, start)
            if partial is not None:
                stop = partial.start()
        self.key_bytes += stop - start
        self.key_lines += visible.count(b"\n", start, stop)
        if self.key_bytes > KEY_MAX_BYTES or self.key_lines > KEY_MAX_LINES:
            self.in_key = False  # fail closed: what was seen stays masked; stop here
            self._count(UNTERMINATED_KEY)
            end_match = None
        if stop > start:
            hits.append((start, stop, _KEY_BODY))
        if end_match is not None:
            self.in_key = False
            return end_match.end(), end_match.end()
        return stop, stop


_KEY_BODY = Detector(name=PRIVATE_KEY, pattern="", tail="")

__all__ = ["MAX_HOLD", "StreamMasker", "stars"]
