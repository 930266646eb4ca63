"""Read asciicast v2 recordings defensively: a hostile or damaged file is one clear error.

A recording is data from the target, stored by the bastion; replay treats it as untrusted. Every
field is checked for type and range before use, event times are clamped to never go backwards,
and whatever is wrong is reported as ``ReplayError`` naming the file and line, never a traceback.
Unknown event codes are skipped (the asciicast spec says players ignore them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from bastion.errors import ReplayError
from bastion.evidence.sources import open_regular
from bastion.recording.layout import is_event_time

MAX_LINE = 64 * 1024 * 1024  # one event line; the writer never makes one near this
# The relay clamps every window to this (bastion.relay.channels MAX_COLUMNS, MAX_ROWS; kept equal
# by a test): a recording claiming more is forged, and a screen that big would exhaust replay.
MAX_COLUMNS, MAX_ROWS = 2000, 1000
EVENT_CODES = frozenset("oimr")  # output, input, marker, resize
COMMAND_PREFIX = "command: "


class Event(NamedTuple):
    """One event: seconds since the channel opened, code (o, i, m, r), text."""

    t: float
    code: str
    data: str


@dataclass
class Cast:
    """A parsed recording: header fields we use plus every known event in order."""

    where: str
    width: int
    height: int
    header: dict[str, Any]
    events: list[Event] = field(default_factory=list)

    @property
    def duration(self) -> float:
        """Time of the last event (0 for an empty recording)."""
        return self.events[-1].t if self.events else 0.0

    @property
    def term(self) -> str | None:
        """The pty's terminal type, None for a channel without a pty."""
        term = self.header.get("term")
        kind = term.get("type") if isinstance(term, dict) else None
        return kind if isinstance(kind, str) else None

    @property
    def command(self) -> str | None:
        """The exec command of the channel (None for a shell)."""
        value = self.header.get("command")
        return value if isinstance(value, str) else None

    def markers(self) -> list[tuple[float, str]]:
        """Every marker as (time, label)."""
        return [(e.t, e.data) for e in self.events if e.code == "m"]

    def output_text(self) -> str:
        """All output joined (undecoded escapes and all)."""
        return "".join(e.data for e in self.events if e.code == "o")


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` -> (W, H); ValueError if malformed or out of range."""
    w, sep, h = text.partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or len(w) > 9 or len(h) > 9:
        raise ValueError(f"bad size {text[:32]!r}")
    width, height = int(w), int(h)
    if not (1 <= width <= MAX_COLUMNS and 1 <= height <= MAX_ROWS):
        raise ValueError(f"size {width}x{height} is out of range (the bastion records at most "
                         f"{MAX_COLUMNS}x{MAX_ROWS})")
    return width, height


def parse_header(line: bytes | str, where: str) -> dict[str, Any]:
    """The header object of line 1, checked."""
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):
        raise ReplayError(f"{where}: line 1 is not an asciicast header (not JSON)") from None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise ReplayError(f"{where}: not an asciicast v2 recording (header version is not 2)")
    for key, most in (("width", MAX_COLUMNS), ("height", MAX_ROWS)):
        value = header.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
            raise ReplayError(f"{where}: header {key} must be a number from 1 to {most} (the "
                              "largest window the bastion records)")
    return header


def parse_event(line: bytes | str, where: str, number: int) -> Event | None:
    """One event line; None for an unknown event code; ReplayError if malformed."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        raise ReplayError(f"{where}: line {number} is not valid JSON") from None
    if not (isinstance(value, list) and len(value) == 3):
        raise ReplayError(f"{where}: line {number} is not an event [time, code, data]")
    t, code, data = value
    if not is_event_time(t):
        raise ReplayError(f"{where}: line {number}: event time must be a number >= 0")
    if not isinstance(code, str) or not isinstance(data, str):
        raise ReplayError(f"{where}: line {number}: event code and data must be strings")
    if code not in EVENT_CODES:
        return None
    if code == "r":
        try:
            parse_size(data)
        except ValueError as exc:
            raise ReplayError(f"{where}: line {number}: {exc}") from None
    return Event(float(t), code, data)


class CastParser:
    """Incremental reader: feed bytes as they come (a file being written), get events."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.header: dict[str, Any] | None = None
        self._pending = b""
        self._line = 0
        self._last_t = 0.0

    def feed(self, data: bytes) -> list[Event]:
        """Parse every complete line in ``data`` (plus what was held); keep a torn tail."""
        buf = self._pending + data
        lines = buf.split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > MAX_LINE:
            raise ReplayError(f"{self.where}: line {self._line + 1} is longer than "
                              f"{MAX_LINE} bytes")
        return self._parse(lines)

    def finish(self) -> list[Event]:
        """Parse a last line without a newline (a file that simply ends)."""
        tail, self._pending = self._pending, b""
        if tail.strip():
            return self._parse([tail])
        return []

    def _parse(self, lines: Iterable[bytes]) -> list[Event]:
        events = []
        for raw in lines:
            self._line += 1
            if not raw.strip():
                continue
            if self.header is None:
                self.header = parse_header(raw, self.where)
                continue
            event = parse_event(raw, self.where, self._line)
            if event is None:
                continue
            if event.t < self._last_t:  # never backwards: a clock step cannot reorder replay
                event = event._replace(t=self._last_t)
            self._last_t = event.t
            events.append(event)
        return events


def iter_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """A file's bytes in chunks (ReplayError if it cannot be read)."""
    try:
        with open_regular(path) as fh:  # never a FIFO or a device: replay would wait on it
            while chunk := fh.read(size):
                yield chunk
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror or exc}") from None


def read_cast(path: Path) -> Cast:
    """Parse a whole recording file."""
    return parse_cast_chunks(iter_chunks(path), str(path))


def parse_cast_chunks(chunks: Iterable[bytes], where: str) -> Cast:
    """Parse a recording given as byte chunks."""
    parser = CastParser(where)
    events: list[Event] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.finish())
    if parser.header is None:
        raise ReplayError(f"{where}: empty recording (no asciicast header)")
    return Cast(where=where, width=parser.header["width"], height=parser.header["height"],
                header=parser.header, events=events)
