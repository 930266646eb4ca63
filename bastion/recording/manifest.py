"""Session manifests: what a sealed session contains, built from its spool folder and parsed back.

A manifest is one canonical JSON object (see ``bastion.recording.canonical``) stored as
``manifest.json`` beside the recordings; ``manifest.sig`` beside it holds the Ed25519 signature
over exactly those bytes. The schema is documented in docs/evidence.md; ``MANIFEST_SCHEMA`` is
its version and changes whenever a field changes meaning.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.errors import ManifestError
from bastion.recording.canonical import canonical_json, is_canonical
from bastion.recording.layout import FINAL_STATES, SESSION_SCHEMAS, is_recording_name

MANIFEST_SCHEMA = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
SESSION_META_NAME = "session.json"
SESSION_ID = re.compile(r"^(\d{8}T\d{6}Z)-[0-9a-f]{12}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
END_STATES = tuple(s.value for s in FINAL_STATES)
_CHUNK = 1 << 20

# Fields every manifest carries, with the JSON type each must have.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "schema": int, "session_id": str, "node_id": str, "sequence": int,
    "previous": (str, type(None)), "state": str, "end_reason": (str, type(None)),
    "start": str, "end": (str, type(None)), "sealed_at": str,
    "identity": dict, "client": dict, "target": dict, "recordings": list,
    "commands": list, "masks": dict, "approvals": list, "recording_errors": list,
}


@dataclass(frozen=True)
class RecordingEntry:
    """One recording file as the manifest lists it."""

    name: str
    size: int
    sha256: str

    def as_json(self) -> dict[str, Any]:
        """The entry as it appears in the manifest."""
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest plus the exact bytes it was read from (what the signature covers)."""

    doc: dict[str, Any]
    raw: bytes

    @property
    def session_id(self) -> str:
        """The session this manifest seals."""
        return str(self.doc["session_id"])

    @property
    def node_id(self) -> str:
        """The bastion node whose chain this manifest belongs to."""
        return str(self.doc["node_id"])

    @property
    def sequence(self) -> int:
        """Position in the node's chain, from 1."""
        return int(self.doc["sequence"])

    @property
    def previous(self) -> str | None:
        """SHA-256 (hex) of the node's previous manifest, None for the first."""
        value = self.doc["previous"]
        return None if value is None else str(value)

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the manifest bytes: what the next manifest's ``previous`` holds."""
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def recordings(self) -> tuple[RecordingEntry, ...]:
        """The recording files this manifest vouches for."""
        return tuple(RecordingEntry(r["name"], r["size"], r["sha256"])
                     for r in self.doc["recordings"])


def session_date(session_id: str) -> str:
    """The UTC start date of a session as ``YYYY/MM/DD``, from its id."""
    m = SESSION_ID.match(session_id)
    if not m:
        raise ManifestError(f"{session_id!r} is not a session id")
    stamp = m.group(1)
    return f"{stamp[0:4]}/{stamp[4:6]}/{stamp[6:8]}"


def hash_file(path: Path) -> tuple[int, str]:
    """Size and SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def hash_chunks(chunks: Iterable[bytes]) -> tuple[int, str]:
    """Size and SHA-256 (hex) of a byte stream."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def read_session_meta(session_dir: Path) -> dict[str, Any]:
    """Read and check ``session.json`` of a finished session folder."""
    path = session_dir / SESSION_META_NAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable session metadata: {exc}") from None
    if not isinstance(meta, dict) or meta.get("schema") not in SESSION_SCHEMAS:
        raise ManifestError(f"{path}: not a session.json this release knows (schema "
                            f"{', '.join(map(str, sorted(SESSION_SCHEMAS)))})")
    session_id = meta.get("session_id")
    if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
        raise ManifestError(f"{path}: session_id {session_id!r} is not a session id")
    if session_id != session_dir.name:
        raise ManifestError(f"{path}: session_id {session_id} does not match its folder name")
    if meta.get("state") not in END_STATES:
        raise ManifestError(f"{path}: state {meta.get('state')!r} is not a finished state "
                            f"({', '.join(END_STATES)})")
    names = meta.get("recordings")
    if not isinstance(names, list) or not all(
            isinstance(n, str) and is_recording_name(n) for n in names):
        raise ManifestError(f"{path}: recordings must be a list of names like 1-shell.cast")
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: a recording is listed twice")
    return meta


def build_manifest(session_dir: Path, meta: dict[str, Any], *, sequence: int,
                   previous: str | None, sealed_at: str) -> bytes:
    """The canonical manifest bytes for a finished session folder (hashes every recording)."""
    recordings = []
    for name in meta["recordings"]:
        path = session_dir / name
        try:
            size, sha = hash_file(path)
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read recording: {exc.strerror}") from None
        recordings.append(RecordingEntry(name, size, sha).as_json())
    doc: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "session_id": meta["session_id"],
        "node_id": meta.get("node_id"),
        "sequence": sequence,
        "previous": previous,
        "state": meta["state"],
        "end_reason": meta.get("end_reason"),
        "start": meta.get("start"),
        "end": meta.get("end"),
        "sealed_at": sealed_at,
        "identity": meta.get("identity") or {},
        "client": meta.get("client") or {},
        "target": meta.get("target") or {},
        "recordings": recordings,
        "commands": meta.get("commands") or [],
        "masks": meta.get("masks") or {},
        "approvals": meta.get("approvals") or [],
        "recording_errors": meta.get("recording_errors") or [],
    }
    raw = canonical_json(doc)
    parse_manifest(raw)  # never sign what a verifier would refuse to read
    return raw


def parse_manifest(raw: bytes, where: str = "manifest") -> Manifest:
    """Parse manifest bytes, checking the canonical form and every field's type."""
    if not is_canonical(raw):
        raise ManifestError(f"{where}: not a manifest in canonical JSON form")
    doc = json.loads(raw.decode("utf-8"))
    if doc.get("schema") != MANIFEST_SCHEMA:
        raise ManifestError(f"{where}: schema {doc.get('schema')!r} is not "
                            f"{MANIFEST_SCHEMA}")
    for key, kind in _FIELD_TYPES.items():
        if key not in doc:
            raise ManifestError(f"{where}: field {key} is missing")
        value = doc[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ManifestError(f"{where}: field {key} has the wrong type")
    if not SESSION_ID.match(doc["session_id"]):
        raise ManifestError(f"{where}: session_id {doc['session_id']!r} is not a session id")
    if doc["sequence"] < 1:
        raise ManifestError(f"{where}: sequence must be 1 or more")
    if doc["previous"] is not None and not SHA256_HEX.match(doc["previous"]):
        raise ManifestError(f"{where}: previous is not a SHA-256 hex digest")
    if (doc["sequence"] == 1) != (doc["previous"] is None):
        raise ManifestError(f"{where}: previous must be null exactly for sequence 1")
    for entry in doc["recordings"]:
        if not (isinstance(entry, dict) and set(entry) == {"name", "size", "sha256"}
                and isinstance(entry["name"], str) and is_recording_name(entry["name"])
                and isinstance(entry["size"], int) and entry["size"] >= 0
                and isinstance(entry["sha256"], str) and SHA256_HEX.match(entry["sha256"])):
            raise ManifestError(f"{where}: a recordings entry is malformed")
    return Manifest(doc=doc, raw=raw)
