"""One session's recording: its directory, its session.json and the writer of each channel.

session.json (schema ``layout.SESSION_SCHEMA``) is kept in memory and rewritten atomically: at
start and each channel's open (before any byte of the channel is relayed), by the spool's
``flush_due`` when markers, commands or exits changed it, and at the end, after every recording
is fsync'd. Its ``channels`` entries are built from the writers (times, exit status or signal,
markers of stream channels); ``commands`` are added with ``note_command``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from bastion.errors import RecordingError
from bastion.recording.asciicast import CastWriter, build_header, create_cast
from bastion.recording.durable import rfc3339, write_json_atomic
from bastion.recording.layout import (
    SESSION_FILE,
    ChannelKind,
    CommandVerdict,
    Part,
    SessionState,
    channel_parts,
    recording_name,
)
from bastion.recording.liveness import release_liveness
from bastion.recording.streams import StreamWriter

if TYPE_CHECKING:
    from bastion.recording.spool import Spool

log = logging.getLogger("bastion.recording")

DEFAULT_SIZE = (80, 24)  # header size for a cast whose channel gave no window size
# Keys of session.json only the spool and this module write.
RESERVED_FIELDS = frozenset({"schema", "session_id", "node_id", "state", "start", "end",
                             "end_reason", "recordings", "channels", "commands"})


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


ChannelWriter = CastWriter | StreamWriter


@dataclass
class _Channel:
    """One channel of a session and its writer: what session.json's ``channels`` entry says."""

    number: int
    kind: ChannelKind
    pty: bool
    command: str | None
    files: list[str]
    opened_wall: float  # Unix time the channel opened
    writer: ChannelWriter

    def entry(self) -> dict[str, Any]:
        writer = self.writer
        closed = None
        if writer.closed_at is not None:
            closed = rfc3339(self.opened_wall + max(0.0, writer.closed_at - writer.started))
        entry: dict[str, Any] = {
            "number": self.number, "kind": self.kind.value, "pty": self.pty,
            "command": self.command, "files": list(self.files),
            "opened": rfc3339(self.opened_wall), "closed": closed,
            "exit_status": writer.exit_status, "exit_signal": writer.exit_signal}
        if isinstance(writer, StreamWriter):  # a cast holds its markers itself
            entry["markers"] = [{"t": t, "label": label} for t, label in writer.markers]
        return entry


class SessionRecording:
    """One session's directory: its metadata and the writer of each channel."""

    def __init__(self, spool: Spool, session_id: str, path: Path, doc: dict[str, Any],
                 live_fd: int | None = None) -> None:
        self.session_id = session_id
        self.path = path
        # Called by Spool.flush_due when a background flush fails: end the session with a notice.
        self.on_failure: Callable[[RecordingError], None] | None = None
        self._spool = spool
        self._doc = doc
        self._channels: list[_Channel] = []
        self._numbers = 0  # channel numbers taken
        self._finished = False
        self._dirty = False  # session.json in memory differs from the disk (flush_due saves it)
        # session.json on disk says the session ended (it may be sealed, even if a recording
        # file failed: the manifest then lists what was written, session.json the errors).
        self.ended_on_disk = False
        # The folder's liveness lock (liveness.py), held until session.json says it ended.
        self._live_fd = live_fd

    def release_liveness(self) -> None:
        """Drop the folder's liveness lock (the session ended on disk, or never started)."""
        fd, self._live_fd = self._live_fd, None
        if fd is not None:
            release_liveness(fd)

    @property
    def finished(self) -> bool:
        """True once finish() ran."""
        return self._finished

    @property
    def writers(self) -> list[ChannelWriter]:
        """Every channel writer opened so far, in channel order."""
        return [channel.writer for channel in self._channels]

    def metadata(self) -> dict[str, Any]:
        """A copy of session.json as it is now in memory."""
        self._sync_channels()
        return copy.deepcopy(self._doc)

    @overload
    def open_channel(self, kind: ChannelKind | str, *, pty: Literal[True] = ..., width: int,
                     height: int, term: str | None, command: str | None, user: str,
                     target: str, login: str) -> CastWriter: ...
    @overload
    def open_channel(self, kind: ChannelKind | str, *, pty: Literal[False], width: int,
                     height: int, term: str | None, command: str | None, user: str,
                     target: str, login: str) -> StreamWriter: ...
    @overload
    def open_channel(self, kind: ChannelKind | str, *, pty: bool, width: int,
                     height: int, term: str | None, command: str | None, user: str,
                     target: str, login: str) -> ChannelWriter: ...
    def open_channel(self, kind: ChannelKind | str, *, pty: bool = True, width: int,
                     height: int, term: str | None, command: str | None, user: str,
                     target: str, login: str) -> ChannelWriter:
        """Create the channel's recording on disk and list it in session.json (saved now).

        A pty channel gets ``<n>-<kind>.cast`` (a CastWriter), any other the byte-exact
        ``<n>-<kind>.stdin/.stdout/.stderr/.timing`` (a StreamWriter). ``kind`` must be a
        ``ChannelKind`` (or its value); ValueError for anything the layout does not define.
        RecordingError if the files cannot be created. (``pty`` defaults to True only so that
        callers from before stream recording keep their casts; pass it.)
        """
        writer = self._create_channel(kind, pty, width=width, height=height, term=term,
                                      command=command, user=user, target=target, login=login)
        try:
            self.save()
        except RecordingError:
            writer.close()
            raise
        return writer

    @overload
    async def open_channel_async(self, kind: ChannelKind | str, *, pty: Literal[True] = ...,
                                 width: int, height: int, term: str | None,
                                 command: str | None, user: str, target: str,
                                 login: str) -> CastWriter: ...
    @overload
    async def open_channel_async(self, kind: ChannelKind | str, *, pty: Literal[False],
                                 width: int, height: int, term: str | None,
                                 command: str | None, user: str, target: str,
                                 login: str) -> StreamWriter: ...
    @overload
    async def open_channel_async(self, kind: ChannelKind | str, *, pty: bool,
                                 width: int, height: int, term: str | None,
                                 command: str | None, user: str, target: str,
                                 login: str) -> ChannelWriter: ...
    async def open_channel_async(self, kind: ChannelKind | str, *, pty: bool = True,
                                 width: int, height: int, term: str | None,
                                 command: str | None, user: str, target: str,
                                 login: str) -> ChannelWriter:
        """``open_channel`` whose session.json save (an fsync) runs on the spool's worker."""
        writer = self._create_channel(kind, pty, width=width, height=height, term=term,
                                      command=command, user=user, target=target, login=login)
        try:
            await asyncio.wrap_future(self.save_later())
        except RecordingError:
            writer.close_deferred(self._spool.submit)
            raise
        return writer

    def _create_channel(self, kind: ChannelKind | str, pty: bool, *, width: int, height: int,
                        term: str | None, command: str | None, user: str, target: str,
                        login: str) -> ChannelWriter:
        if self._finished:
            raise RecordingError(f"recording stopped: session {self.session_id} is finished")
        try:
            kind = ChannelKind(kind)
        except ValueError:
            raise ValueError(f"bad channel kind {kind!r}") from None
        parts = channel_parts(kind, pty)
        self._numbers += 1  # a number whose files could not be created is not used again
        number = self._numbers
        opened = self._spool.wall()
        writer: ChannelWriter
        if parts == (Part.CAST,):
            if width <= 0 or height <= 0:
                width, height = DEFAULT_SIZE
            # The command is stored once, in the asciicast ``command`` field; the title shows
            # only its start (a client may send a megabyte of command line).
            title = f"{user} -> {login}@{target}" + (f": {_title_part(command)}"
                                                     if command is not None else "")
            header = build_header(
                width=width, height=height, timestamp=int(opened), term=term,
                title=title, command=command,
                bastion={"session_id": self.session_id, "user": user, "target": target,
                         "login": login, "channel": number, "kind": kind.value})
            writer = create_cast(self.path / recording_name(number, kind, Part.CAST), header,
                                 clock=self._spool.clock)
            files = [writer.path.name]
        else:
            writer = StreamWriter(self.path, number, kind, clock=self._spool.clock)
            files = [p.name for p in writer.files]
        writer.number = number
        writer.on_change = self._changed
        self._channels.append(_Channel(number, kind, pty, command, files, opened, writer))
        self._doc["recordings"].extend(files)
        return writer

    def note_command(self, channel: int, t: float | None, line: str,
                     verdict: CommandVerdict | str, rule: str | None = None) -> None:
        """Add a command line read on ``channel`` to session.json's ``commands`` (saved by the
        next flush_due, save or finish). ``line`` must already be masked: it is stored as given.
        ``t`` is seconds since the channel opened (None: now)."""
        found = [c for c in self._channels if c.number == channel]
        if not found:
            raise ValueError(f"no channel {channel} in session {self.session_id}")
        verdict = CommandVerdict(verdict)
        if t is None:
            t = self._spool.clock() - found[0].writer.started
        self._doc["commands"].append({"channel": channel, "t": round(max(0.0, t), 6),
                                      "line": str(line), "verdict": verdict.value,
                                      "rule": rule})
        self._dirty = True

    def _changed(self) -> None:
        self._dirty = True

    def _sync_channels(self) -> None:
        self._doc["channels"] = [channel.entry() for channel in self._channels]

    def set_field(self, key: str, value: Any) -> None:
        """Set a session.json field; ``a.b`` sets ``b`` inside object ``a``. Saved with the next
        save(), open_channel() or finish()."""
        parts = key.split(".")
        if parts[0] in RESERVED_FIELDS:
            raise ValueError(f"session.json field {parts[0]!r} is managed by the spool")
        node = self._doc
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"session.json field {part!r} is not an object")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
        self._dirty = True

    def append_field(self, key: str, item: Any) -> None:
        """Append to a list field of session.json (``approvals``...)."""
        if key in RESERVED_FIELDS:
            raise ValueError(f"session.json field {key!r} is managed by the spool")
        current = self._doc.setdefault(key, [])
        if not isinstance(current, list):
            raise ValueError(f"session.json field {key!r} is not a list")
        current.append(copy.deepcopy(item))
        self._dirty = True

    def save(self) -> None:
        """Write session.json durably now (atomic rewrite)."""
        self._sync_channels()
        self._dirty = False
        self._write_doc(self._doc)

    def save_later(self) -> concurrent.futures.Future[None]:
        """Write session.json as it is now, durably, on the spool's worker (after what was
        submitted before)."""
        self._sync_channels()
        self._dirty = False
        return self._spool.submit(self._write_doc, copy.deepcopy(self._doc))

    def _write_doc(self, doc: dict[str, Any]) -> None:
        try:
            try:
                write_json_atomic(self.path / SESSION_FILE, doc)
            except OSError as exc:
                # A full disk must not leave a finished session "active": free the spool's
                # reserve and try once more (the end of a session matters more than space).
                if exc.errno != errno.ENOSPC or not self._spool.release_reserve():
                    raise
                write_json_atomic(self.path / SESSION_FILE, doc)
            if doc.get("state") != SessionState.ACTIVE.value:
                self.ended_on_disk = True
        except OSError as exc:
            raise RecordingError(
                f"recording stopped: cannot write {self.path / SESSION_FILE}: {_reason(exc)}"
            ) from None

    def finish(self, state: SessionState | str, end_reason: str) -> None:
        """Close every channel (flush + fsync) and rewrite session.json with the end; idempotent.

        Raises the first RecordingError met on the way, after doing everything it still can.
        """
        self._finish(state, end_reason, lambda job: job()).result()

    def finish_later(self, state: SessionState | str,
                     end_reason: str) -> concurrent.futures.Future[None]:
        """``finish`` with the fsyncs and the final session.json on the spool's worker: the
        recordings are flushed now and durable before session.json says the session ended."""
        return self._finish(state, end_reason, self._spool.submit)

    def _finish(self, state: SessionState | str, end_reason: str,
                submit: Callable[..., Any]) -> concurrent.futures.Future[None]:
        try:
            final = SessionState(state)
        except ValueError:
            final = SessionState.ACTIVE
        if not final.final:
            raise ValueError(f"bad final session state {state!r}")
        if self._finished:
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            done.set_result(None)
            return done
        self._finished = True
        self._spool._forget(self)  # no background flush touches these writers from now on
        writers = self.writers
        failed_before = {id(w) for w in writers if w.error is not None}
        failures: list[RecordingError] = []
        for writer in writers:
            try:
                writer.close_deferred(submit)
            except RecordingError as err:
                failures.append(err)
        self._sync_channels()
        doc = copy.deepcopy(self._doc)
        doc.update(state=final.value, end=rfc3339(self._spool.wall()), end_reason=end_reason)

        def write_end() -> None:
            # Runs after every file's fsync (same ordered worker, or at once when synchronous).
            errors = [str(w.error) for w in writers if w.error is not None]
            if errors:
                doc["recording_errors"] = errors
            for writer in writers:  # failures of the deferred fsyncs, not reported yet
                if writer.error is not None and id(writer) not in failed_before \
                        and writer.error not in failures:
                    failures.append(writer.error)
            self._doc = doc
            try:
                self._write_doc(doc)
            except RecordingError as err:
                failures.append(err)
            if failures:
                raise failures[0]

        result: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                write_end()
            except BaseException as exc:
                result.set_exception(exc)
            else:
                result.set_result(None)
            finally:
                self.release_liveness()

        submit(run)
        return result

    def flush_due(self, now: float, max_age: float) -> None:
        """Flush the channels whose oldest buffered data is ``max_age`` old (RecordingError);
        save session.json on the spool's worker if it changed (markers, commands, exits)."""
        for channel in self._channels:
            channel.writer.flush_if_older(now, max_age)
        if self._dirty:
            self.save_later().add_done_callback(self._saved)

    def _saved(self, future: concurrent.futures.Future[None]) -> None:
        error = future.exception()
        if error is not None:
            log.warning("session %s: %s", self.session_id, error)


TITLE_COMMAND_CHARS = 80  # how much of an exec command a cast title shows


def _title_part(command: str) -> str:
    """The start of a command for a cast title."""
    if len(command) <= TITLE_COMMAND_CHARS:
        return command
    return command[:TITLE_COMMAND_CHARS] + "…"
