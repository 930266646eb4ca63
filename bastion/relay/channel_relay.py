"""One relayed channel: its pipeline, its recorder, and what its stages may do (``StageContext``).

The ``UserChannel`` (channels.py) turns asyncssh's callbacks into calls on this object; the
``TargetChannel`` (target.py) does the same for the target's side. This object owns the channel's
state after set-up: the pipeline of both directions, the recorder, the target channel, who has
paused the user's input, and the channel's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import asyncssh

from bastion.errors import RecordingError
from bastion.relay import wire
from bastion.relay.pipeline import (
    ChannelInfo,
    ChannelRecorder,
    Pipeline,
    StageFactory,
    Stream,
)

if TYPE_CHECKING:
    from bastion.relay.channels import UserChannel
    from bastion.relay.target import TargetChannel

log = logging.getLogger("bastion.relay")

_NOTICE_MAX = 400  # characters of a notice shown to the user
RESIZE_RECORD_INTERVAL = 0.2  # seconds: at most this many window changes recorded per second
# Seconds after a keystroke in which the target's output is sent on as it comes (its echo, the
# command's first answer), not joined to the end of the event-loop pass. Long enough for a
# target's round trip over a slow network; bulk output after it is joined again.
ECHO_WINDOW = 0.5


def _printable(text: str) -> str:
    # A notice may quote a command line or a reason from outside: no control characters reach
    # the user's terminal through it.
    return "".join(c if c.isprintable() else "?" for c in text[:_NOTICE_MAX])


class ChannelRelay:
    """The relay of one session channel between the user and the target."""

    def __init__(self, user: UserChannel, info: ChannelInfo, recorder: ChannelRecorder,
                 factories: Sequence[StageFactory], *, record_input: bool) -> None:
        self.info = info
        self.recorder: ChannelRecorder | None = recorder  # None once closed or failed
        self._user = user
        self._chan = user.chan
        self._session = user.session
        self._target: asyncssh.SSHClientChannel[bytes] | None = None
        self._pausers: set[str] = set()
        self._ended = False
        self.attached = False  # input is held by the channel until the target's side is open
        self._stages_closed = False
        self._size_recorded = self._size_to_record = (info.width, info.height)
        self._size_recorded_at = float("-inf")
        self._echo_until = float("-inf")  # see ECHO_WINDOW
        self._resize_timer: asyncio.TimerHandle | None = None
        rec = recorder
        if record_input:
            def record_input_sink(data: bytes, stream: Stream) -> None:
                self._recorded(rec.input, data)
        else:
            def record_input_sink(data: bytes, stream: Stream) -> None:
                return None

        def record_output_sink(data: bytes, stream: Stream) -> None:
            self._recorded(rec.stderr if stream is Stream.STDERR else rec.output, data)

        self.pipeline = Pipeline.build(
            factories, info, self,
            to_target=self._to_target, target_end=self._target_eof,
            record_input=record_input_sink, record_output=record_output_sink,
            to_user=self._to_user, user_end=self._user_eof)
        self.input = self.pipeline.input
        self.output = self.pipeline.output

    # -- sinks ---------------------------------------------------------------------------------
    def _recorded(self, method: Any, data: bytes) -> None:
        # A recording failure stops the relay (``_ended``), so the data goes no further: the
        # sinks after this one send nothing once the channel has ended.
        try:
            method(data)
        except RecordingError as exc:
            self._user.recording_failed(exc)

    # -- the interactive lane ----------------------------------------------------------------
    # A worker carries many sessions; what they send in one event-loop pass is joined and
    # written at the pass's end (target.PassJoiner, wire.CoalescingTransport). A keystroke and
    # its echo do not wait for that: under load a pass is milliseconds of other sessions' work.
    def typed(self) -> None:
        """The user typed on a terminal: what reached the target goes now, and so does its
        output for ``ECHO_WINDOW``."""
        self._echo_until = time.monotonic() + ECHO_WINDOW
        if self._target is not None:
            wire.flush_writes(self._target)

    def echo_due(self) -> bool:
        """Whether the target's output is the answer to a recent keystroke."""
        return time.monotonic() < self._echo_until

    def flush_to_user(self) -> None:
        """Write what the user's connection holds now."""
        wire.flush_writes(self._chan)

    def _to_target(self, data: bytes, stream: Stream) -> None:
        if self._target is not None and not self._ended:
            self._target.write(data)
            self._session.touch()

    def _target_eof(self) -> None:
        if self._target is not None and not self._ended:
            self._target.write_eof()

    def _to_user(self, data: bytes, stream: Stream) -> None:
        if self._ended:
            return
        try:
            if stream is Stream.STDERR:
                self._chan.write_stderr(data)
            else:
                self._chan.write(data)
        except (OSError, asyncssh.Error):
            return  # the user's channel is closing
        self._session.touch()

    def _user_eof(self) -> None:
        if not self._ended:
            with contextlib.suppress(OSError, asyncssh.Error):
                self._chan.write_eof()

    # -- entry points for the channel adapters -------------------------------------------------
    def attach(self, target: asyncssh.SSHClientChannel[bytes]) -> None:
        """The target's channel is open: input may flow."""
        self._target = target
        self.attached = True

    def resize(self, width: int, height: int) -> None:
        """The user's window changed: tell the target and the stages now, the recording soon.

        A client can send thousands of window changes; the recording keeps at most one per
        ``RESIZE_RECORD_INTERVAL``, always ending with the size the terminal really has.
        """
        if self._target is not None:
            self._target.change_terminal_size(width, height, 0, 0)
        self.pipeline.resize(width, height)
        self._size_to_record = (width, height)
        if self._resize_timer is not None:
            return
        loop = asyncio.get_running_loop()
        delay = self._size_recorded_at + RESIZE_RECORD_INTERVAL - loop.time()
        if delay <= 0:
            self._record_size()
        else:
            self._resize_timer = loop.call_later(delay, self._record_size)

    def _record_size(self) -> None:
        self._resize_timer = None
        if self._ended or self._size_to_record == self._size_recorded:
            return
        width, height = self._size_to_record
        if self._record(lambda rec: rec.resize(width, height)):
            self._size_recorded = (width, height)
            self._size_recorded_at = asyncio.get_running_loop().time()

    def send_signal(self, signal: str) -> None:
        """Pass an SSH signal request on."""
        if self._target is not None:
            self._target.send_signal(signal)

    def send_break(self, msec: int) -> bool:
        """Pass a break request on; False if there is no target to take it."""
        if self._target is None:
            return False
        self._target.send_break(msec)
        return True

    def pause_target(self) -> None:
        """The user's send buffer is full: stop reading the target."""
        if self._target is not None:
            self._target.pause_reading()

    def resume_target(self) -> None:
        """The user's send buffer has room: read the target again."""
        if self._target is not None:
            self._target.resume_reading()

    def target_closed(self, target: TargetChannel, exc: Exception | None) -> None:
        """The target ended the channel: record and pass on its exit status or signal."""
        self._record_size()
        self._cancel_timers()
        self._target = None
        status = target.exit_status
        signal = target.exit_signal[0] if target.exit_signal else None
        if not self._ended:
            self._record(lambda rec: rec.exited(status, signal))
            self.audit("channel.exit", exit_status=status, exit_signal=signal,
                       lost=status is None and signal is None)
        self._close_stages()
        self._user.target_closed(target, exc)

    def _cancel_timers(self) -> None:
        if self._resize_timer is not None:
            self._resize_timer.cancel()
            self._resize_timer = None

    def _close_stages(self) -> None:
        """Close every stage once (they write their summaries), then note masking's counts."""
        if self._stages_closed:
            return
        self._stages_closed = True
        self.pipeline.close()
        self._session.note_masks(self.info.channel)

    def hang_up(self) -> None:
        """The user went away: as a terminal hang-up would, SIGHUP, then close the target."""
        self._record_size()  # the last window size is not lost to the coalescing
        self._cancel_timers()
        self._close_stages()
        self._ended = True
        if self._target is not None:
            self._target.send_signal("HUP")
            self._target.close()
            self._target = None

    def stop(self) -> None:
        """End the relay from the bastion's side (refusal, recording failure, kill)."""
        self._cancel_timers()
        self._close_stages()
        self._ended = True
        if self._target is not None:
            self._target.close()
            self._target = None

    # -- StageContext --------------------------------------------------------------------------
    def notify_user(self, text: str) -> None:
        """Show one ``bastion:`` line to the user and record it."""
        line = f"bastion: {_printable(self._session.mask_text(text))}"
        if not self._record(lambda rec: rec.marker(f"notice: {line}")):
            return
        if self.info.pty:
            self._to_user(f"\r\n\x1b[1;31m{line}\x1b[0m\r\n".encode(), Stream.DATA)
        else:
            self._to_user(f"{line}\n".encode(), Stream.STDERR)

    def send_to_target(self, data: bytes) -> None:
        """Bytes the bastion sends on its own (e.g. clearing a denied line)."""
        if self._record(lambda rec: rec.marker(f"bastion sent: {data!r}"[:200])):
            self._to_target(data, Stream.DATA)

    def marker(self, label: str) -> None:
        """A marker in this channel's recording."""
        self._record(lambda rec: rec.marker(label))

    def _record(self, write: Callable[[ChannelRecorder], None]) -> bool:
        """Write to the recording; False (and the channel ended) if it is closed or failed."""
        if self.recorder is None:
            return False
        try:
            write(self.recorder)
        except RecordingError as exc:
            self._user.recording_failed(exc)
            return False
        return True

    def note_command(self, line: str, verdict: str, rule: str | None = None) -> None:
        """A command line read: marker, session.json ``commands`` and an audit event.

        Masked here too, whatever the caller did: a secret typed on a command line
        (``mysql -pSECRET``) must not reach the disk through the record of it.
        """
        line = self._session.mask_text(line)
        self.marker(f"command: {line}")
        if verdict != "allow":
            self.marker(f"{verdict}: {line}" + (f" (rule {rule})" if rule else ""))
        self._session.note_command(self.info.channel, line, verdict, rule)
        self.audit("command", line=line, verdict=verdict, rule=rule)

    def audit(self, event: str, **fields: Any) -> None:
        """An audit event with this channel's context."""
        self._session.services.audit.emit(
            event, conn=self._session.client.conn_id, session=self.info.session_id,
            channel=self.info.channel, user=self.info.user, target=self.info.target.name,
            login=self.info.login, **fields)

    def pause_input(self, who: str = "stage") -> None:
        """Stop reading the user's input until every pauser has resumed it."""
        if not self._pausers:
            self._chan.pause_reading()
        self._pausers.add(who)

    def resume_input(self, who: str = "stage") -> None:
        """Resume reading the user's input once nobody holds it paused."""
        if who in self._pausers:
            self._pausers.discard(who)
            if not self._pausers and not self._ended:
                self._chan.resume_reading()

    def end_channel(self, reason: str) -> None:
        """End this channel now with ``reason`` shown to the user (fail closed)."""
        self.marker(f"ended: {_printable(reason)}")
        self.stop()
        self._user.refuse(reason)
