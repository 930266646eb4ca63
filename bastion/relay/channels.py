"""Session channels (pty shells and exec), relayed to the target and recorded.

A ``UserChannel`` is the asyncssh session for a channel the user opened; once policy, recording
and the upstream are ready it opens a twin ``TargetChannel`` on the target and the two forward
to each other directly from asyncssh's callbacks: no queue, no copy, no per-byte Python work.
Back-pressure is asyncssh's own: when one side's send buffer is full the other side stops reading,
so SSH windows close and a slow client slows the target instead of growing memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import asyncssh

from bastion.errors import EXIT_REFUSED, BastionError, RecordingError
from bastion.policy.access import reachable_targets
from bastion.recording import CastWriter
from bastion.relay.menu import TargetMenu, target_list
from bastion.relay.session import ConnectionSession

log = logging.getLogger("bastion.relay")

_EXIT_TARGET_LOST = 255  # what OpenSSH itself returns when the connection breaks


class TargetChannel(asyncssh.SSHClientSession[bytes]):
    """The target's end of a relayed channel: output goes to the user and the recorder."""

    def __init__(self, user: UserChannel) -> None:
        self._user = user
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str, str] | None = None
        # Output that arrived in this event-loop pass, sent on as one write at its end.
        self._held: list[bytes] = []
        self._flush_scheduled = False

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.flush()  # keep stdout before stderr as the target sent them
            self._forward(data, stderr=True)
            return
        # One socket read from the target holds many small packets (a pty gives ~4 KiB per
        # read); joining those of one loop pass makes full-size packets to the user and one
        # recorder event: asyncssh encrypts and sends (with an MSG_IGNORE) per packet, so
        # this is most of the relay's cost. The join waits for no timer: the rest of the
        # pass is microseconds, so keystroke echo is not delayed.
        self._held.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send on (and record) the output held from this event-loop pass."""
        self._flush_scheduled = False
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        self._forward(data, stderr=False)

    def _forward(self, data: bytes, *, stderr: bool) -> None:
        user = self._user
        writer = user.writer
        if user.closed or writer is None:
            return  # the user's channel or its recording is gone: nothing goes on unrecorded
        try:
            writer.output(data)  # recorded first, so all the user sees is on record
        except RecordingError as exc:
            user.recording_failed(exc)
            return
        try:
            if stderr:
                user.chan.write_stderr(data)
            else:
                user.chan.write(data)
        except (OSError, asyncssh.Error):
            return  # the user's channel is closing
        user.session.touch()

    def eof_received(self) -> bool:
        self.flush()
        self._user.chan.write_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = (signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:
        self._user.chan.pause_reading()

    def resume_writing(self) -> None:
        self._user.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.flush()  # output before the exit status, as the target sent it
        self._user.target_closed(self, exc)


class UserChannel(asyncssh.SSHServerSession[bytes]):
    """The user's end of a session channel; decides nothing itself, the session decided."""

    def __init__(self, session: ConnectionSession) -> None:
        self.session = session
        self.chan: asyncssh.SSHServerChannel[bytes] = None  # type: ignore[assignment]
        self.writer: CastWriter | None = None
        self._target: asyncssh.SSHClientChannel[bytes] | None = None
        self._term: str | None = None
        self._size = (80, 24, 0, 0)
        self._modes: dict[int, int] = {}
        self._command: str | None = None
        self._menu: TargetMenu | None = None
        self._pending: list[bytes] = []
        self._pending_eof = False
        self._task: asyncio.Task[None] | None = None
        self._done = False

    # -- asyncssh callbacks: requests ------------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: Mapping[int, int]) -> bool:
        self._term, self._size, self._modes = term_type, term_size, dict(term_modes)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self.session.services.audit.emit(
            "channel.refused", conn=self.session.client.conn_id, user=self.session.identity.name,
            kind="subsystem", subsystem=subsystem[:64], reason="subsystems are not enabled")
        return False

    def session_started(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._start())

    # -- asyncssh callbacks: data and events ----------------------------------------------
    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        target = self._target
        if target is not None:
            target.write(data)
            self.session.touch()
        elif self._menu is not None:
            self._menu.feed(data)
        else:
            # Input before the target side exists is held, and reading stops until it does:
            # asyncssh then buffers up to the channel window, so nothing typed early is lost
            # and nothing grows without bound.
            self._pending.append(data)
            self.chan.pause_reading()

    def eof_received(self) -> bool:
        if self._target is not None:
            self._target.write_eof()
        elif self._menu is not None:
            self._menu.feed(b"\x04")
        else:
            self._pending_eof = True
        return True  # keep receiving the target's output after the user's EOF

    def terminal_size_changed(self, width: int, height: int, pixwidth: int,
                              pixheight: int) -> None:
        self._size = (width, height, pixwidth, pixheight)
        if self._target is not None:
            self._target.change_terminal_size(width, height, pixwidth, pixheight)
        if self.writer is not None:
            try:
                self.writer.resize(width, height)
            except RecordingError as exc:
                self.recording_failed(exc)

    def signal_received(self, signal: str) -> None:
        if self._target is not None:
            self._target.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self._target is not None:
            self._target.send_break(msec)
            return True
        return False

    def pause_writing(self) -> None:
        if self._target is not None:
            self._target.pause_reading()

    def resume_writing(self) -> None:
        if self._target is not None:
            self._target.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        # The user went away (or we closed): end the target side and the recording.
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._target is not None:
            # As a terminal hang-up would: the command hears SIGHUP, then its channel closes.
            self._target.send_signal("HUP")
            self._target.close()
        self._close_writer()
        self._done = True

    # -- relay set-up and teardown ---------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once the user's channel is gone."""
        return self._done

    @property
    def kind(self) -> str:
        """``shell`` or ``exec``."""
        return "exec" if self._command is not None else "shell"

    async def _start(self) -> None:
        try:
            request = self.session.request
            no_target = request is None or request.target is None
            if self.session.refusal is None and no_target and not await self._choose_target():
                return
            upstream = await self.session.connect()
            width, height = self._size[:2]
            self.writer = await self.session.open_writer(self.kind, width, height, self._term,
                                                   self._command, self.recording_failed)
            target, _ = await upstream.conn.create_session(
                lambda: TargetChannel(self), self._command, term_type=self._term,
                term_size=self._size if self._term else None,
                term_modes=self._modes or None, encoding=None)
        except BastionError as exc:
            self.refuse(str(exc))
            return
        except asyncssh.ChannelOpenError as exc:
            self.refuse(f"the target refused the session: {exc.reason}")
            return
        except Exception:  # a bug must still end the channel, closed, with a notice
            log.exception("%s session set-up failed", self.session.log_prefix)
            self.session.end_reason("refused", "internal error")
            self.refuse("internal error; the session was not started")
            return
        if self._done:
            target.close()
            return
        self._target = target
        for data in self._pending:
            target.write(data)
        self._pending.clear()
        if self._pending_eof:
            target.write_eof()
        self.chan.resume_reading()

    async def _choose_target(self) -> bool:
        """Menu mode: a list for exec, an interactive menu for a pty. False if nothing chosen."""
        session = self.session
        targets = reachable_targets(session.services.config, session.identity)
        if self._command is not None or self._term is None:
            self.chan.write(target_list(targets).encode())
            if self._command not in (None, "", "list", "targets"):
                self.chan.write_stderr(b"bastion: no target in the user name; connect as "
                                       b"LOGIN@TARGET@bastion or TARGET@bastion\n")
                self.chan.exit(EXIT_REFUSED)
            else:
                self.chan.exit(0)
            return False
        if not targets:
            self.refuse("no targets are available to you")
            return False
        self._menu = menu = TargetMenu(self.chan, targets)
        early, self._pending = self._pending, []
        for data in early:
            menu.feed(data)
        self.chan.resume_reading()
        request = await menu.choose(session.request)
        self._menu = None
        if request is None:
            self.chan.exit(0)
            return False
        session.choose_target(request)
        return True

    def refuse(self, reason: str) -> None:
        """Tell the user why in one line and end the channel with a failure status."""
        nl = "\r\n" if self._term else "\n"
        try:
            self.chan.write_stderr(f"bastion: {reason}{nl}".encode())
            self.chan.exit(EXIT_REFUSED)
        except (OSError, asyncssh.Error, BrokenPipeError):
            self.chan.close()

    def recording_failed(self, exc: RecordingError) -> None:
        """Fail closed: the recording broke, so the session ends now with a notice."""
        if self.writer is None:
            return  # already ended (or this channel's recording was closed)
        log.error("%s %s", self.session.log_prefix, exc)
        self.session.services.audit.emit("recording.error", conn=self.session.client.conn_id,
                                         user=self.session.identity.name, error=str(exc))
        self.session.end_reason("killed", "recording failed")
        self.writer = None
        if self._target is not None:
            self._target.close()
            self._target = None
        self.refuse("recording failed; the session was ended")

    def target_closed(self, target: TargetChannel, exc: Exception | None) -> None:
        """The target ended the channel: pass its exit status or signal on and close."""
        self._target = None
        if not self._done:
            self._pass_exit(target, exc)
        # After the user has their exit status: closing the recording fsyncs it.
        self._close_writer()

    def _pass_exit(self, target: TargetChannel, exc: Exception | None) -> None:
        nl = "\r\n" if self._term else "\n"
        try:
            if target.exit_signal is not None:
                signal, core, msg, lang = target.exit_signal
                self.chan.exit_with_signal(signal, core, msg, lang)
            elif target.exit_status is not None:
                self.chan.exit(target.exit_status)
            else:
                reason = f": {exc}" if exc else ""
                self.chan.write_stderr(f"bastion: connection to the target closed{reason}{nl}"
                                       .encode())
                self.chan.exit(_EXIT_TARGET_LOST)
        except (OSError, asyncssh.Error):
            self.chan.close()

    def close_with_notice(self, notice: str) -> None:
        """End this channel from the server side (idle timeout, shutdown) with a notice."""
        if self._target is not None:
            self._target.close()
            self._target = None
        self.refuse(notice)

    def _close_writer(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close_deferred(self.session.services.spool.submit)
            except RecordingError as exc:
                log.error("%s %s", self.session.log_prefix, exc)
                self.session.end_reason("killed", "recording failed at close")

