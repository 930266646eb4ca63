"""Sealing: sign a finished session's manifest and link it into the node's hash chain.

Each node keeps one chain: manifest N holds the SHA-256 of manifest N-1 in ``previous``. The
chain head (sequence and digest of the last sealed manifest) lives in
``<state_dir>/chain/<node>.json`` and is replaced atomically. Sealing is serialized by an
exclusive flock on ``<node>.lock`` so the server and a recovery run never take the same number.

Crash safety: before the manifest is written, the intended head goes to ``<node>.pending``;
the rename of ``manifest.json`` is the commit point. A sealer that finds a pending file rolls the
head forward if that manifest exists with that digest, and drops the pending file otherwise, so a
crash at any step neither forks the chain (two manifests with one number) nor leaves a gap.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError, ManifestError
from bastion.evidence.canonical import jcs
from bastion.evidence.manifest import build_manifest, read_session_meta
from bastion.evidence.signing import Signer
from bastion.fsutil import write_atomic
from bastion.recording.layout import MANIFEST_FILE, SESSION_FILE, SIGNATURE_FILE, SessionState

_FILE_MODE = 0o640


@dataclass(frozen=True)
class ChainHead:
    """The last sealed manifest of a node: its sequence number and digest."""

    sequence: int
    digest: str | None
    session_id: str | None


def _write(path: Path, data: bytes) -> None:
    write_atomic(path, data, _FILE_MODE)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Sealer:
    """Seals finished session folders for one node, in one chain."""

    def __init__(self, signer: Signer, chain_dir: Path, node_id: str) -> None:
        self.signer = signer
        self.node_id = node_id
        self.chain_dir = chain_dir
        self._head_path = chain_dir / f"{node_id}.json"
        self._pending_path = chain_dir / f"{node_id}.pending"
        self._lock_path = chain_dir / f"{node_id}.lock"

    @classmethod
    def from_config(cls, config: Any) -> Sealer:
        """The sealer a config describes (``[evidence]`` must be set)."""
        evidence = config.evidence
        if evidence is None or evidence.signing_key is None:
            raise ConfigError(f"{config.source}: evidence.signing_key is not set")
        return cls(Signer.from_file(evidence.signing_key, evidence.key_id),
                   config.paths.state_dir / "chain", config.server.node_id)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.chain_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise ManifestError(f"cannot open chain lock {self._lock_path}: "
                                f"{exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def head(self) -> ChainHead:
        """The current chain head (sequence 0 before the first seal)."""
        try:
            doc = json.loads(self._head_path.read_text(encoding="utf-8"))
            return ChainHead(int(doc["sequence"]), doc["digest"], doc["session_id"])
        except FileNotFoundError:
            return ChainHead(0, None, None)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Never restart a chain silently: that would hide every earlier manifest.
            raise ManifestError(f"chain head {self._head_path} is unreadable ({exc}); "
                                "restore it from backup or the last uploaded manifest") from None

    def _store_head(self, head: ChainHead) -> None:
        _write(self._head_path, jcs({
            "node_id": self.node_id, "sequence": head.sequence, "digest": head.digest,
            "session_id": head.session_id}))

    def _settle_pending(self) -> None:
        try:
            pending = json.loads(self._pending_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{self._pending_path} is unreadable ({exc})") from None
        manifest = Path(pending["session_dir"]) / MANIFEST_FILE
        with contextlib.suppress(OSError):
            if hashlib.sha256(manifest.read_bytes()).hexdigest() == pending["digest"]:
                self._store_head(ChainHead(pending["sequence"], pending["digest"],
                                           pending["session_id"]))
        self._pending_path.unlink()

    def seal(self, session_dir: Path) -> Path:
        """Seal a finished session folder; return its manifest path (idempotent)."""
        manifest_path = session_dir / MANIFEST_FILE
        with self._locked():
            self._settle_pending()
            if manifest_path.exists() and (session_dir / SIGNATURE_FILE).exists():
                return manifest_path
            meta = read_session_meta(session_dir)
            if meta.get("node_id") != self.node_id:
                raise ManifestError(f"{session_dir}: node_id {meta.get('node_id')!r} is not "
                                    f"this node ({self.node_id})")
            head = self.head()
            raw = build_manifest(session_dir, meta, sequence=head.sequence + 1,
                                 previous=head.digest, sealed_at=_now())
            digest = hashlib.sha256(raw).hexdigest()
            try:
                _write(self._pending_path, jcs({
                    "session_dir": str(session_dir.resolve()), "session_id": meta["session_id"],
                    "sequence": head.sequence + 1, "digest": digest}))
                _write(session_dir / SIGNATURE_FILE, self.signer.signature_file(raw))
                _write(manifest_path, raw)  # the commit point
                self._store_head(ChainHead(head.sequence + 1, digest, meta["session_id"]))
                self._pending_path.unlink()
            except OSError as exc:
                raise ManifestError(f"cannot seal {session_dir}: {exc.strerror}") from None
            return manifest_path

    def seal_spool(self, spool_dir: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
        """Seal every finished, unsealed session in a spool, oldest first.

        Returns (sealed manifest paths, [(session folder, error line)]); one bad session does
        not stop the others.
        """
        sealed: list[Path] = []
        failed: list[tuple[Path, str]] = []
        for session_dir in unsealed_sessions(spool_dir):
            try:
                sealed.append(self.seal(session_dir))
            except (ManifestError, ConfigError) as exc:
                failed.append((session_dir, str(exc)))
        return sealed, failed


def is_sealed(session_dir: Path) -> bool:
    """Whether a session folder holds both manifest.json and manifest.sig."""
    return (session_dir / MANIFEST_FILE).is_file() and (session_dir / SIGNATURE_FILE).is_file()


def unsealed_sessions(spool_dir: Path) -> list[Path]:
    """Finished (not active) session folders without a manifest, in the order they ended."""
    found: list[tuple[str, str, Path]] = []
    if not spool_dir.is_dir():
        return []
    for entry in spool_dir.iterdir():
        if not entry.is_dir() or entry.name.startswith(".") or is_sealed(entry):
            continue
        try:
            meta = json.loads((entry / SESSION_FILE).read_text(encoding="utf-8"))
            state, end = meta["state"], str(meta.get("end") or "")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if state != SessionState.ACTIVE.value:
            found.append((end, entry.name, entry))
    return [entry for _, _, entry in sorted(found)]
