"""Filters and matching for ``bastion sessions list/search``."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from bastion.errors import UsageError
from bastion.replay.catalog import Content, Summary

_RELATIVE = re.compile(r"(\d+)([smhdw])\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: dt.datetime) -> dt.datetime:
    """``7d``/``12h``/``30m``/``2w`` ago, or an ISO date or date-time (UTC if no zone)."""
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        return now - dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"time {text[:40]!r}: give 7d, 12h, 30m, 2w or an ISO date "
                         "(2026-05-01 or 2026-05-01T10:00:00Z)") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _start(summary: Summary) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(summary.start.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Filters:
    """What ``sessions list`` narrows by; None means any."""

    user: str | None = None
    target: str | None = None
    login: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    end_reason: str | None = None  # substring, case-insensitive
    running: frozenset[str] | None = None  # only these session ids (the running ones)

    def accept(self, s: Summary) -> bool:
        """Whether a session passes every filter."""
        if self.user is not None and s.user != self.user:
            return False
        if self.target is not None and s.target != self.target:
            return False
        if self.login is not None and s.login != self.login:
            return False
        if self.end_reason is not None and self.end_reason.lower() not in (
                f"{s.state} {s.end_reason}".lower()):
            return False
        if self.running is not None and s.session_id not in self.running:
            return False
        if self.since is not None or self.until is not None:
            start = _start(s)
            if start is None:
                return False
            if self.since is not None and start < self.since:
                return False
            if self.until is not None and start > self.until:
                return False
        return True


@dataclass(frozen=True)
class Hit:
    """Where a search matched: channel, seconds into it, the matching text (unsanitized)."""

    channel: int
    t: float
    text: str


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A search regex (UsageError if it does not compile)."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"bad regular expression {pattern[:60]!r}: {exc}") from None


def find(content: Content, kind: str, regex: re.Pattern[str]) -> Hit | None:
    """The first match of ``regex`` in the commands, output or input of a session."""
    if kind == "command":
        for channel, t, line in sorted(content.commands, key=lambda c: (c[1], c[0])):
            if regex.search(line):
                return Hit(channel, t, line)
        return None
    pieces = content.output if kind == "output" else content.input
    best: Hit | None = None
    for channel in sorted({p[0] for p in pieces}):
        mine = [p for p in pieces if p[0] == channel]
        text = "".join(p[2] for p in mine)
        match = regex.search(text)
        if match is None:
            continue
        offset, t = 0, mine[0][1]
        for _, piece_t, piece in mine:  # the piece the match starts in gives its time
            if offset + len(piece) > match.start():
                t = piece_t
                break
            offset += len(piece)
        hit = Hit(channel, t, match.group(0))
        if best is None or hit.t < best.t:
            best = hit
    return best
