"""Follow a session while it is recorded: tail its asciicast as the bastion flushes it.

The server hands recorded output to the OS at least once a second (the spool's upkeep flush),
so reading the file every ``TICK`` keeps the viewer within about a second and a half of the
user. A torn last line (a flush in the middle of an event) waits for its end. The session is
over once session.json leaves the "active" state and nothing more arrives.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from bastion.errors import ReplayError
from bastion.evidence.sources import read_regular
from bastion.recording.layout import SESSION_FILE, Part, parse_recording_name
from bastion.replay.cast import COMMAND_PREFIX, Cast, CastParser, Event
from bastion.replay.session import Command

WAIT_FOR_CHANNEL = 30.0  # seconds to wait for a session's first terminal channel
_READ = 1 << 20


def _session_state(folder: Path) -> str | None:
    try:
        doc = json.loads(read_regular(folder / SESSION_FILE))
    except (OSError, ValueError, RecursionError):
        return None
    state = doc.get("state") if isinstance(doc, dict) else None
    return state if isinstance(state, str) else None


def _cast_files(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for path in folder.glob("*.cast"):
        parsed = parse_recording_name(path.name)
        if parsed is not None and parsed.part is Part.CAST and not path.is_symlink():
            found.append((parsed.number, path))
    return sorted(found)


def _has_pty(path: Path) -> bool:
    try:
        header = json.loads(read_regular(path, 1 << 20).partition(b"\n")[0])
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(header, dict) and isinstance(header.get("term"), dict)


class CastFollower:
    """Reads a growing asciicast from where it left off."""

    def __init__(self, folder: Path, path: Path) -> None:
        self.folder = folder
        self.path = path
        self.commands: list[Command] = []
        self._parser = CastParser(str(path))
        self._offset = 0
        self._number = parse_recording_name(path.name).number  # type: ignore[union-attr]

    @classmethod
    def wait_for_channel(cls, folder: Path, channel: int | None,
                         timeout: float = WAIT_FOR_CHANNEL) -> CastFollower:
        """Wait until the session has the channel's recording (the first pty one by default)."""
        deadline = time.monotonic() + timeout
        while True:
            casts = _cast_files(folder)
            if channel is not None:
                chosen = [p for n, p in casts if n == channel]
            else:
                chosen = [p for _, p in casts if _has_pty(p)][:1]
            if chosen:
                return cls(folder, chosen[0])
            if _session_state(folder) != "active":
                raise ReplayError(f"{folder.name}: the session ended without a terminal "
                                  "channel to follow; use replay without --follow")
            if time.monotonic() > deadline:
                raise ReplayError(f"{folder.name}: no terminal channel appeared in "
                                  f"{timeout:.0f}s")
            time.sleep(0.2)

    def _read_new(self) -> list[Event]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise ReplayError(f"{self.path}: cannot read: {exc.strerror}") from None
        events: list[Event] = []
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO would never end
                raise ReplayError(f"{self.path}: cannot read: not a regular file")
            while chunk := os.pread(fd, _READ, self._offset):
                self._offset += len(chunk)
                events.extend(self._parser.feed(chunk))
        finally:
            os.close(fd)
        for event in events:
            if event.code == "m" and event.data.startswith(COMMAND_PREFIX):
                self.commands.append(Command(self._number, event.t,
                                             event.data[len(COMMAND_PREFIX):]))
        return events

    def initial(self) -> Cast:
        """Everything recorded so far."""
        deadline = time.monotonic() + WAIT_FOR_CHANNEL
        events = self._read_new()
        while self._parser.header is None:  # created, header not flushed yet
            if time.monotonic() > deadline:
                raise ReplayError(f"{self.path}: no asciicast header")
            time.sleep(0.1)
            events += self._read_new()
        header = self._parser.header
        return Cast(where=str(self.path), width=header["width"], height=header["height"],
                    header=header, events=events)

    def poll(self) -> tuple[list[Event], bool]:
        """New events since the last call, and whether the session has ended."""
        ended = _session_state(self.folder) not in (None, "active")
        events = self._read_new()
        if ended and not events:
            events = self._parser.finish()
        return events, ended and not events
