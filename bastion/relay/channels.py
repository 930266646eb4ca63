"""Session channels: asyncssh's server session, turned into one relayed, recorded channel.

``UserChannel`` is the dispatcher: it collects the channel's requests (pty, shell, exec,
subsystem), and when the session starts it shows the menu if no target was named, lets the
connection's session authorize and dial, opens the channel's recording, builds the channel's
``ChannelRelay`` (pipeline + recorder) and opens the twin channel on the target. Afterwards it
only hands asyncssh's callbacks to the relay. It decides nothing itself: the session decided.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import asyncssh

from bastion.errors import EXIT_REFUSED, BastionError, RecordingError
from bastion.policy.access import reachable_targets
from bastion.relay import wire
from bastion.relay.channel_relay import ChannelRelay
from bastion.relay.menu import TargetMenu, target_list
from bastion.relay.pipeline import ChannelInfo, ChannelKind, Stream
from bastion.relay.session import ConnectionSession
from bastion.relay.target import PassJoiner, TargetChannel

log = logging.getLogger("bastion.relay")

_REASON_MAX = 400  # characters of a refusal reason shown to the user
_EXIT_TARGET_LOST = 255  # what OpenSSH itself returns when the connection breaks
_DATA = Stream.DATA
MAX_COLUMNS, MAX_ROWS = 2000, 1000  # a window size beyond these is a lie, not a terminal


def clamp_size(width: int, height: int) -> tuple[int, int]:
    """A client's window size within what a terminal can be (0 stays 0: not given)."""
    return min(max(width, 0), MAX_COLUMNS), min(max(height, 0), MAX_ROWS)


class UserChannel(asyncssh.SSHServerSession[bytes]):
    """The user's end of a session channel."""

    def __init__(self, session: ConnectionSession) -> None:
        self.session = session
        self.chan: asyncssh.SSHServerChannel[bytes] = None  # type: ignore[assignment]
        self.relay: ChannelRelay | None = None
        self._term: str | None = None
        self._size = (80, 24, 0, 0)
        self._modes: dict[int, int] = {}
        self._command: str | None = None
        self._subsystem: str | None = None  # "sftp": relayed to the target's sftp subsystem
        self._menu: TargetMenu | None = None
        self._request = session.request  # this channel's target: the user name's, or the menu's
        self._pending: list[bytes] = []
        self._pending_eof = False
        # Input of one event-loop pass without a terminal (a file going up through scp, rsync,
        # sftp), handed on as one chunk at the pass's end, as the target's output is.
        self._joined = PassJoiner(self._deliver_input)
        self._task: asyncio.Task[None] | None = None
        self._done = False

    # -- asyncssh callbacks: requests ------------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan
        wire.no_packet_log(chan)

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: Mapping[int, int]) -> bool:
        width, height = clamp_size(term_size[0], term_size[1])
        self._term, self._size, self._modes = term_type, (width, height, 0, 0), dict(term_modes)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem == "sftp":  # watched by the sftp stages (bastion/relay/sftp_stage.py)
            self._subsystem = subsystem
            return True
        self.session.services.audit.emit(
            "channel.refused", conn=self.session.client.conn_id, user=self.session.identity.name,
            kind="subsystem", subsystem=subsystem[:64], reason="subsystems are not enabled")
        return False

    def session_started(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._start())

    # -- asyncssh callbacks: data and events ----------------------------------------------
    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        relay = self.relay
        if relay is not None and relay.attached:
            if self._term is not None:  # keystrokes go on at once
                relay.input.feed(data, _DATA)
                relay.typed()
                return
            # A 32 KiB packet at a time, the per-chunk work of the pipeline (the exec count
            # scan, the recorder's write and timing line) was about a sixth of an upload's
            # cost; the pass's packets joined, it is paid once per JOIN_MAX.
            self._joined.add(data)
        elif self._menu is not None:
            self._menu.feed(data)
        else:
            # Input before the relay exists is held, and reading stops until it does:
            # asyncssh then buffers up to the channel window, so nothing typed early is lost
            # and nothing grows without bound.
            self._pending.append(data)
            self.chan.pause_reading()

    def _deliver_input(self, data: bytes) -> None:
        if self.relay is not None and self.relay.attached:  # else the relay went away
            self.relay.input.feed(data, _DATA)

    def eof_received(self) -> bool:
        self._joined.flush()
        if self.relay is not None and self.relay.attached:
            self.relay.input.end()
        elif self._menu is not None:
            self._menu.feed(b"\x04")
        else:
            self._pending_eof = True
        return True  # keep receiving the target's output after the user's EOF

    def terminal_size_changed(self, width: int, height: int, pixwidth: int,
                              pixheight: int) -> None:
        width, height = clamp_size(width, height)
        if (width, height) == self._size[:2]:
            return
        self._size = (width, height, 0, 0)
        if self.relay is not None and self.relay.attached:
            self.relay.resize(width, height)

    def signal_received(self, signal: str) -> None:
        self._joined.flush()  # what was sent before the signal goes first
        if self.relay is not None:
            self.relay.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        self._joined.flush()
        return self.relay is not None and self.relay.send_break(msec)

    def pause_writing(self) -> None:
        if self.relay is not None:
            self.relay.pause_target()

    def resume_writing(self) -> None:
        if self.relay is not None:
            self.relay.resume_target()

    def connection_lost(self, exc: Exception | None) -> None:
        # The user went away (or we closed): end the target side and the recording.
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._joined.flush()  # the last bytes the user sent are relayed and recorded
        if self.relay is not None:
            self.relay.hang_up()
        self._close_recorder()
        self._done = True

    # -- set-up --------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once the user's channel is gone."""
        return self._done

    @property
    def kind(self) -> ChannelKind:
        """What this channel carries."""
        if self._subsystem is not None:
            return ChannelKind.SFTP
        return ChannelKind.EXEC if self._command is not None else ChannelKind.SHELL

    async def _start(self) -> None:
        try:
            request = self._request
            no_target = request is None or request.target is None
            if self.session.refusal is None and no_target and not await self._choose_target():
                return
            upstream = await self.session.connect(self._request, pty=self._term is not None)
            relay = await self._open_relay()
            for factory in self.session.services.stage_factories:
                # An exec is judged (and may wait for approval) before it is dialled.
                check = getattr(factory, "check_exec", None)
                if check and self.kind is ChannelKind.EXEC and not await check(relay.info, relay):
                    relay.stop()
                    self.refuse("the command was not run")
                    return
            target, _ = await upstream.conn.create_session(
                lambda: TargetChannel(relay), self._command, subsystem=self._subsystem,
                term_type=self._term,
                term_size=(relay.info.width, relay.info.height, 0, 0) if self._term else None,
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
        if self._done or self.relay is None:
            target.close()
            return
        relay.attach(target)
        if self._term and self._size[:2] != (relay.info.width, relay.info.height):
            relay.resize(*self._size[:2])  # the window changed while the channel was set up
        pending, self._pending = self._pending, []
        for data in pending:
            relay.input.feed(data, _DATA)
        if self._pending_eof:
            relay.input.end()
        self.chan.resume_reading()

    async def _open_relay(self) -> ChannelRelay:
        """Open this channel's recording and build its relay (the pipeline's stages too)."""
        session = self.session
        auth = session.authorization
        assert auth is not None
        width, height = self._size[:2]
        pty = self._term is not None
        number, recorder = await session.open_recorder(
            self.kind, pty=pty, width=width, height=height, term=self._term,
            command=self._command, on_failure=self.recording_failed)
        info = ChannelInfo(
            kind=self.kind, pty=pty, term=self._term, width=width, height=height,
            command=self._command, subsystem=self._subsystem, session_id=session.session_id,
            channel=number, user=session.identity.name, identity_key=session.identity.key,
            groups=tuple(session.identity.groups), target=auth.target, login=auth.login,
            email=session.identity.email, rule_names=session.identity.rule_names)
        # Keystrokes on a pty are recorded unless the target's config says not to; an exec's
        # stdin always is (it is the program a piped script runs).
        record_input = auth.target.record_input or not pty
        self.relay = ChannelRelay(self, info, recorder, session.services.stage_factories,
                                  record_input=record_input)
        return self.relay

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
        self._request = request
        return True

    # -- endings -------------------------------------------------------------------------------
    def refuse(self, reason: str) -> None:
        """Tell the user why in one line and end the channel with a failure status."""
        nl = "\r\n" if self._term else "\n"
        # The reason may quote the target (its disconnect text) or the user: no control
        # character reaches the user's terminal through it.
        shown = "".join(c if c.isprintable() else "?" for c in reason[:_REASON_MAX])
        try:
            self.chan.write_stderr(f"bastion: {shown}{nl}".encode())
            self.chan.exit(EXIT_REFUSED)
        except (OSError, asyncssh.Error, BrokenPipeError):
            self.chan.close()

    def recording_failed(self, exc: RecordingError) -> None:
        """Fail closed: the recording broke, so the session ends now with a notice."""
        relay = self.relay
        if relay is None or relay.recorder is None:
            return  # already ended (or this channel's recording was closed)
        log.error("%s %s", self.session.log_prefix, exc)
        self.session.services.audit.emit("recording.error", conn=self.session.client.conn_id,
                                         user=self.session.identity.name, error=str(exc))
        self.session.end_reason("killed", f"recording failed: {exc}")
        relay.recorder = None
        relay.stop()
        self.refuse("recording failed; the session was ended")

    def target_closed(self, target: TargetChannel, exc: Exception | None) -> None:
        """The target ended the channel: pass its exit status or signal on and close."""
        if target.exit_status is None and target.exit_signal is None and not self._done:
            self.session.end_reason("closed", "connection to the target lost"
                                    + (f": {exc}" if exc else ""))
        if not self._done:
            self._pass_exit(target, exc)
        # After the user has their exit status: closing the recording fsyncs it.
        self._close_recorder()

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
        """End this channel from the server side (idle timeout, shutdown, kill) with a notice."""
        if self.relay is not None:
            self.relay.marker(f"ended: {notice}")
            self.relay.stop()
        self.refuse(notice)

    def _close_recorder(self) -> None:
        relay = self.relay
        if relay is None or relay.recorder is None:
            return
        recorder, relay.recorder = relay.recorder, None
        try:
            recorder.close_deferred(self.session.services.spool.submit)
        except RecordingError as exc:
            log.error("%s %s", self.session.log_prefix, exc)
            self.session.end_reason("killed", f"recording failed at close: {exc}")
