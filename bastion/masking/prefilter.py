"""The Hyperscan prefilters: "can any detector match here?" answered at about a gigabyte per
second, so that most bytes never reach RE2 or the escape-sequence stripping.

Two databases per set of detectors, each detector loosened into a superset (a True may be wrong,
a False never is):

- ``visible``: over the visible text (escape sequences stripped), in front of RE2.
- ``raw``: over the raw bytes, with one more pattern: any escape or control byte (what
  ``escapes.strip`` removes). A chunk of raw output it finds nothing in has no escape sequence to
  strip (its visible text is itself) and no detector can match in it: the stream passes it on
  without further per-byte work (``StreamMasker``, the fast path). Any match sends the chunk down
  the full path: strip, the visible database, then RE2.

Measured before choosing this (docs/masking.md, "Performance"): patterns rewritten to allow an
escape sequence between any two characters, so that coloured output could take the fast path
too, scanned 10 to 30 times slower than stripping and scanning (no literal is left for Hyperscan
to look for), so coloured output takes the full path. One database for both uses scanned binary
output three times slower (the escape pattern keeps firing on the lone ESC bytes left visible).
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import Any

hyperscan: Any
try:  # Hyperscan (x86-64 wheels); without it RE2 alone scans every chunk
    import hyperscan
except ImportError:  # pragma: no cover - other platforms: RE2 alone, slower on bulk output
    hyperscan = None

# ESC and every control byte but tab, line feed and carriage return: the bytes that start what
# escapes.strip removes.
ESCAPE_OR_CONTROL = rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"


def loosen(pattern: str) -> str:
    """A superset of ``pattern`` that Hyperscan compiles fast: no groups names, and ``{m,n}``
    repeats open-ended (``{1,256}`` classes took it seconds to compile)."""
    pattern = re.sub(r"\(\?P<\w+>", "(?:", pattern)
    return re.sub(r"(?<!\\)\{(\d+),\d+\}", r"{\1,}", pattern)


@functools.lru_cache(maxsize=64)
def database(patterns: tuple[str, ...], *, raw: bool) -> Any:
    """A Hyperscan block-mode database of the loosened ``patterns`` (``raw``: and
    ESCAPE_OR_CONTROL), in prefilter mode; None without Hyperscan or if it refuses a pattern
    (the caller then takes the full path for every chunk). Kept per set of detectors: compiling
    takes about 45 ms. A database scans in one thread at a time (its scratch space is its own):
    masking runs on the event loop."""
    expressions = [loosen(p).encode("utf-8") for p in patterns]
    if hyperscan is None or not expressions:
        return None
    if raw:
        expressions.append(ESCAPE_OR_CONTROL)
    flags = (hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_PREFILTER
             | hyperscan.HS_FLAG_ALLOWEMPTY)  # no UTF8 flag: exec streams are binary
    compiled = hyperscan.Database()
    try:
        compiled.compile(expressions=expressions, ids=list(range(len(expressions))),
                         elements=len(expressions), flags=[flags] * len(expressions))
    except hyperscan.error:
        return None
    return compiled


def matches(compiled: Any, data: bytes) -> bool:
    """Whether any pattern of ``compiled`` matches in ``data`` (the scan stops at the first)."""
    found: list[int] = []

    def on_match(*_args: object) -> bool:
        found.append(1)
        return True  # stop: one is enough

    with contextlib.suppress(hyperscan.ScanTerminated):
        compiled.scan(data, match_event_handler=on_match)
    return bool(found)
