"""The channel pipeline: ordered stages per direction between the user, the recorder and the target.

::

    user input    -> input stages  -> [input record stages]  -> recorder.input  -> target
    target output -> output stages -> [output record stages] -> recorder.output/stderr -> user

A stage is a small object that receives data with ``feed(data, stream)`` and passes it on with
``self.emit(data, stream)``: unchanged, changed (masking), later (a command held for approval) or
not at all (a denied command). ``end()`` is the end of the direction's data (the user's EOF, or the
target's); a stage holding data releases or drops it, then calls ``self.emit_end()``. Record
stages change only what is recorded (for example keystrokes typed at a password prompt), never
what is sent. A stage that must see both directions (the command catcher reads the target's echo)
is two stage objects sharing state, made by one factory.

Features plug in as a ``StageFactory``: called once per channel with its ``ChannelInfo`` and a
``StageContext``, it returns the channel's stages (or ``None`` when it has nothing to do for that
channel). Adding a feature is a new module with a factory, plus one line where the server lists
its factories; the relay's forwarding code does not change. With no stages, a direction's feed is
the sink itself: the hot path pays nothing for the seam.

Stages run on the event loop, inside asyncssh's callbacks: a stage must not block, and should do
no per-byte Python work it can avoid (slice, search with C-level methods, hand big chunks on).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bastion.config.model import Target
from bastion.recording.layout import ChannelKind

__all__ = ["ChannelInfo", "ChannelKind", "ChannelRecorder", "ChannelStages", "Pipeline",
           "Stage", "StageContext", "StageFactory", "Stream"]


class Stream(enum.IntEnum):
    """Which stream of a direction a chunk belongs to. Input is always ``DATA``."""

    DATA = 0  # user input; terminal output; an exec's stdout
    STDERR = 1  # an exec's stderr (never on a pty)


@dataclass(frozen=True)
class ChannelInfo:
    """Everything a stage factory may need to know about one relayed channel."""

    kind: ChannelKind
    pty: bool  # a terminal: input is keystrokes, output is a screen
    term: str | None
    width: int
    height: int
    command: str | None  # exec: the command as the user sent it
    subsystem: str | None
    session_id: str
    channel: int  # this channel's number in the session (1, 2, ...)
    user: str  # the identity's display name
    identity_key: str
    groups: tuple[str, ...]
    target: Target
    login: str
    email: str | None = None  # the identity's e-mail: rules may name people by it


class StageContext(Protocol):
    """What a stage may do besides passing data on; bound to one channel."""

    info: ChannelInfo

    def notify_user(self, text: str) -> None:
        """Show one line to the user (``bastion: text``, on stderr for exec); it is recorded."""

    def send_to_target(self, data: bytes) -> None:
        """Send bytes the user did not type (e.g. Ctrl-U) to the target; recorded as a marker."""

    def marker(self, label: str) -> None:
        """Add a marker to the channel's recording (``[t, "m", label]`` on a pty)."""

    def note_command(self, line: str, verdict: str, rule: str | None = None) -> None:
        """Record a command line read: recording marker, session.json ``commands``, audit event.

        ``line`` must already be masked: it is written to disk as given.
        """

    def audit(self, event: str, **fields: Any) -> None:
        """Emit an audit event with this channel's connection, session and user fields added."""

    def pause_input(self) -> None:
        """Stop reading the user's input (while a stage holds it); the SSH window then fills."""

    def resume_input(self) -> None:
        """Read the user's input again."""

    def end_channel(self, reason: str) -> None:
        """End this channel now, showing ``reason`` to the user (fail closed)."""


Emit = Callable[[bytes, Stream], None]


class Stage:
    """One step of a direction. The base class passes everything through unchanged."""

    emit: Emit  # the next stage's feed, or the direction's sink; set by the pipeline
    emit_end: Callable[[], None]  # the next stage's end, or the sink's
    ctx: StageContext

    def feed(self, data: bytes, stream: Stream) -> None:
        """Take one chunk; pass it on with ``self.emit`` (or hold, change, drop it)."""
        self.emit(data, stream)

    def end(self) -> None:
        """No more data in this direction: release or drop what is held, then ``emit_end()``."""
        self.emit_end()

    def resize(self, width: int, height: int) -> None:
        """The user's terminal changed size (called on every stage of both directions)."""

    def close(self) -> None:
        """The channel is gone: cancel timers and tasks; emit nothing more."""


@dataclass
class ChannelStages:
    """The stages one feature adds to one channel, each list in the order data passes it."""

    input: Sequence[Stage] = ()
    output: Sequence[Stage] = ()
    input_record: Sequence[Stage] = ()  # change only the recorded copy of the input
    output_record: Sequence[Stage] = ()  # change only the recorded copy of the output


class StageFactory(Protocol):
    """Builds a feature's stages for a channel, or returns None to stay out of it."""

    def __call__(self, info: ChannelInfo, ctx: StageContext) -> ChannelStages | None: ...


@dataclass
class _Sink:
    feed: Emit
    end: Callable[[], None]


@dataclass
class Direction:
    """A built chain: call ``feed``/``end`` with what arrives; stages are kept for resize/close."""

    feed: Emit
    end: Callable[[], None]
    stages: list[Stage] = field(default_factory=list)


def chain(stages: Sequence[Stage], ctx: StageContext, sink_feed: Emit,
          sink_end: Callable[[], None]) -> Direction:
    """Link ``stages`` in order in front of the sink; with no stages the sink is the entry."""
    feed, end = sink_feed, sink_end
    for stage in reversed(stages):
        stage.emit, stage.emit_end, stage.ctx = feed, end, ctx
        feed, end = stage.feed, stage.end
    return Direction(feed=feed, end=end, stages=list(stages))


@dataclass
class Pipeline:
    """Both directions of one channel, built from the server's stage factories."""

    input: Direction
    output: Direction
    input_record: Direction
    output_record: Direction

    @classmethod
    def build(cls, factories: Sequence[StageFactory], info: ChannelInfo, ctx: StageContext, *,
              to_target: Emit, target_end: Callable[[], None],
              record_input: Emit, record_output: Emit,
              to_user: Emit, user_end: Callable[[], None]) -> Pipeline:
        """Compose every factory's stages, in factory order, in front of the sinks.

        Input: stages -> (record stages -> ``record_input``) then ``to_target``; output: stages
        -> (record stages -> ``record_output``) then ``to_user``. Recording comes first in both,
        so nothing is sent that was not handed to the recorder.
        """
        parts = [p for p in (factory(info, ctx) for factory in factories) if p is not None]
        in_rec = chain([s for p in parts for s in p.input_record], ctx, record_input, _nothing)
        out_rec = chain([s for p in parts for s in p.output_record], ctx, record_output,
                        _nothing)

        def input_sink(data: bytes, stream: Stream) -> None:
            in_rec.feed(data, stream)
            to_target(data, stream)

        def input_end() -> None:
            in_rec.end()
            target_end()

        def output_sink(data: bytes, stream: Stream) -> None:
            out_rec.feed(data, stream)
            to_user(data, stream)

        def output_end() -> None:
            out_rec.end()
            user_end()

        # With no record stages the recorder is called directly (one call fewer per chunk).
        in_sink: Emit = input_sink
        out_sink: Emit = output_sink
        if not in_rec.stages:
            def in_sink(data: bytes, stream: Stream) -> None:
                record_input(data, stream)
                to_target(data, stream)
        if not out_rec.stages:
            def out_sink(data: bytes, stream: Stream) -> None:
                record_output(data, stream)
                to_user(data, stream)
        return cls(
            input=chain([s for p in parts for s in p.input], ctx, in_sink, input_end),
            output=chain([s for p in parts for s in p.output], ctx, out_sink, output_end),
            input_record=in_rec, output_record=out_rec)

    def all_stages(self) -> list[Stage]:
        """Every stage of every chain."""
        return [*self.input.stages, *self.output.stages, *self.input_record.stages,
                *self.output_record.stages]

    def resize(self, width: int, height: int) -> None:
        """Tell every stage the terminal's new size."""
        for stage in self.all_stages():
            stage.resize(width, height)

    def close(self) -> None:
        """Tell every stage the channel is gone."""
        for stage in self.all_stages():
            stage.close()


def _nothing() -> None:
    return None


class ChannelRecorder(Protocol):
    """What the relay asks of a channel's recording (asciicast for a pty, streams otherwise).

    Every method raises RecordingError once the recording has failed; the relay then ends the
    channel (fail closed).
    """

    def input(self, data: bytes) -> None:
        """Record user input (keystrokes on a pty; stdin of an exec)."""

    def output(self, data: bytes) -> None:
        """Record terminal output, or an exec's stdout."""

    def stderr(self, data: bytes) -> None:
        """Record an exec's stderr (a pty has none: recorded as output)."""

    def resize(self, width: int, height: int) -> None:
        """Record a window change."""

    def marker(self, label: str) -> None:
        """Record a marker."""

    def exited(self, status: int | None, signal: str | None) -> None:
        """Record how the channel's command ended (exit status or signal name)."""

    def close_deferred(self, submit: Callable[[Callable[[], None]], object]) -> None:
        """Flush now and hand the fsync and close to ``submit`` (the spool's worker)."""
