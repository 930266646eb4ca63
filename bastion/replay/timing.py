"""Times typed by an analyst: ``90``, ``1:30``, ``01:02:03``, with optional fractions."""

from __future__ import annotations

import math
import re

from bastion.errors import UsageError

_PART = re.compile(r"\d+(\.\d+)?\Z")


def parse_time(text: str) -> float:
    """Seconds from ``SS``, ``MM:SS`` or ``HH:MM:SS`` (the last part may have a fraction)."""
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(_PART.match(p) for p in parts) \
            or any("." in p for p in parts[:-1]):
        raise UsageError(f"time {text[:40]!r}: give seconds, MM:SS or HH:MM:SS")
    values = [float(p) for p in parts]
    if any(v >= 60 for v in values[1:]) and len(values) > 1:
        raise UsageError(f"time {text[:40]!r}: minutes and seconds must be below 60")
    seconds = 0.0
    for value in values:
        seconds = seconds * 60 + value
    if not math.isfinite(seconds):
        raise UsageError(f"time {text[:40]!r} is out of range")
    return seconds
