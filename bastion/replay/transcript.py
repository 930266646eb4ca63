"""Plain-text views of a session: the transcript (commands with their output) and the screen
at a moment. Everything is sanitized to plain text: no escape sequence of the recording is
ever printed."""

from __future__ import annotations

from collections.abc import Iterator

from bastion.replay.cast import Cast, Event
from bastion.replay.sanitize import Mode, Sanitizer, one_line, visible_keys
from bastion.replay.screens import Timeline
from bastion.replay.session import Channel, SessionFolder
from bastion.replay.streams import timed_events


def clock(t: float) -> str:
    """Seconds as ``MM:SS`` (``H:MM:SS`` past an hour)."""
    whole = int(t)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def describe(folder: SessionFolder) -> str:
    """One line about the session (user, target, login, start, state), sanitized."""
    return one_line(
        f"session {folder.session_id}: {folder.field('identity', 'name') or '?'} on "
        f"{folder.field('target', 'name') or '?'} as {folder.field('target', 'login') or '?'}, "
        f"started {folder.field('start') or '?'}, {folder.field('state') or '?'}"
        + (f" ({folder.field('end_reason')})" if folder.field("end_reason") else ""), 400)


def channel_events(folder: SessionFolder, chan: Channel) -> tuple[Cast | None, list[Event]]:
    """The channel's events, from its asciicast or its byte-exact streams."""
    if chan.cast_name is not None:
        cast = folder.read_cast(chan)
        return cast, cast.events
    events = timed_events(folder, chan) + [Event(t, "m", label) for t, label in chan.markers]
    return None, sorted(events, key=lambda e: e.t)  # stable: a marker after same-time data


def transcript(folder: SessionFolder, chan: Channel) -> Iterator[str]:
    """The channel's commands, each followed by the output until the next, as plain lines."""
    cast, events = channel_events(folder, chan)
    commands = folder.commands(chan, cast)
    yield f"# {describe(folder)}"
    yield f"# channel {one_line(chan.describe(), 400)}"
    plain = Sanitizer(Mode.PLAIN)
    pending: list[str] = []  # output since the last newline, in pieces: joined once (linear)
    queue = list(commands)
    for event in events:
        while queue and queue[0].t <= event.t:
            command = queue.pop(0)
            yield from _flush(pending)
            yield f"[{clock(command.t)}] $ {one_line(command.line, 2000)}"
        if event.code == "o":
            text = plain.feed(event.data)
            if "\n" in text:  # only the new text is searched
                done, _, rest = text.rpartition("\n")
                pending.append(done)
                yield from "".join(pending).split("\n")
                pending[:] = [rest] if rest else []
            elif text:
                pending.append(text)
        elif event.code == "i" and chan.pty is False and chan.cast_name is None:
            yield f"[{clock(event.t)}] stdin: {visible_keys(event.data)}"
        elif event.code == "m" and not event.data.startswith("command: "):
            yield from _flush(pending)
            yield f"[{clock(event.t)}] -- {one_line(event.data, 2000)}"
    yield from _flush(pending)
    for command in queue:
        yield f"[{clock(command.t)}] $ {one_line(command.line, 2000)}"
    if chan.exit_status is not None:
        yield f"# exit status {chan.exit_status}"
    elif chan.exit_signal is not None:
        yield f"# exit signal {one_line(chan.exit_signal, 40)}"


def _flush(pending: list[str]) -> Iterator[str]:
    """The lines of output held since the last newline (emptied)."""
    text = "".join(pending)
    pending.clear()
    return iter(text.splitlines())


def screen_at(cast: Cast, t: float) -> list[str]:
    """The screen at ``t`` seconds as text rows (trailing blank rows removed)."""
    emulator, _ = Timeline(cast).emulator_at(t)
    rows = emulator.lines()
    while rows and not rows[-1]:
        rows.pop()
    return rows
