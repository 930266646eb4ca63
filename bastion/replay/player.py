"""The interactive player: a recording's screens in the analyst's terminal, under their keys.

Keys: space pause/resume, ``.`` one event (paused), ``+``/``-`` speed, left/right seek 10 s,
``n``/``p`` next/previous command, ``q`` (or Ctrl-C) quit. The terminal is put in raw mode on the
alternate screen and restored on every way out (``q``, end of input, an exception, SIGINT,
SIGTERM, SIGHUP): ``terminal_mode`` restores it in a ``finally`` and the signals are turned into
exceptions that unwind through it.

The player draws from the emulated screen (``render``), never the recorded bytes. While idle it
extends the keyframe index a little at a time, so later seeks only restore a keyframe.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import termios
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType

from bastion.replay import render
from bastion.replay.cast import Event
from bastion.replay.sanitize import one_line, visible_keys
from bastion.replay.screens import Timeline
from bastion.replay.session import Command
from bastion.replay.transcript import clock

SEEK_STEP = 10.0
SPEEDS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
TICK = 0.25  # seconds: status refresh and follow polling while waiting
INDEX_SLICE = 0.03  # seconds of keyframe indexing between looks at the keyboard
INPUT_SHOWN = 200  # characters of recent keystrokes kept for --input
INPUT_LOOKBACK = 5000  # events looked back through for them


class _Stop(Exception):
    """A signal asked the player to stop (the terminal is restored on the way out)."""


@contextlib.contextmanager
def terminal_mode(fd_in: int, fd_out: int) -> Iterator[None]:
    """Raw input, alternate screen, hidden cursor; everything restored on exit."""
    saved = termios.tcgetattr(fd_in)
    previous: dict[signal.Signals, object] = {}

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise _Stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        previous[sig] = signal.signal(sig, stop)
    try:
        tty.setraw(fd_in, termios.TCSANOW)
        _write(fd_out, render.ENTER)
        yield
    finally:
        try:
            _write(fd_out, render.LEAVE)
        finally:
            termios.tcsetattr(fd_in, termios.TCSAFLUSH, saved)
            for sig, handler in previous.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8", "replace")
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _terminal_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
        return max(size.columns, 10), max(size.lines, 3)
    except OSError:
        return 80, 24


KEY_NAMES = {"\x1b[C": "right", "\x1bOC": "right", "\x1b[D": "left", "\x1bOD": "left",
             "\x03": "q", "\x1c": "q", "\x04": "q"}


def split_keys(data: str) -> list[str]:
    """Keys from one read: arrow sequences kept whole, every other byte one key."""
    keys = []
    i = 0
    while i < len(data):
        if data[i] == "\x1b" and data[i + 1:i + 2] in ("[", "O") and i + 2 < len(data):
            seq = data[i:i + 3]
            keys.append(KEY_NAMES.get(seq, seq))
            i += 3
            continue
        keys.append(KEY_NAMES.get(data[i], data[i]))
        i += 1
    return keys


@dataclass
class PlayerOptions:
    """How to play."""

    speed: float = 1.0
    idle_limit: float | None = None
    start_at: float = 0.0
    paused: bool = False
    show_input: bool = False
    warning: str = ""  # kept on the status line (e.g. not verified)
    title: str = ""
    follow: bool = False  # a live session: new events arrive through ``poll``
    poll: Callable[[], tuple[list[Event], bool]] | None = None  # -> (new events, ended)
    commands: list[Command] = field(default_factory=list)


class Player:
    """Plays one timeline in a terminal."""

    def __init__(self, timeline: Timeline, options: PlayerOptions, fd_in: int,
                 fd_out: int) -> None:
        self.timeline = timeline
        self.opt = options
        self.fd_in, self.fd_out = fd_in, fd_out
        self.speed = options.speed
        self.paused = options.paused
        self.ended = not options.follow
        self.emu, self.pos = timeline.emulator_at(options.start_at)
        self.t = options.start_at
        self.size = _terminal_size(fd_out)
        self._full = True
        self._resized = False
        self._cursor_row = 0

    @property
    def events(self) -> list[Event]:
        """The recording's events (growing while following)."""
        return self.timeline.events

    @property
    def duration(self) -> float:
        """Time of the last event known."""
        return self.events[-1].t if self.events else 0.0

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Play until the analyst quits."""
        previous = signal.signal(signal.SIGWINCH, self._winch)
        try:
            with terminal_mode(self.fd_in, self.fd_out):
                self._loop()
        except _Stop:
            pass
        finally:
            signal.signal(signal.SIGWINCH, previous)

    def _winch(self, _signum: int, _frame: FrameType | None) -> None:
        self._resized = True

    def _loop(self) -> None:
        while True:
            if self._resized:
                self._resized = False
                self.size = _terminal_size(self.fd_out)
                self._full = True
            self._draw()
            wait = self._wait_time()
            started = time.monotonic()
            data = self._read_keys(wait)
            self._advance(time.monotonic() - started)
            for key in split_keys(data):
                if not self._key(key):
                    return
            if self.opt.poll is not None:
                self._poll()

    def _wait_time(self) -> float:
        if self.paused or self.pos >= len(self.events):
            return TICK
        gap = self.events[self.pos].t - self.t
        if self.opt.idle_limit is not None:
            gap = min(gap, self.opt.idle_limit)
        return max(0.0, min(gap / self.speed, TICK))

    def _read_keys(self, timeout: float) -> str:
        """Wait up to ``timeout`` for keys; while waiting, extend the seek index in slices."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            indexing = self.timeline.indexed_fraction < 1.0
            if indexing and remaining > 0:
                self.timeline.index_some(min(INDEX_SLICE, remaining))
                remaining = 0.0  # only peek for keys between slices
            try:
                ready, _, _ = select.select([self.fd_in], [], [], max(remaining, 0.0))
            except InterruptedError:
                return ""
            if ready:
                data = os.read(self.fd_in, 64)
                if not data:
                    raise _Stop("end of input")
                return data.decode("utf-8", "replace")
            if time.monotonic() >= deadline:
                return ""

    def _advance(self, elapsed: float) -> None:
        """Move playback time on by ``elapsed`` real seconds and apply what is due."""
        if self.paused or self.pos >= len(self.events):
            return
        next_t = self.events[self.pos].t
        gap = next_t - self.t
        capped = gap if self.opt.idle_limit is None else min(gap, self.opt.idle_limit)
        step = elapsed * self.speed
        if step + 1e-9 >= capped:  # the next event is due (idle gaps shortened to the limit)
            self.t = next_t
        else:
            self.t += step
        self._apply_until(self.t)

    def _apply_until(self, t: float) -> None:
        events = self.events
        before = (self.emu.screen.cursor.y,)
        while self.pos < len(events) and events[self.pos].t <= t:
            self.emu.apply(events[self.pos])
            self.pos += 1
        self._mark_cursor(before[0])

    def _mark_cursor(self, old_row: int) -> None:
        screen = self.emu.screen
        if old_row < screen.lines:
            screen.dirty.add(old_row)
        screen.dirty.add(screen.cursor.y)

    def _poll(self) -> None:
        assert self.opt.poll is not None
        new, ended = self.opt.poll()
        if new:
            at_edge = self.pos >= len(self.events)
            self.timeline.extend(new)
            if at_edge and not self.paused:  # live: show new output as it comes
                self.t = self.duration
                self._apply_until(self.t)
        self.ended = ended

    # -- keys --------------------------------------------------------------------------------
    def _key(self, key: str) -> bool:
        if key == "q":
            return False
        if key == " ":
            self.paused = not self.paused
        elif key == ".":
            self.paused = True
            if self.pos < len(self.events):
                self.t = self.events[self.pos].t
                self._apply_until(self.t)
        elif key == "+":
            self.speed = next((s for s in SPEEDS if s > self.speed), self.speed)
        elif key == "-":
            self.speed = next((s for s in reversed(SPEEDS) if s < self.speed), self.speed)
        elif key == "right":
            self.seek(self.t + SEEK_STEP)
        elif key == "left":
            self.seek(self.t - SEEK_STEP)
        elif key == "n":
            later = [c.t for c in self.opt.commands if c.t > self.t + 1e-6]
            if later:
                self.seek(later[0])
        elif key == "p":
            earlier = [c.t for c in self.opt.commands if c.t < self.t - 1e-6]
            if earlier:
                self.seek(earlier[-1])
        return True

    def seek(self, t: float) -> None:
        """Show the screen at recording time ``t`` (clamped to the recording)."""
        t = max(0.0, min(t, self.duration))
        self.emu, self.pos = self.timeline.emulator_at(t)
        self.t = t
        self._full = True

    # -- drawing -----------------------------------------------------------------------------
    def _reserved_rows(self) -> int:
        return 2 if self.opt.show_input else 1

    def _draw(self) -> None:
        width, height = self.size
        screen = self.emu.screen
        rows_available = height - self._reserved_rows()
        out = []
        if self._full:
            out.append(render.clear())
            rows: set[int] | range = range(screen.lines)
            self._full = False
        else:
            rows = set(screen.dirty)
        if rows:
            out.append(render.draw_rows(screen, rows, width, rows_available))
        screen.dirty.clear()
        if self.opt.show_input:
            out.append(render.plain_line(height - 1, width, "keys: " + self._recent_input()))
        out.append(render.status_line(height, width, self.status()))
        _write(self.fd_out, "".join(out))

    def _recent_input(self) -> str:
        parts: list[str] = []
        size = 0
        for event in reversed(self.events[max(0, self.pos - INPUT_LOOKBACK):self.pos]):
            if event.code == "i":
                parts.append(event.data)
                size += len(event.data)
                if size >= INPUT_SHOWN:
                    break
        return visible_keys("".join(reversed(parts)))[-INPUT_SHOWN:]

    def current_command(self) -> str:
        """The last command line read at or before the playback time."""
        done = [c for c in self.opt.commands if c.t <= self.t]
        return done[-1].line if done else ""

    def status(self) -> str:
        """The status line's text: time, speed, state, command, warning (all sanitized)."""
        state = "PAUSED" if self.paused else "playing"
        if self.pos >= len(self.events):
            state = "END (q quits)" if self.ended else "LIVE"
        parts = [f"{clock(self.t)}/{clock(self.duration)}", f"x{self.speed:g}", state]
        command = self.current_command()
        if command:
            parts.append("$ " + one_line(command, 120))
        if self.opt.warning:
            parts.append("! " + one_line(self.opt.warning, 120))
        parts.append("[space . +/- <-/-> n/p q]")
        return " | ".join(parts)


def play(timeline: Timeline, options: PlayerOptions, fd_in: int, fd_out: int) -> None:
    """Play ``timeline`` in the terminal on ``fd_in``/``fd_out`` until the analyst quits."""
    Player(timeline, options, fd_in, fd_out).run()
