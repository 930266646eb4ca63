"""Crash recovery of one session folder that a killed server left "active".

After SIGKILL the OS still holds everything the writers handed it (at most the last flush
interval, 1 s, was still in their buffers and is lost). Recovery closes every recording at its
last complete record and marks the session ``interrupted``:

- a cast: a torn last line is dropped and an ``interrupted`` marker appended (asciicast.py).
  Every line is checked; an invalid line *before* the last valid one cannot come from a crash
  (the writer appends whole lines), so it is kept as found and the session is sealed ``damaged``
  with the file and line numbers in ``recording_errors``.
- streams: the timing file is cut after its last complete line. The stream files are evidence
  as they are: bytes on disk that no timing line counts yet (the writer hands streams to the OS
  before the timing lines that count them) get one more timing line, ``<code> 0.000000 <n>``, at
  the time of the last line; a stream shorter than its timing says (the OS lost data: power
  failure, not a crash) has its timing lines cut to the bytes present, with a note. A garbage
  line in the middle of a timing file makes the session ``damaged`` too.

session.json then gets the end (the newest file's mtime), the state, every recording file in
``recordings`` and, for schema 2, each channel's ``closed`` time and an ``interrupted`` marker on
stream channels.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.errors import RecordingError
from bastion.fsutil import write_atomic
from bastion.recording.asciicast import INTERRUPTED, close_interrupted
from bastion.recording.durable import FILE_MODE, rfc3339, write_json_atomic
from bastion.recording.layout import (
    SESSION_FILE,
    STREAM_PARTS,
    TIMING_CODES,
    ChannelKind,
    Part,
    RecordingName,
    SessionState,
    is_event_time,
    parse_recording_name,
    recording_name,
)

log = logging.getLogger("bastion.recording")

# Digits bounded: a chunk or a delay never has 19, and int() of thousands of digits refuses.
_TIMING_LINE = re.compile(rb"([IOE]) ([0-9]{1,18})\.([0-9]{6}) ([0-9]{1,18})\Z")
_CODE_PART = {code: part for part, code in TIMING_CODES.items()}
_PART_ORDER = {part: index for index, part in enumerate(Part)}
FALLBACK_SIZE = (80, 24)


@dataclass
class RecoveryResult:
    """What recovering one session did."""

    path: Path
    state: SessionState
    problems: list[str] = field(default_factory=list)  # also in session.json recording_errors


@dataclass
class _TimingLine:
    part: Part
    delay_us: int
    size: int

    def encode(self) -> bytes:
        seconds, micros = divmod(self.delay_us, 1_000_000)
        return b"%s %d.%06d %d\n" % (TIMING_CODES[self.part], seconds, micros, self.size)


def _read_timing(path: Path) -> tuple[list[_TimingLine], list[int]]:
    """The complete valid lines of a timing file, and the numbers of invalid ones before the
    last valid line (a torn tail is not counted)."""
    data = path.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]  # a last line without its newline is torn
    lines: list[_TimingLine] = []
    bad: list[int] = []
    pending: list[int] = []
    for number, raw in enumerate(complete.split(b"\n")[:-1], start=1):
        m = _TIMING_LINE.match(raw)
        if m is None:
            pending.append(number)
            continue
        bad += pending
        pending = []
        lines.append(_TimingLine(_CODE_PART[m.group(1)],
                                 int(m.group(2)) * 1_000_000 + int(m.group(3)), int(m.group(4))))
    return lines, bad


def _fit_timing(lines: list[_TimingLine], sizes: dict[Part, int],
                notes: list[str], name: str) -> list[_TimingLine]:
    """Make the timing count exactly the bytes of each stream file."""
    counted = dict.fromkeys(STREAM_PARTS, 0)
    fitted: list[_TimingLine] = []
    for line in lines:
        room = sizes[line.part] - counted[line.part]
        if room <= 0:
            continue
        size = min(line.size, room)
        counted[line.part] += size
        fitted.append(_TimingLine(line.part, line.delay_us, size))
    for part in STREAM_PARTS:
        claimed = sum(line.size for line in lines if line.part is part)
        if claimed > sizes[part]:
            notes.append(f"{name}: timing counted {claimed - sizes[part]} {part.value} bytes "
                         "the stream file does not hold (lost before reaching the disk)")
        if sizes[part] > counted[part]:
            fitted.append(_TimingLine(part, 0, sizes[part] - counted[part]))
    return fitted


def _repair_streams(path: Path, number: int, kind: ChannelKind, damaged: list[str],
                    notes: list[str]) -> list[str]:
    """Close one stream channel; return its file names."""
    names = {part: recording_name(number, kind, part) for part in (*STREAM_PARTS, Part.TIMING)}
    for name in names.values():  # a crash while the files were being created
        target = path / name
        if not target.exists():
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
            os.close(fd)
    timing_path = path / names[Part.TIMING]
    lines, bad = _read_timing(timing_path)
    if bad:
        damaged.append(f"{timing_path.name}: invalid lines {_numbers(bad)} (kept as found)")
    sizes = {part: (path / names[part]).stat().st_size for part in STREAM_PARTS}
    fitted = lines if bad else _fit_timing(lines, sizes, notes, timing_path.name)
    if not bad:
        data = b"".join(line.encode() for line in fitted)
        if data != timing_path.read_bytes():
            write_atomic(timing_path, data, FILE_MODE)
    return list(names.values())


def _numbers(values: Iterable[int]) -> str:
    items = list(values)
    shown = ", ".join(str(v) for v in items[:20])
    return shown + (f" and {len(items) - 20} more" if len(items) > 20 else "")


def _channels(path: Path) -> dict[tuple[int, ChannelKind], set[Part]]:
    found: dict[tuple[int, ChannelKind], set[Part]] = {}
    for item in path.iterdir():
        parsed: RecordingName | None = parse_recording_name(item.name)
        if parsed is None or item.is_symlink() or not item.is_file():
            continue
        found.setdefault((parsed.number, parsed.kind), set()).add(parsed.part)
    return found


def recover_session(path: Path) -> RecoveryResult | None:
    """Close one session a crash left active; None if it was not active. RecordingError if its
    session.json is missing or damaged; OSError on I/O failures."""
    meta_path = path / SESSION_FILE
    try:
        doc = json.loads(meta_path.read_bytes())
    except FileNotFoundError:
        raise RecordingError(f"cannot recover {path}: no {SESSION_FILE}") from None
    except (ValueError, RecursionError) as exc:
        raise RecordingError(f"cannot recover {path}: {SESSION_FILE} is damaged: "
                             f"{exc if isinstance(exc, ValueError) else 'nested too deeply'}") \
            from None
    if not isinstance(doc, dict) or not isinstance(doc.get("state"), str):
        raise RecordingError(f"cannot recover {path}: {SESSION_FILE} has no state")
    if doc["state"] != SessionState.ACTIVE.value:
        return None
    channels = _channels(path)
    files = [path / recording_name(n, k, p) for (n, k), parts in channels.items() for p in parts]
    end = max((f.stat().st_mtime for f in files), default=meta_path.stat().st_mtime)
    fallback = {"version": 2, "width": FALLBACK_SIZE[0], "height": FALLBACK_SIZE[1],
                "timestamp": int(end),
                "bastion": {"session_id": doc.get("session_id", path.name), "recovered": True}}
    damaged: list[str] = []
    notes: list[str] = []
    recordings: list[str] = []
    for (number, kind), parts in sorted(channels.items(), key=lambda item: item[0][0]):
        if Part.CAST in parts:
            name = recording_name(number, kind, Part.CAST)
            bad = close_interrupted(path / name, fallback)
            if bad:
                damaged.append(f"{name}: invalid lines {_numbers(bad)} (kept as found)")
            recordings.append(name)
        if parts - {Part.CAST, Part.OPS}:
            recordings += _repair_streams(path, number, kind, damaged, notes)
        if Part.OPS in parts:
            recordings.append(recording_name(number, kind, Part.OPS))
    state = SessionState.DAMAGED if damaged else SessionState.INTERRUPTED
    previous = doc.get("recording_errors")
    errors = [e for e in previous if isinstance(e, str)] if isinstance(previous, list) else []
    doc.update(state=state.value, end=rfc3339(end), end_reason=INTERRUPTED,
               recordings=recordings)
    if damaged or notes or errors:
        doc["recording_errors"] = errors + damaged + notes
    if isinstance(doc.get("channels"), list):
        _close_channel_entries(doc, end)
    write_json_atomic(meta_path, doc)
    log.info("session %s was left active by a crash: marked %s", path.name, state.value)
    return RecoveryResult(path, state, damaged + notes)


def _close_channel_entries(doc: dict[str, Any], end: float) -> None:
    for entry in doc["channels"]:
        if not isinstance(entry, dict) or entry.get("closed") is not None:
            continue
        entry["closed"] = rfc3339(end)
        if isinstance(entry.get("markers"), list):
            times = [m["t"] for m in entry["markers"]
                     if isinstance(m, dict) and is_event_time(m.get("t"))]
            entry["markers"].append({"t": max(times, default=0), "label": INTERRUPTED})
