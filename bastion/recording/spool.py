"""The recording spool: one directory per session, locked by the running server, crash-recovered.

Layout (storage/ and replay/ read it)::

    <spool>/.lock                        flock'd exclusively by the running server (holds its pid)
    <spool>/<session_id>/session.json    metadata: state "active" at start, rewritten atomically
    <spool>/<session_id>/<n>-<kind>.cast asciicast v2, one per session channel, n = 1, 2, ...

Every name is generated here, never taken from a client. Nothing in this module runs a session
without its recording: every failure to create or write raises RecordingError and the caller
refuses or ends the session. All methods are meant for the event loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.errors import RecordingError
from bastion.fsutil import fsync_dir
from bastion.recording.asciicast import (
    INTERRUPTED,
    CastWriter,
    Clock,
    build_header,
    close_interrupted,
    create_cast,
)
from bastion.recording.durable import DIR_MODE, FILE_MODE, rfc3339, write_json_atomic

log = logging.getLogger("bastion.recording")

SESSION_FILE = "session.json"
LOCK_FILE = ".lock"
SCHEMA = 1
FINAL_STATES = frozenset({"closed", "interrupted", "refused", "killed"})
IDLE_FLUSH_AGE = 0.5  # flush_due, called every 0.5 s, flushes data this old: on disk within 1 s
DEFAULT_SIZE = (80, 24)  # header size for channels without a pty (exec, sftp)
SESSION_ID_RE = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{12}\Z")
CAST_NAME_RE = re.compile(r"([1-9][0-9]*)-([a-z][a-z0-9]{0,15})\.cast\Z")
_KIND_RE = re.compile(r"[a-z][a-z0-9]{0,15}\Z")
# Keys of session.json only this module writes.
_RESERVED = frozenset({"schema", "session_id", "node_id", "state", "start", "end", "end_reason",
                       "recordings"})


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def new_session_id(unix_time: float) -> str:
    """``YYYYMMDDTHHMMSSZ-`` (UTC start) plus 12 random lowercase hex digits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(unix_time)) + "-" + secrets.token_hex(6)


class SessionRecording:
    """One session's directory: its metadata and the asciicast writer of each channel."""

    def __init__(self, spool: Spool, session_id: str, path: Path, doc: dict[str, Any]) -> None:
        self.session_id = session_id
        self.path = path
        # Called by Spool.flush_due when a background flush fails: end the session with a notice.
        self.on_failure: Callable[[RecordingError], None] | None = None
        self._spool = spool
        self._doc = doc
        self._writers: list[CastWriter] = []
        self._channels = 0
        self._finished = False

    @property
    def finished(self) -> bool:
        """True once finish() ran."""
        return self._finished

    @property
    def writers(self) -> list[CastWriter]:
        """Every channel writer opened so far, in channel order."""
        return list(self._writers)

    def metadata(self) -> dict[str, Any]:
        """A copy of session.json as it is now in memory."""
        return copy.deepcopy(self._doc)

    def open_channel(self, kind: str, *, width: int, height: int, term: str | None,
                     command: str | None, user: str, target: str, login: str) -> CastWriter:
        """Create ``<n>-<kind>.cast`` with its header on disk; RecordingError if impossible."""
        writer = self._create_channel(kind, width=width, height=height, term=term,
                                      command=command, user=user, target=target, login=login)
        try:
            self.save()
        except RecordingError:
            writer.close()
            raise
        return writer

    async def open_channel_async(self, kind: str, *, width: int, height: int,
                                 term: str | None, command: str | None, user: str, target: str,
                                 login: str) -> CastWriter:
        """``open_channel`` whose session.json save (an fsync) runs on the spool's worker."""
        writer = self._create_channel(kind, width=width, height=height, term=term,
                                      command=command, user=user, target=target, login=login)
        try:
            await asyncio.wrap_future(self.save_later())
        except RecordingError:
            writer.close_deferred(self._spool.submit)
            raise
        return writer

    def _create_channel(self, kind: str, *, width: int, height: int, term: str | None,
                        command: str | None, user: str, target: str, login: str) -> CastWriter:
        if self._finished:
            raise RecordingError(f"recording stopped: session {self.session_id} is finished")
        if not _KIND_RE.match(kind):
            raise ValueError(f"bad channel kind {kind!r}")
        self._channels += 1
        number = self._channels
        name = f"{number}-{kind}.cast"
        if width <= 0 or height <= 0:
            width, height = DEFAULT_SIZE
        title = f"{user} -> {login}@{target}" + (f": {command}" if command is not None else "")
        header = build_header(
            width=width, height=height, timestamp=int(self._spool.wall()), term=term,
            title=title, command=command,
            bastion={"session_id": self.session_id, "user": user, "target": target,
                     "login": login, "channel": number, "kind": kind, "command": command})
        writer = create_cast(self.path / name, header, clock=self._spool.clock)
        self._writers.append(writer)
        self._doc["recordings"].append(name)
        return writer

    def set_field(self, key: str, value: Any) -> None:
        """Set a session.json field; ``a.b`` sets ``b`` inside object ``a``. Saved with the next
        save(), open_channel() or finish()."""
        parts = key.split(".")
        if parts[0] in _RESERVED:
            raise ValueError(f"session.json field {parts[0]!r} is managed by the spool")
        node = self._doc
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"session.json field {part!r} is not an object")
            node = child
        node[parts[-1]] = copy.deepcopy(value)

    def append_field(self, key: str, item: Any) -> None:
        """Append to a list field of session.json (``commands``, ``approvals``)."""
        if key in _RESERVED:
            raise ValueError(f"session.json field {key!r} is managed by the spool")
        current = self._doc.setdefault(key, [])
        if not isinstance(current, list):
            raise ValueError(f"session.json field {key!r} is not a list")
        current.append(copy.deepcopy(item))

    def save(self) -> None:
        """Write session.json durably now (atomic rewrite)."""
        self._write_doc(self._doc)

    def save_later(self) -> concurrent.futures.Future[None]:
        """Write session.json as it is now, durably, on the spool's worker (after what was
        submitted before)."""
        return self._spool.submit(self._write_doc, copy.deepcopy(self._doc))

    def _write_doc(self, doc: dict[str, Any]) -> None:
        try:
            write_json_atomic(self.path / SESSION_FILE, doc)
        except OSError as exc:
            raise RecordingError(
                f"recording stopped: cannot write {self.path / SESSION_FILE}: {_reason(exc)}"
            ) from None

    def finish(self, state: str, end_reason: str) -> None:
        """Close every channel (flush + fsync) and rewrite session.json with the end; idempotent.

        Raises the first RecordingError met on the way, after doing everything it still can.
        """
        self._finish(state, end_reason, lambda job: job()).result()

    def finish_later(self, state: str, end_reason: str) -> concurrent.futures.Future[None]:
        """``finish`` with the fsyncs and the final session.json on the spool's worker: the
        casts are flushed now and durable before session.json says the session ended."""
        return self._finish(state, end_reason, self._spool.submit)

    def _finish(self, state: str, end_reason: str,
                submit: Callable[..., Any]) -> concurrent.futures.Future[None]:
        if state not in FINAL_STATES:
            raise ValueError(f"bad final session state {state!r}")
        if self._finished:
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            done.set_result(None)
            return done
        self._finished = True
        self._spool._forget(self)  # no background flush touches these writers from now on
        failed_before = {id(w) for w in self._writers if w.error is not None}
        failures: list[RecordingError] = []
        for writer in self._writers:
            try:
                writer.close_deferred(submit)
            except RecordingError as err:
                failures.append(err)
        doc = copy.deepcopy(self._doc)
        doc.update(state=state, end=rfc3339(self._spool.wall()), end_reason=end_reason)
        writers = list(self._writers)

        def write_end() -> None:
            # Runs after every cast's fsync (same ordered worker, or at once when synchronous).
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

        submit(run)
        return result

    def flush_due(self, now: float, max_age: float) -> None:
        """Flush the channels whose oldest buffered output is ``max_age`` old (RecordingError)."""
        for writer in self._writers:
            writer.flush_if_older(now, max_age)


class Spool:
    """The spool directory of one bastion node."""

    def __init__(self, root: Path, node_id: str, *, clock: Clock = time.monotonic,
                 wall: Clock = time.time) -> None:
        self.root = Path(root)
        self.node_id = node_id
        self.clock = clock  # monotonic: event times and flush ages
        self.wall = wall  # Unix time: session ids, headers, start/end
        self.recovery_skipped: list[tuple[Path, str]] = []  # (dir, why) from the last recover()
        self._lock_fd: int | None = None
        self._sessions: dict[str, SessionRecording] = {}
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the spool's one worker thread, after everything submitted before.

        Every fsync of a running server goes through here, so the event loop never waits for
        the disk and a session's writes keep their order (casts durable before session.json).
        """
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="bastion-spool")
        return self._worker.submit(fn, *args)

    def drain(self) -> None:
        """Wait for every submitted write (at shutdown)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

    @property
    def locked(self) -> bool:
        """True while this object holds the spool lock."""
        return self._lock_fd is not None

    @property
    def sessions(self) -> list[SessionRecording]:
        """Sessions started here and not yet finished."""
        return list(self._sessions.values())

    def lock(self) -> None:
        """Create the spool (0750) and take its exclusive lock, or raise RecordingError."""
        if self._lock_fd is not None:
            return
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(self.root / LOCK_FILE,
                         os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise RecordingError(f"cannot use spool {self.root}: {_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RecordingError(
                f"spool {self.root} is in use by another bastion (pid {holder})") from None
        except OSError as exc:
            os.close(fd)
            raise RecordingError(f"cannot lock spool {self.root}: {_reason(exc)}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise RecordingError(f"cannot use spool {self.root}: {_reason(exc)}") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the spool lock (at shutdown, after every session finished)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def recover(self) -> list[Path]:
        """Close sessions a crash left "active": mark them interrupted; return their dirs.

        A session that cannot be recovered (damaged session.json...) is logged as a warning and
        listed in ``recovery_skipped``; it does not stop the others.
        """
        self._require_lock()
        recovered: list[Path] = []
        self.recovery_skipped = []
        try:
            entries = sorted(self.root.iterdir())
        except OSError as exc:
            raise RecordingError(f"cannot read spool {self.root}: {_reason(exc)}") from None
        for entry in entries:
            if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir() \
                    or entry.name in self._sessions:
                continue
            try:
                if self._recover_session(entry):
                    recovered.append(entry)
            except (OSError, RecordingError) as exc:
                why = str(exc) if isinstance(exc, RecordingError) else \
                    f"cannot recover {entry}: {_reason(exc)}"
                log.warning("%s", why)
                self.recovery_skipped.append((entry, why))
        return recovered

    def start_session(self, meta: dict[str, Any]) -> SessionRecording:
        """Create the session's directory and its session.json (state "active") durably.

        ``meta`` holds identity, client and target (and may hold other non-reserved fields).
        """
        self._require_lock()
        reserved = sorted(_RESERVED.intersection(meta))
        if reserved:
            raise ValueError(f"session.json fields {reserved} are managed by the spool")
        started = self.wall()
        for _attempt in range(8):
            session_id = new_session_id(started)
            path = self.root / session_id
            try:
                path.mkdir(mode=DIR_MODE)
                break
            except FileExistsError:
                continue  # 48 random bits collided: draw again
            except OSError as exc:
                raise RecordingError(
                    f"cannot record session: cannot create {path}: {_reason(exc)}") from None
        else:
            raise RecordingError(f"cannot record session: cannot create a directory in {self.root}")
        doc: dict[str, Any] = {
            "schema": SCHEMA, "session_id": session_id, "node_id": self.node_id,
            "state": "active", "identity": {}, "client": {}, "target": {},
            "start": rfc3339(started), "end": None, "end_reason": None, "recordings": [],
            "commands": [], "masks": {}, "approvals": []}
        doc.update(copy.deepcopy(meta))
        recording = SessionRecording(self, session_id, path, doc)
        try:
            recording.save()
            fsync_dir(self.root)
        except (OSError, RecordingError) as exc:
            shutil.rmtree(path, ignore_errors=True)  # nothing was recorded: leave no stray dir
            why = str(exc) if isinstance(exc, RecordingError) else _reason(exc)
            raise RecordingError(f"cannot record session: {why}") from None
        self._sessions[session_id] = recording
        return recording

    def flush_due(self, max_age: float = IDLE_FLUSH_AGE) -> list[tuple[SessionRecording,
                                                                         RecordingError]]:
        """Flush every open writer holding output at least ``max_age`` old.

        Call it every 0.5 s (or run flush_loop): output then reaches the OS within 1 s even when
        the channel goes idle. A failure is logged, passed to the session's ``on_failure`` and
        returned; the writer then refuses further output.
        """
        now = self.clock()
        failures: list[tuple[SessionRecording, RecordingError]] = []
        for recording in list(self._sessions.values()):
            try:
                recording.flush_due(now, max_age)
            except RecordingError as err:
                log.warning("session %s: %s", recording.session_id, err)
                failures.append((recording, err))
                if recording.on_failure is not None:
                    recording.on_failure(err)
        return failures

    async def flush_loop(self, interval: float = IDLE_FLUSH_AGE) -> None:
        """Until cancelled, flush output ``interval`` old every ``interval`` seconds (so it
        reaches the OS within 2 * interval)."""
        while True:
            await asyncio.sleep(interval)
            self.flush_due(max_age=interval)

    def _require_lock(self) -> None:
        if self._lock_fd is None:
            raise RecordingError(f"spool {self.root} is not locked by this bastion")

    def _forget(self, recording: SessionRecording) -> None:
        self._sessions.pop(recording.session_id, None)

    def _recover_session(self, path: Path) -> bool:
        """Mark one crashed session interrupted; False if it was not active."""
        meta_path = path / SESSION_FILE
        try:
            doc = json.loads(meta_path.read_bytes())
        except FileNotFoundError:
            raise RecordingError(f"cannot recover {path}: no {SESSION_FILE}") from None
        except ValueError as exc:
            raise RecordingError(f"cannot recover {path}: {SESSION_FILE} is damaged: {exc}") \
                from None
        if not isinstance(doc, dict) or not isinstance(doc.get("state"), str):
            raise RecordingError(f"cannot recover {path}: {SESSION_FILE} has no state")
        if doc["state"] != "active":
            return False
        casts = sorted(
            (int(m.group(1)), p) for p in path.iterdir()
            if (m := CAST_NAME_RE.match(p.name)) and p.is_file() and not p.is_symlink())
        end = max((p.stat().st_mtime for _, p in casts), default=meta_path.stat().st_mtime)
        fallback = {"version": 2, "width": DEFAULT_SIZE[0], "height": DEFAULT_SIZE[1],
                    "timestamp": int(end),
                    "bastion": {"session_id": doc.get("session_id", path.name),
                                "recovered": True}}
        for _, cast in casts:
            close_interrupted(cast, fallback)
        doc.update(state=INTERRUPTED, end=rfc3339(end), end_reason=INTERRUPTED,
                   recordings=[p.name for _, p in casts])
        write_json_atomic(meta_path, doc)
        log.info("session %s was left active by a crash: marked interrupted", path.name)
        return True
