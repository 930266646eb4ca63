"""``bastion upload``: move sealed sessions from the spool to S3, verified, then clean up.

Before anything of a session goes up, its manifest's signature is checked against the trusted
keys and every file against the manifest (a bad session is refused, named in the summary, and
left in the spool: the bucket is Object-Locked, a bad upload could never be taken back).

Per session: every file the manifest lists (recordings, streams, timing, session.json;
gzip-compressed), then ``manifest.sig``, then ``manifest.json`` last, so a manifest in the bucket
means its session is complete (keys: see keys.py). Data objects go up concurrently, but
signatures and manifests are placed by one thread, one session at a time in chain (sequence)
order, so ``bastion verify`` running during an upload never sees manifest N+1 without manifest
N (a false "gap"). When a session fails for a reason the store gave, the manifests after it wait
for the next run; a session refused for a local reason (bad signature, altered file) is a real
hole in the bucket's chain and later sessions still go up. Only when every object of a
session is verified in S3 does the run write ``uploaded.json`` in the session folder; only
sessions with that marker are ever removed locally (at once, or after ``keep_days``), after a
fresh HEAD check.

A run holds ``<state_dir>/upload.lock`` (flock) so two runs never overlap. Any step may be
interrupted: nothing is removed before verification, objects are never overwritten, and an
object found already in S3 is verified instead of uploaded again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.errors import ManifestError, StorageError, VerificationFailed
from bastion.evidence.manifest import Manifest, hash_file, parse_manifest
from bastion.evidence.seal import is_sealed, unsealed_sessions
from bastion.evidence.sources import LocalSource
from bastion.evidence.verify import SignedByTrustedKey, StoredWhereItSays, TrustedKey
from bastion.recording.layout import MANIFEST_FILE, SESSION_FILE, SIGNATURE_FILE, UPLOADED_FILE
from bastion.storage.client import StoreUnreachable
from bastion.storage.keys import object_name, session_prefix
from bastion.storage.objects import LockSettings, ObjectStore, Placed, compress, prepare
from bastion.storage.stuck import spool_lock_held, stuck_sessions

UPLOADED_MARKER = UPLOADED_FILE

EXIT_OK = 0  # everything found was uploaded and verified, or another run holds the lock
EXIT_FAILED = 1  # at least one session could not be uploaded or verified
EXIT_ATTENTION = 3  # uploads fine, but sessions sit unsealed (or stuck active) in the spool


@dataclass(frozen=True)
class UploadSettings:
    """What an upload run needs from the config."""

    spool_dir: Path
    state_dir: Path
    bucket: str
    prefix: str
    object_lock_mode: str | None
    retention_days: int
    concurrency: int
    multipart_threshold: int
    keep_days: int
    trusted_keys: tuple[TrustedKey, ...] = ()  # a manifest must verify with one to go up
    # Sessions this node's running server records (the registry); None: stuck not checked.
    running: frozenset[str] | None = None


class _Deferred(Exception):
    """A session whose manifest waits because an earlier one in the chain did not go up."""


@dataclass
class Summary:
    """The outcome of one run; printed as JSON when not on a terminal."""

    bucket: str
    prefix: str
    status: str = "ok"
    uploaded: list[str] = field(default_factory=list)
    already_in_store: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    unsealed: list[dict[str, str]] = field(default_factory=list)
    stuck: list[dict[str, str]] = field(default_factory=list)  # active, but nothing records it
    objects_uploaded: int = 0
    bytes_uploaded: int = 0
    object_lock: str = ""
    seconds: float = 0.0

    def exit_code(self) -> int:
        """The exit status a systemd timer alerts on."""
        if self.failed:
            return EXIT_FAILED
        if self.unsealed or self.stuck:
            return EXIT_ATTENTION
        return EXIT_OK

    def as_json(self) -> dict[str, Any]:
        """The summary as one JSON object."""
        return dict(self.__dict__)


class UploadLock:
    """The run lock: an exclusive flock on ``<state_dir>/upload.lock``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "upload.lock"
        self._fd: int | None = None

    def acquire(self, wait: bool) -> bool:
        """Take the lock; without ``wait``, return False at once if another run has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Drop the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Uploader:
    """One upload run over a spool."""

    def __init__(self, settings: UploadSettings, store: ObjectStore,
                 progress: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.progress = progress or (lambda _n: None)
        self.tmp_dir = settings.state_dir / "upload-tmp"
        self._unreachable = threading.Event()  # stop starting sessions once the store is gone

    # -- finding work -----------------------------------------------------------------------
    def pending(self) -> list[tuple[Path, Manifest]]:
        """Sealed, not yet uploaded sessions in chain order."""
        found = []
        if not self.settings.spool_dir.is_dir():
            return []
        for entry in self.settings.spool_dir.iterdir():
            if entry.is_dir() and is_sealed(entry) and not (entry / UPLOADED_MARKER).exists():
                raw = (entry / MANIFEST_FILE).read_bytes()
                try:
                    found.append((entry, parse_manifest(raw, str(entry / MANIFEST_FILE))))
                except ManifestError:
                    found.append((entry, Manifest(doc={"sequence": 0}, raw=raw)))
        return sorted(found, key=lambda item: (item[1].doc.get("sequence", 0), item[0].name))

    def pending_bytes(self, pending: list[tuple[Path, Manifest]]) -> int:
        """Roughly how many bytes the run will move (for the progress bar)."""
        total = 0
        for folder, manifest in pending:
            total += sum(entry.size for entry in manifest.files)
            with contextlib.suppress(OSError):
                total += sum((folder / n).stat().st_size for n in (MANIFEST_FILE, SIGNATURE_FILE))
        return total

    # -- one session --------------------------------------------------------------------------
    def _check_signed(self, folder: Path, manifest: Manifest) -> None:
        """Refuse a session whose manifest does not verify with a trusted key, or that sits in
        another session's folder."""
        if "session_id" not in manifest.doc:
            raise ManifestError(f"{folder / MANIFEST_FILE}: unreadable manifest; not uploaded")
        evidence = next(e for e in LocalSource(folder).sessions() if e.where == str(folder))
        try:
            SignedByTrustedKey(self.settings.trusted_keys).verify(evidence, manifest)
            StoredWhereItSays().verify(evidence, manifest)
        except VerificationFailed as exc:
            raise ManifestError(f"{folder / MANIFEST_FILE}: {exc}; not uploaded "
                                "(investigate: the manifest was changed or not signed by "
                                "this bastion)") from None

    def _upload_data(self, folder: Path, manifest: Manifest, lock: LockSettings) -> list[Placed]:
        """Check the session, then place every file its manifest lists (any thread)."""
        if self._unreachable.is_set():
            raise StoreUnreachable("not attempted: the object store is unreachable")
        self._check_signed(folder, manifest)
        base = session_prefix(self.settings.prefix, manifest)
        placed = []
        for entry in manifest.files:
            local = folder / entry.name
            try:
                size, sha = hash_file(local)
            except OSError as exc:
                raise ManifestError(f"{local}: cannot read ({exc.strerror}); not uploaded") \
                    from None
            if (size, sha) != (entry.size, entry.sha256):
                raise ManifestError(f"{local} does not match its manifest; not uploaded "
                                    "(investigate: the recording changed after sealing)")
            packed = self.tmp_dir / f"{manifest.session_id}-{object_name(entry.name)}"
            try:
                compress(local, packed)
                item = prepare(f"{base}/{object_name(entry.name)}", packed, entry.sha256, True,
                               self.settings.multipart_threshold)
                placed.append(self.store.place(item, lock, _ignore))
                self.progress(entry.size)  # progress counts local bytes, as the total does
            finally:
                with contextlib.suppress(FileNotFoundError):
                    packed.unlink()
        return placed

    def _upload_manifest(self, folder: Path, manifest: Manifest,
                         lock: LockSettings) -> list[Placed]:
        """Place the signature, then the manifest (one caller thread, in chain order)."""
        base = session_prefix(self.settings.prefix, manifest)
        placed = []
        for name in (SIGNATURE_FILE, MANIFEST_FILE):  # the manifest last: it completes the set
            local = folder / name
            _, sha = hash_file(local)
            item = prepare(f"{base}/{name}", local, sha, False, self.settings.multipart_threshold)
            placed.append(self.store.place(item, lock, _ignore))
            self.progress(item.size)
        return placed

    def _write_marker(self, folder: Path, manifest: Manifest, placed: list[Placed]) -> None:
        marker = {
            "uploaded_at": _now().isoformat(timespec="seconds").replace("+00:00", "Z"),
            "bucket": self.store.bucket,
            "objects": [{"key": p.key, "version_id": p.version_id, "size": p.size}
                        for p in placed],
        }
        tmp = folder / (UPLOADED_MARKER + ".tmp")
        tmp.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, folder / UPLOADED_MARKER)

    def _finish_one(self, folder: Path, manifest: Manifest, data: Future[list[Placed]],
                    lock: LockSettings, summary: Summary, blocked_by: str | None) -> str | None:
        """Wait for a session's data, then place its manifest; returns the session that blocks
        the manifests after it (this one if the store failed it), else ``blocked_by``."""
        name = folder.name
        try:
            placed = data.result()
            if blocked_by is not None:
                raise _Deferred(f"not completed: session {blocked_by} before it in the chain "
                                "did not go up; its manifest goes first (next run)")
            placed += self._upload_manifest(folder, manifest, lock)
            self._write_marker(folder, manifest, placed)
        except (StorageError, ManifestError, OSError, _Deferred) as exc:
            if isinstance(exc, StoreUnreachable):
                self._unreachable.set()
            summary.failed.append({"session": name, "error": str(exc)})
            local_refusal = isinstance(exc, ManifestError)  # a real hole: later ones go on
            return blocked_by if local_refusal or blocked_by else name
        uploaded = [p for p in placed if p.uploaded]
        summary.objects_uploaded += len(uploaded)
        summary.bytes_uploaded += sum(p.size for p in uploaded)
        (summary.uploaded if uploaded else summary.already_in_store).append(name)
        return blocked_by

    # -- cleanup ------------------------------------------------------------------------------
    def _clean(self, summary: Summary) -> None:
        """Remove uploaded sessions whose keep period is over, after re-checking S3."""
        if self._unreachable.is_set() or not self.settings.spool_dir.is_dir():
            return
        for folder in sorted(self.settings.spool_dir.iterdir()):
            marker_path = folder / UPLOADED_MARKER
            if not marker_path.is_file():
                continue
            try:
                marker = json.loads(marker_path.read_text(encoding="utf-8"))
                uploaded_at = dt.datetime.fromisoformat(marker["uploaded_at"])
                keys = [o["key"] for o in marker["objects"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                summary.failed.append({"session": folder.name,
                                       "error": f"{marker_path}: unreadable ({exc})"})
                continue
            if _now() - uploaded_at < dt.timedelta(days=self.settings.keep_days):
                summary.kept.append(folder.name)
                continue
            try:
                for key in keys:
                    if self.store.head(key) is None:
                        raise StorageError(f"s3://{self.store.bucket}/{key} is gone; "
                                           "keeping the local copy")
            except StorageError as exc:
                summary.failed.append({"session": folder.name, "error": str(exc)})
                continue
            try:
                gone = _remove_session(folder)
            except (OSError, ManifestError) as exc:
                summary.failed.append({"session": folder.name, "error": f"cleanup: {exc}"})
                continue
            (summary.removed if gone else summary.kept).append(folder.name)

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> Summary:
        """Upload everything pending, clean up, and say what happened."""
        started = time.monotonic()
        summary = Summary(bucket=self.store.bucket, prefix=self.settings.prefix)
        for folder in unsealed_sessions(self.settings.spool_dir):
            summary.unsealed.append({"session": folder.name, "error": "finished but not sealed "
                                     "(see the server's audit log for the sealing error)"})
        if self.settings.running is not None:
            spool = self.settings.spool_dir
            summary.stuck = stuck_sessions(spool, self.settings.running, spool_lock_held(spool))
        pending = self.pending()
        lock = LockSettings(None, 0)
        why_not = "the object store is unreachable"
        try:
            if self.store.object_lock_enabled():
                if self.settings.object_lock_mode:
                    lock = LockSettings(self.settings.object_lock_mode,
                                        self.settings.retention_days)
                    summary.object_lock = (f"{lock.mode} for {lock.days} days")
                else:
                    summary.object_lock = "bucket default retention"
            elif self.settings.object_lock_mode:
                # Asked for, but nothing would protect the objects: upload nothing.
                why_not = "the bucket has no Object Lock"
                summary.object_lock = "none (the bucket has no Object Lock)"
                raise StorageError(f"object_lock_mode is {self.settings.object_lock_mode} but "
                                   f"s3://{self.store.bucket} has no Object Lock; nothing "
                                   "uploaded, local copies kept")
            else:
                summary.object_lock = "none (the bucket has no Object Lock)"
        except StorageError as exc:
            summary.failed.append({"session": "-", "error": str(exc)})
            self._unreachable.set()
        if not self._unreachable.is_set() and pending:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
                data = [pool.submit(self._upload_data, f, m, lock) for f, m in pending]
                blocked_by: str | None = None
                for (folder, manifest), placed in zip(pending, data, strict=True):
                    blocked_by = self._finish_one(folder, manifest, placed, lock, summary,
                                                  blocked_by)
        elif self._unreachable.is_set():
            summary.failed.extend({"session": f.name, "error": f"not attempted: {why_not}"}
                                  for f, _ in pending)
        self._clean(summary)
        summary.failed.sort(key=lambda f: f["session"])
        summary.status = {EXIT_OK: "ok", EXIT_FAILED: "failed",
                          EXIT_ATTENTION: "attention"}[summary.exit_code()]
        summary.seconds = round(time.monotonic() - started, 3)
        return summary


def _ignore(_count: int) -> None:
    """A progress callback that does nothing."""


def _remove_session(folder: Path) -> bool:
    """Remove the files of an uploaded session that S3 (or its manifest) holds; then the
    folder if nothing else is in it. Returns whether the folder is gone."""
    manifest = parse_manifest((folder / MANIFEST_FILE).read_bytes(), str(folder))
    names = [e.name for e in manifest.files if e.name != SESSION_FILE]
    # session.json is in S3 (schema 2) or its content in the signed manifest (schema 1);
    # uploaded.json goes last.
    for name in [*names, SIGNATURE_FILE, SESSION_FILE, MANIFEST_FILE, UPLOADED_MARKER]:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    try:
        folder.rmdir()
    except OSError:
        return False
    return True
