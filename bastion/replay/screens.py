"""Emulated screens of a recording at any moment, with a keyframe index for fast seeking.

Output goes through the sanitizer first and then into a pyte screen. The sanitizer emits only
whole escape sequences, so after every chunk pyte's parser is back in its ground state: a
keyframe then needs only a copy of the screen (pyte's parser is a generator and cannot be copied)
and of the sanitizer's small state. pyte interprets nothing that talks back to a terminal, and
the player draws from pyte's cells, so no recorded byte ever reaches the analyst's terminal.

``Timeline`` indexes lazily: keyframes are taken every ``KEYFRAME_SECONDS`` of recording time or
``KEYFRAME_BYTES`` of output, whichever comes first, as far as anything asked (or
``index_some`` was given time to go). A seek restores the nearest keyframe at or before the
moment and replays at most one keyframe interval of events: bounded work, whatever the length.
"""

from __future__ import annotations

import bisect
import copy
import time
from dataclasses import dataclass
from typing import Any

import pyte
from pyte.screens import StaticDefaultDict
from wcwidth import wcwidth

from bastion.replay.cast import Cast, Event, parse_size
from bastion.replay.sanitize import Mode, Sanitizer
from bastion.replay.terminal import TolerantScreen

KEYFRAME_SECONDS = 5.0
KEYFRAME_BYTES = 32 * 1024


class ReplayScreen(TolerantScreen):
    """A pyte screen that can be copied cheaply (for keyframes) and restored."""

    def snapshot(self) -> dict[str, Any]:
        """A copy of the whole screen state, independent of this screen."""
        state = dict(vars(self))
        state["buffer"] = {y: _copy_row(row) for y, row in self.buffer.items()}
        state["cursor"] = copy.copy(self.cursor)
        state["savepoints"] = [sp._replace(cursor=copy.copy(sp.cursor))
                               for sp in self.savepoints]
        state["mode"] = set(self.mode)
        state["tabstops"] = set(self.tabstops)
        state["dirty"] = set()
        return state

    @classmethod
    def restore(cls, state: dict[str, Any]) -> ReplayScreen:
        """A new screen in exactly the state of a snapshot (the snapshot stays usable)."""
        screen = cls(state["columns"], state["lines"])
        buffer = screen.buffer
        for key, value in state.items():
            if key not in ("buffer", "cursor", "savepoints", "mode", "tabstops", "dirty"):
                setattr(screen, key, value)
        screen.buffer = buffer
        buffer.clear()
        for y, row in state["buffer"].items():
            buffer[y] = _copy_row(row)
        screen.cursor = copy.copy(state["cursor"])
        screen.savepoints = [sp._replace(cursor=copy.copy(sp.cursor))
                             for sp in state["savepoints"]]
        screen.mode = set(state["mode"])
        screen.tabstops = set(state["tabstops"])
        screen.dirty = set(range(screen.lines))
        return screen


def _copy_row(row: StaticDefaultDict[int, Any]) -> StaticDefaultDict[int, Any]:
    new: StaticDefaultDict[int, Any] = StaticDefaultDict(row.default)
    new.update(row)
    return new


class Emulator:
    """A sanitizer feeding a pyte screen: the state of a terminal that replays a recording."""

    def __init__(self, width: int, height: int, *, screen: ReplayScreen | None = None,
                 sanitizer: Sanitizer | None = None) -> None:
        self.screen = screen or ReplayScreen(width, height)
        self.sanitizer = sanitizer or Sanitizer(Mode.TERMINAL)
        self.stream = pyte.Stream(self.screen)

    def apply(self, event: Event) -> None:
        """Apply one event (output and resizes change the screen; the rest do not)."""
        if event.code == "o":
            clean = self.sanitizer.feed(event.data)
            if clean:
                self.stream.feed(clean)
        elif event.code == "r":
            width, height = parse_size(event.data)
            self.screen.resize(lines=height, columns=width)

    def snapshot(self) -> tuple[dict[str, Any], Sanitizer]:
        """Copy of the whole state (screen and sanitizer)."""
        return self.screen.snapshot(), self.sanitizer.copy()

    @classmethod
    def restore(cls, state: tuple[dict[str, Any], Sanitizer]) -> Emulator:
        """A new emulator in the state of a snapshot."""
        screen_state, sanitizer = state
        screen = ReplayScreen.restore(screen_state)
        return cls(screen.columns, screen.lines, screen=screen, sanitizer=sanitizer.copy())

    def lines(self) -> list[str]:
        """The screen as text rows, trailing blanks removed, only printable characters."""
        return [printable(line).rstrip() for line in text_rows(self.screen)]


def text_rows(screen: pyte.Screen) -> list[str]:
    """The screen's rows as text. Not pyte's ``display``: a wide character partly overwritten
    (a recording can do that on purpose) leaves an empty cell that makes it raise."""
    rows = []
    for y in range(screen.lines):
        line, out, stub = screen.buffer[y], [], False
        for x in range(screen.columns):
            data = line[x].data
            if stub:  # the second cell of a wide character
                stub = False
                continue
            if not data:
                continue
            out.append(data)
            stub = wcwidth(data[0]) == 2
        rows.append("".join(out))
    return rows


def printable(text: str) -> str:
    """Text with every non-printable character shown as ``?`` (cells never hold controls, but
    what reaches a terminal is checked anyway)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else "?" for ch in text)


@dataclass
class _Keyframe:
    index: int  # events[:index] are applied
    t: float  # time of the last applied event (0 before any)
    state: tuple[dict[str, Any], Sanitizer]


class Timeline:
    """Random access to the screen of one recording at any time."""

    def __init__(self, cast: Cast, *, every_seconds: float = KEYFRAME_SECONDS,
                 every_bytes: int = KEYFRAME_BYTES) -> None:
        self.cast = cast
        self.events = cast.events
        self.times = [e.t for e in cast.events]
        self.every_seconds = every_seconds
        self.every_bytes = every_bytes
        first = Emulator(cast.width, cast.height)
        self._keyframes = [_Keyframe(0, 0.0, first.snapshot())]
        self._key_index = [0]  # event index of each keyframe, for bisect
        self._indexer = first  # continues where the index ends
        self._indexed = 0  # events the indexer has applied
        self._since_bytes = 0
        self._since_t = 0.0
        self._min_bytes = 0  # output needed before the next keyframe (see index_until)

    @property
    def indexed_fraction(self) -> float:
        """How much of the recording the index covers (1.0 when complete)."""
        return 1.0 if not self.events else self._indexed / len(self.events)

    def extend(self, events: list[Event]) -> None:
        """Append events of a recording still being written (follow mode)."""
        self.events.extend(events)
        self.times.extend(e.t for e in events)

    def count_until(self, t: float) -> int:
        """How many events happen at or before ``t``."""
        return bisect.bisect_right(self.times, t)

    def index_until(self, count: int, deadline: float | None = None) -> None:
        """Extend the keyframe index until ``count`` events are covered (or the deadline)."""
        emu = self._indexer
        events = self.events
        count = min(count, len(events))
        while self._indexed < count:
            event = events[self._indexed]
            emu.apply(event)
            self._indexed += 1
            if event.code == "o":
                self._since_bytes += len(event.data)
            # A keyframe copies every filled cell: on a large screen one costs megabytes, so
            # it also waits for a byte of output per cell of the last one (a recording that
            # fills a 2000x1000 screen, then sends a byte every few seconds, must not get a
            # copy per byte); keyframe memory stays in proportion to the recording.
            if self._since_bytes >= self._min_bytes and (
                    self._since_bytes >= self.every_bytes
                    or event.t - self._since_t >= self.every_seconds):
                state = emu.snapshot()
                self._keyframes.append(_Keyframe(self._indexed, event.t, state))
                self._key_index.append(self._indexed)
                self._since_bytes, self._since_t = 0, event.t
                self._min_bytes = sum(map(len, state[0]["buffer"].values()))
            if deadline is not None and self._indexed % 64 == 0 \
                    and time.monotonic() > deadline:
                return

    def index_some(self, seconds: float) -> None:
        """Spend up to ``seconds`` extending the index (the player calls it when idle)."""
        self.index_until(len(self.events), time.monotonic() + seconds)

    def emulator_at_count(self, count: int) -> Emulator:
        """A new emulator with the first ``count`` events applied."""
        count = max(0, min(count, len(self.events)))
        self.index_until(count)
        k = bisect.bisect_right(self._key_index, count) - 1
        frame = self._keyframes[k]
        emu = Emulator.restore(frame.state)
        for event in self.events[frame.index:count]:
            emu.apply(event)
        return emu

    def emulator_at(self, t: float) -> tuple[Emulator, int]:
        """The emulator at time ``t`` (every event at or before it applied) and that count."""
        count = self.count_until(t)
        return self.emulator_at_count(count), count
