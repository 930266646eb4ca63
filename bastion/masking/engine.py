"""The detectors compiled into one RE2 program: one linear-time pass finds every kind of secret.

Both engines are used, each for what it does best (measured in docs/masking.md, "Matching
engine"): Hyperscan in prefilter mode answers "can anything match in this chunk?" at about
1-3 GB/s (``prefilter``), so most chunks never reach RE2; RE2 (``google-re2``) then finds the
leftmost match of one alternation of all detectors, with the capture group that says what to
mask. Hyperscan alone cannot do that part: no capture groups, every end offset reported through
a Python callback, and start-of-match mode refuses the bounded repeats the detectors use
("Pattern is too large").
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import re2

from bastion.masking import prefilter
from bastion.masking.detectors import BUILTIN, PRIVATE_KEY, Detector, Replacement, Validator

# google-re2's C++ extension (see spans_of); None in another build: the public API
_binding: Any = getattr(re2, "_re2", None)

SECRET_GROUP = re.compile(r"\(\?P<(secret\d*)>")
TAIL_WINDOW = 1024  # visible bytes at a chunk's end searched for a possible incomplete secret


def options() -> re2.Options:
    """RE2 options for every bastion pattern: UTF-8, no logging of bad patterns, more memory
    for the DFA of the combined program (the default 8 MB makes RE2 fall back to the NFA)."""
    opts = re2.Options()
    opts.log_errors = False
    opts.max_mem = 64 << 20
    return opts


def compile_pattern(pattern: str) -> re2._Regexp[bytes]:
    """Compile one pattern as bastion does; raises ``re2.error`` if RE2 refuses it."""
    return re2.compile(pattern.encode("utf-8"), options())


@dataclass(frozen=True)
class AllowRule:
    """An allowlist entry: a literal (the masked value or the whole match equals it) or a regex
    (found anywhere in the whole match)."""

    literal: bytes | None = None
    pattern: str | None = None

    @classmethod
    def parse(cls, entry: str) -> AllowRule:
        """``re:PATTERN`` is a regex; anything else a literal."""
        if entry.startswith("re:"):
            return cls(pattern=entry[3:])
        return cls(literal=entry.encode("utf-8"))


@dataclass(frozen=True)
class Hit:
    """One masked value: the visible span to mask and which detector found it."""

    start: int
    end: int
    detector: Detector


_VALUE = bytes.maketrans(b"0123456789", bytes(range(10)))
_DOUBLED = bytes.maketrans(b"0123456789", bytes([0, 2, 4, 6, 8, 1, 3, 5, 7, 9]))  # 2d, summed
_NOT_DIGITS = bytes(sorted(set(range(256)) - set(b"0123456789")))


def luhn_ok(digits: bytes) -> bool:
    """The Luhn check digit test of a payment card number (digits only). Translate and sum run
    in C: a card candidate is checked in about a microsecond (a loop per digit took five)."""
    reverse = digits[::-1]
    total = sum(reverse[0::2].translate(_VALUE)) + sum(reverse[1::2].translate(_DOUBLED))
    return total % 10 == 0


Spans = Callable[[bytes, int, int], "list[tuple[int, int]] | None"]


def spans_of(regex: Any, *, anchored: bool) -> Spans:
    """A function giving the (start, end) of the whole match and of every group of the first
    match of ``regex`` in ``text[pos:endpos]`` (at ``pos`` if ``anchored``), None if none.

    google-re2's extension object is called directly when it is there: its Python wrapper
    builds a generator and a match object per call and reads each group through Python, which
    made up most of the cost of a card candidate (measured in docs/masking.md, "Performance").
    """
    low = getattr(regex, "_regexp", None)
    anchors = getattr(getattr(_binding, "RE2", None), "Anchor", None)
    if low is not None and anchors is not None:
        match = low.Match
        anchor = anchors.ANCHOR_START if anchored else anchors.UNANCHORED

        def spans(text: bytes, pos: int, endpos: int) -> list[tuple[int, int]] | None:
            if pos > endpos:
                return None
            found: list[tuple[int, int]] = match(anchor, text, pos, endpos)
            return None if found[0][0] < 0 else found
        return spans
    public = regex.match if anchored else regex.search
    groups = regex.groups

    def public_spans(text: bytes, pos: int, endpos: int) -> list[tuple[int, int]] | None:
        found = public(text, pos, endpos)
        return None if found is None else [found.span(i) for i in range(groups + 1)]
    return public_spans


def jwt_ok(token: bytes) -> bool:
    """Whether the first part of ``token`` is base64url JSON with an ``alg``."""
    header = token.split(b".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + b"=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


_STARS = bytes.maketrans(
    bytes(range(256)),
    bytes(b if b in b" \t\r\n" else 0 if 0x80 <= b < 0xC0 else 0x2A for b in range(256)))


def stars(visible: bytes) -> bytes:
    """One ``*`` per character except whitespace; UTF-8 continuation bytes become NUL, which the
    caller drops (visible text never holds NUL: it is stripped as a control)."""
    return visible.translate(_STARS)


def last_four(visible: bytes) -> bytes:
    """Stars except the last four alphanumerics and any separators (``**** **** **** 1111``)."""
    out = bytearray(stars(visible))
    kept = 0
    for index in range(len(visible) - 1, -1, -1):
        char = visible[index]
        if char in b" -":
            out[index] = char
        elif kept < 4 and (48 <= char <= 57 or 65 <= char <= 90 or 97 <= char <= 122):
            out[index] = char
            kept += 1
    return bytes(out)


class Scanner:
    """Every enabled detector in one RE2 program, plus the allowlist."""

    def __init__(self, detectors: Iterable[Detector] = BUILTIN,
                 allow: Iterable[AllowRule] = ()) -> None:
        self.detectors = tuple(detectors)
        parts, tails = [], []
        for index, det in enumerate(self.detectors):
            pattern = SECRET_GROUP.sub(rf"(?P<\g<1>_{index}>", det.pattern)
            parts.append(f"(?P<d{index}>{pattern})")
            tails.append(f"(?:{det.tail})")
        self.regex = re2.compile("|".join(parts).encode("utf-8"), options()) if parts else None
        # The same without groups finds where a match is (DFA only, no submatch engine over the
        # whole chunk); the grouped program then runs on that span only.
        plain = "|".join(f"(?:{re.sub(r'[(][?]P<[^>]+>', '(?:', d.pattern)})"
                         for d in self.detectors)
        self.find = re2.compile(plain.encode("utf-8"), options()) if parts else None
        self.tail = re2.compile("|".join(tails).encode("utf-8"), options()) if tails else None
        names = {name.decode(): number for name, number in self.regex.groupindex.items()} \
            if self.regex else {}
        self.outer = {names[f"d{i}"]: det for i, det in enumerate(self.detectors)}
        self.secret_groups: dict[int, list[int]] = {
            names[f"d{i}"]: sorted(number for name, number in names.items()
                                   if name.startswith("secret") and name.endswith(f"_{i}"))
            for i in range(len(self.detectors))}
        self.allow_literals = frozenset(a.literal for a in allow if a.literal is not None)
        allow_patterns = [a.pattern for a in allow if a.pattern is not None]
        self.allow_regex = (re2.compile("|".join(f"(?:{p})" for p in allow_patterns)
                                        .encode("utf-8"), options()) if allow_patterns else None)
        self.has_private_key = any(d.name == PRIVATE_KEY for d in self.detectors)
        patterns = tuple(d.pattern for d in self.detectors)
        self.prefilter = prefilter.database(patterns, raw=False)
        self.raw_prefilter = prefilter.database(patterns, raw=True)
        self._find = spans_of(self.find, anchored=False) if self.find else None
        self._groups = spans_of(self.regex, anchored=True) if self.regex else None
        self._tail = spans_of(self.tail, anchored=False) if self.tail else None
        # Per detector (in order): its outer group and its secret groups.
        self._layout = [(group, self.outer[group], self.secret_groups[group])
                        for group in sorted(self.outer)]

    def maybe(self, visible: bytes) -> bool:
        """False when no detector can match in ``visible`` (a superset test: True may be wrong,
        False never is). Without Hyperscan always True."""
        if self.prefilter is None or self.regex is None:
            return self.regex is not None
        return prefilter.matches(self.prefilter, visible)

    def clean(self, raw: bytes) -> bool:
        """True when ``raw`` holds no escape sequence or control byte (its visible text is
        itself) and no detector can match in it: the fast path. Without Hyperscan never."""
        # An ESC, first, by memchr: Hyperscan took 0.2 ms per MB to report the first control
        # byte of binary output.
        return (self.raw_prefilter is not None and b"\x1b" not in raw
                and not prefilter.matches(self.raw_prefilter, raw))

    def search(self, visible: bytes, pos: int) -> tuple[int, int, Hit | None] | None:
        """The next candidate at or after ``pos``: (match start, match end, hit or None).

        The hit is None when the candidate failed its validator or is allowlisted.
        """
        assert self._find is not None and self._groups is not None
        where = self._find(visible, pos, len(visible))
        if where is None:
            return None
        found, found_end = where[0]
        spans = self._groups(visible, found, found_end)
        if spans is None:  # pragma: no cover - both programs match the same span
            return found, found + 1, None
        _, det, secrets = next(item for item in self._layout if spans[item[0]][0] >= 0)
        start, end = spans[0]
        mask_start, mask_end = start, end
        for secret in secrets:
            if spans[secret][0] >= 0:
                mask_start, mask_end = spans[secret]
                break
        value = visible[mask_start:mask_end]
        if not self._valid(det, value) or self._allowed(det, value, visible[start:end]):
            return start, end, None
        return start, end, Hit(mask_start, mask_end, det)

    def _valid(self, det: Detector, value: bytes) -> bool:
        if det.validator is Validator.LUHN:
            digits = value.translate(None, _NOT_DIGITS)
            return 12 <= len(digits) <= 19 and luhn_ok(digits)
        if det.validator is Validator.JWT:
            return jwt_ok(value)
        return True

    def _allowed(self, det: Detector, value: bytes, whole: bytes) -> bool:
        if det.allow_example and b"EXAMPLE" in value:
            return True
        if value in self.allow_literals or whole in self.allow_literals:
            return True
        return self.allow_regex is not None and self.allow_regex.search(whole) is not None

    def tail_start(self, visible: bytes, pos: int, end: int) -> int:
        """Where a possible incomplete secret ending at ``end`` starts (``end`` if none)."""
        if self.tail is None:
            return end
        # A slice, not endpos: RE2 judges $ against the whole text, not endpos. One byte before
        # the window is kept as context for \b.
        first = max(pos, end - TAIL_WINDOW)
        base = max(first - 1, 0)
        window = visible[base:end]
        assert self._tail is not None
        found = self._tail(window, first - base, len(window))
        return end if found is None else base + found[0][0]

    def iter_hits(self, visible: bytes) -> Iterator[Hit]:
        """Every hit in a complete text (no stream state; private keys need ``mask_text``)."""
        pos = 0
        while self.regex is not None and pos < len(visible):
            found = self.search(visible, pos)
            if found is None:
                return
            start, end, hit = found
            if hit is not None:
                yield hit
            pos = end if hit is not None and end > start else start + 1


def replacement(det: Detector, visible: bytes) -> bytes:
    """The mask for ``visible`` (NUL bytes mark UTF-8 continuation bytes to drop)."""
    if det.replacement is Replacement.LAST4:
        return last_four(visible)
    return stars(visible)
