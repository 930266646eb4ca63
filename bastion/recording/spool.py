"""The recording spool: one directory per session, locked by the running server, crash-recovered.

The file names and states are ``layout``'s. ``<spool>/.lock`` is flock'd exclusively by the
running server (and holds its pid); each session directory (session.py) holds its session.json
(state "active" at start, rewritten atomically) and one recording per channel: an asciicast
(asciicast.py) for a channel with a pty, byte-exact streams (streams.py) without. Crash recovery
is recovery.py's.

Every name is generated here, never taken from a client. Nothing in this module runs a session
without its recording: every failure to create or write raises RecordingError and the caller
refuses or ends the session. All methods are meant for the event loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.errors import RecordingError, SpoolBusy
from bastion.fsutil import fsync_dir
from bastion.recording.asciicast import Clock
from bastion.recording.durable import DIR_MODE, FILE_MODE, rfc3339
from bastion.recording.layout import (
    LOCK_FILE,
    RESERVE_BYTES,
    RESERVE_FILE,
    SESSION_SCHEMA,
    SessionState,
    new_session_id,
)
from bastion.recording.liveness import hold_liveness, session_liveness
from bastion.recording.recovery import RecoveryResult, recover_session
from bastion.recording.session import RESERVED_FIELDS, ChannelWriter, SessionRecording

__all__ = ["IDLE_FLUSH_AGE", "ChannelWriter", "SessionRecording", "Spool"]

log = logging.getLogger("bastion.recording")

IDLE_FLUSH_AGE = 0.5  # flush_due, called every 0.5 s, flushes data this old: on disk within 1 s


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class Spool:
    """The spool directory of one bastion node."""

    def __init__(self, root: Path, node_id: str, *, clock: Clock = time.monotonic,
                 wall: Clock = time.time) -> None:
        self.root = Path(root)
        self.node_id = node_id
        self.clock = clock  # monotonic: event times and flush ages
        self.wall = wall  # Unix time: session ids, headers, start/end
        self.recovery_skipped: list[tuple[Path, str]] = []  # (dir, why) from the last recover()
        self.recovery_results: list[RecoveryResult] = []  # from the last recover()
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

    @property
    def lock_fd(self) -> int:
        """The descriptor holding the spool lock (handed to worker processes)."""
        self._require_lock()
        assert self._lock_fd is not None
        return self._lock_fd

    def lock(self, wait: float = 0.0) -> None:
        """Create the spool (0750) and take its exclusive lock, or raise RecordingError;
        ``wait`` seconds for a previous holder to go (a crashed node's workers dying)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return self._lock_once()
            except SpoolBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def _lock_once(self) -> None:
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
            raise SpoolBusy(
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
        self._make_reserve()

    def _make_reserve(self) -> bool:
        """Hold RESERVE_BYTES of the spool's disk back for finishing failed sessions; False if
        there is not that much space (the spool then runs without one)."""
        path = self.root / RESERVE_FILE
        try:
            if path.is_file() and path.stat().st_size >= RESERVE_BYTES:
                return True
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("spool %s: no space reserve for finishing failed sessions: %s",
                        self.root, _reason(exc))
            with contextlib.suppress(OSError):
                path.unlink()
            return False
        return True

    def _free_bytes(self) -> int:
        """Space left for unprivileged writes on the spool's disk (huge if it cannot be told)."""
        try:
            st = os.statvfs(self.root)
        except OSError:
            return 1 << 62
        return st.f_bavail * st.f_frsize

    def release_reserve(self) -> bool:
        """Free the reserved space (the disk is full and a session must still be finished);
        True if there was a reserve to free. It is made again at the next start."""
        try:
            (self.root / RESERVE_FILE).unlink()
        except OSError:
            return False
        log.warning("spool %s is full: released the space reserve to finish sessions",
                    self.root)
        return True

    def adopt_lock(self, fd: int) -> None:
        """Use a lock descriptor a supervising process took and handed down (the workers of
        ``bastion serve --workers`` share the node's spool; the supervisor recovers it)."""
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the spool lock (at shutdown, after every session finished), and the
        liveness locks of any session still open: this process is done with all of them."""
        for recording in self._sessions.values():
            recording.release_liveness()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def recover(self) -> list[Path]:
        """Close sessions a crash left "active" (see recovery.py); return their dirs.

        Each is marked interrupted, or damaged when a recording holds invalid records; what was
        done is in ``recovery_results``. A session that cannot be recovered (damaged
        session.json...) is logged as a warning and listed in ``recovery_skipped``; it does not
        stop the others.
        """
        self._require_lock()
        recovered: list[Path] = []
        self.recovery_skipped = []
        self.recovery_results = []
        try:
            entries = sorted(self.root.iterdir())
        except OSError as exc:
            raise RecordingError(f"cannot read spool {self.root}: {_reason(exc)}") from None
        for entry in entries:
            if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir() \
                    or entry.name in self._sessions:
                continue
            try:
                with session_liveness(entry, wait=False) as dead:
                    if not dead:
                        continue  # another worker process of this node is recording it
                    result = recover_session(entry)
                if result is not None:
                    recovered.append(entry)
                    self.recovery_results.append(result)
            except (OSError, RecordingError, ValueError, RecursionError) as exc:
                # whatever one session's files hold, the others are still recovered
                why = str(exc) if isinstance(exc, RecordingError) else \
                    f"cannot recover {entry}: " \
                    f"{_reason(exc) if isinstance(exc, OSError) else str(exc)[:200]}"
                log.warning("%s", why)
                self.recovery_skipped.append((entry, why))
        return recovered

    def start_session(self, meta: dict[str, Any]) -> SessionRecording:
        """Create the session's directory and its session.json (state "active") durably.

        ``meta`` holds identity, client and target (and may hold other non-reserved fields).
        """
        self._require_lock()
        # A new session needs the reserve in place and as much free space again: the reserve
        # is for finishing sessions, never for starting one on a full disk.
        self._make_reserve()
        if self._free_bytes() < RESERVE_BYTES:
            raise RecordingError(f"spool {self.root} is full; no new session can be recorded")
        reserved = sorted(RESERVED_FIELDS.intersection(meta))
        if reserved:
            raise ValueError(f"session.json fields {reserved} are managed by the spool")
        started = self.wall()
        for _attempt in range(8):
            session_id = new_session_id(started)
            path = self.root / session_id
            try:
                path.mkdir(mode=DIR_MODE)
                live_fd = hold_liveness(path)
                break
            except FileExistsError:
                continue  # 48 random bits collided: draw again
            except OSError as exc:
                raise RecordingError(
                    f"cannot record session: cannot create {path}: {_reason(exc)}") from None
        else:
            raise RecordingError(f"cannot record session: cannot create a directory in {self.root}")
        doc: dict[str, Any] = {
            "schema": SESSION_SCHEMA, "session_id": session_id, "node_id": self.node_id,
            "state": SessionState.ACTIVE.value, "identity": {}, "client": {}, "target": {},
            "start": rfc3339(started), "end": None, "end_reason": None, "recordings": [],
            "channels": [], "commands": [], "masks": {}, "approvals": []}
        doc.update(copy.deepcopy(meta))
        recording = SessionRecording(self, session_id, path, doc, live_fd)
        try:
            recording.save()
            fsync_dir(self.root)
        except (OSError, RecordingError) as exc:
            recording.release_liveness()
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
