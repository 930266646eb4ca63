"""The detectors compiled into one RE2 program: one linear-time pass finds every kind of secret.

Both engines are used, each for what it does best (measured in docs/masking.md, "Matching
engine"): Hyperscan in prefilter mode answers "can anything match in this chunk?" at about
3 GB/s, so most chunks never reach RE2; RE2 (``google-re2``) then finds the leftmost match of
one alternation of all detectors, with the capture group that says what to mask. Hyperscan alone
cannot do that part: no capture groups, every end offset reported through a Python callback, and
start-of-match mode refuses the bounded repeats the detectors use ("Pattern is too large").
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import re2

from bastion.masking.detectors import BUILTIN, PRIVATE_KEY, Detector, Replacement, Validator

hyperscan: Any
try:  # Hyperscan (x86-64 wheels): a 3 GB/s "could anything match here?" before RE2 runs
    import hyperscan
except ImportError:  # pragma: no cover - other platforms: RE2 alone, slower on bulk output
    hyperscan = None

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


def luhn_ok(digits: bytes) -> bool:
    """The Luhn check digit test of a payment card number (digits only)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = char - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


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
        self.prefilter = _prefilter(self.detectors)

    def maybe(self, visible: bytes) -> bool:
        """False when no detector can match in ``visible`` (a superset test: True may be wrong,
        False never is). Without Hyperscan always True."""
        if self.prefilter is None or self.regex is None:
            return self.regex is not None
        found: list[int] = []

        def on_match(*_args: object) -> bool:
            found.append(1)
            return True  # stop at the first: one is enough to run RE2

        with contextlib.suppress(hyperscan.ScanTerminated):
            self.prefilter.scan(visible, match_event_handler=on_match)
        return bool(found)

    def search(self, visible: bytes, pos: int) -> tuple[int, int, Hit | None] | None:
        """The next candidate at or after ``pos``: (match start, match end, hit or None).

        The hit is None when the candidate failed its validator or is allowlisted.
        """
        assert self.regex is not None and self.find is not None
        where = self.find.search(visible, pos)
        if where is None:
            return None
        match = self.regex.match(visible, where.start(), where.end())
        if match is None:  # pragma: no cover - both programs match the same span
            return where.start(), where.start() + 1, None
        index = match.lastindex
        if index not in self.outer:
            index = next(i for i in self.outer if match.start(i) >= 0)
        det = self.outer[index]
        start, end = match.span()
        mask_start, mask_end = start, end
        for group in self.secret_groups[index]:
            if match.start(group) >= 0:
                mask_start, mask_end = match.span(group)
                break
        value = visible[mask_start:mask_end]
        whole = visible[start:end]
        if not self._valid(det, value) or self._allowed(det, value, whole):
            return start, end, None
        return start, end, Hit(mask_start, mask_end, det)

    def _valid(self, det: Detector, value: bytes) -> bool:
        if det.validator is Validator.LUHN:
            digits = bytes(c for c in value if 48 <= c <= 57)
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
        match = self.tail.search(visible[base:end], first - base)
        return end if match is None else base + match.start()

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


def _loosen(pattern: str) -> str:
    """A superset of ``pattern`` that Hyperscan compiles fast: no groups names, and ``{m,n}``
    repeats open-ended (``{1,256}`` classes took it seconds to compile)."""
    pattern = re.sub(r"\(\?P<\w+>", "(?:", pattern)
    return re.sub(r"(?<!\\)\{(\d+),\d+\}", r"{\1,}", pattern)


def _prefilter(detectors: tuple[Detector, ...]) -> Any:
    """A Hyperscan database of every detector in prefilter mode (may over-match, never under);
    None without Hyperscan or if it refuses a pattern (RE2 then scans every chunk)."""
    if hyperscan is None or not detectors:
        return None
    patterns = [_loosen(d.pattern).encode("utf-8") for d in detectors]
    flags = (hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_PREFILTER
             | hyperscan.HS_FLAG_ALLOWEMPTY)  # no UTF8 flag: exec streams are binary
    database = hyperscan.Database()
    try:
        database.compile(expressions=patterns, ids=list(range(len(patterns))),
                         elements=len(patterns), flags=[flags] * len(patterns))
    except hyperscan.error:
        return None
    return database


def replacement(det: Detector, visible: bytes) -> bytes:
    """The mask for ``visible`` (NUL bytes mark UTF-8 continuation bytes to drop)."""
    if det.replacement is Replacement.LAST4:
        return last_four(visible)
    return stars(visible)
