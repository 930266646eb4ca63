"""Session manifests: what a sealed session contains, built from its spool folder and parsed back.

A manifest is one canonical JSON object (see ``canonical``) stored as ``manifest.json`` beside
the recordings; ``manifest.sig`` beside it holds the Ed25519 signature over exactly those bytes.
The schema is documented in docs/evidence.md; its number selects the canonical form:

- schema 2 (written now): RFC 8785 (JCS); ``files`` lists every file of the session (each
  recording file and session.json) with size and SHA-256; ``channels`` carries each channel's
  kind, command, files and exit status or signal; ``commands`` the command log.
- schema 1 (the first release; verified, never written): the legacy canonical form;
  ``recordings`` lists the asciicast files only.
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
from bastion.evidence.canonical import is_jcs, is_legacy_canonical, jcs
from bastion.recording.layout import (
    FINAL_STATES,
    MANIFEST_FILE,
    SESSION_FILE,
    SESSION_ID_RE,
    SESSION_SCHEMAS,
    SIGNATURE_FILE,
    is_recording_name,
    parse_recording_name,
)

MANIFEST_SCHEMA = 2  # what build_manifest writes
LEGACY_SCHEMA = 1
MANIFEST_NAME = MANIFEST_FILE  # (names kept for the callers of the first release)
SIGNATURE_NAME = SIGNATURE_FILE
SESSION_META_NAME = SESSION_FILE
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
END_STATES = tuple(s.value for s in FINAL_STATES)
_CHUNK = 1 << 20

# Fields every manifest carries, with the JSON type each must have, by schema.
_COMMON: dict[str, type | tuple[type, ...]] = {
    "schema": int, "session_id": str, "node_id": str, "sequence": int,
    "previous": (str, type(None)), "state": str, "end_reason": (str, type(None)),
    "start": str, "end": (str, type(None)), "sealed_at": str,
    "identity": dict, "client": dict, "target": dict,
    "commands": list, "masks": dict, "approvals": list, "recording_errors": list,
}
_FIELD_TYPES: dict[int, dict[str, type | tuple[type, ...]]] = {
    LEGACY_SCHEMA: {**_COMMON, "recordings": list},
    MANIFEST_SCHEMA: {**_COMMON, "files": list, "channels": list},
}


@dataclass(frozen=True)
class FileEntry:
    """One file of a session as the manifest lists it."""

    name: str
    size: int
    sha256: str

    def as_json(self) -> dict[str, Any]:
        """The entry as it appears in the manifest."""
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


RecordingEntry = FileEntry  # the schema 1 name


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest plus the exact bytes it was read from (what the signature covers)."""

    doc: dict[str, Any]
    raw: bytes

    @property
    def schema(self) -> int:
        """The manifest's schema number."""
        return int(self.doc.get("schema", 0))

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
    def files(self) -> tuple[FileEntry, ...]:
        """Every file this manifest vouches for (schema 1: the casts)."""
        key = "recordings" if self.schema == LEGACY_SCHEMA else "files"
        return tuple(FileEntry(r["name"], r["size"], r["sha256"])
                     for r in self.doc.get(key) or ())

    @property
    def recordings(self) -> tuple[FileEntry, ...]:
        """The recording files this manifest vouches for (``files`` without session.json)."""
        return tuple(f for f in self.files if f.name != SESSION_FILE)


def hash_file(path: Path) -> tuple[int, str]:
    """Size and SHA-256 (hex) of a file, read in chunks."""
    with path.open("rb") as fh:
        return hash_chunks(iter(lambda: fh.read(_CHUNK), b""))


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
    path = session_dir / SESSION_FILE
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
    if not isinstance(session_id, str) or not SESSION_ID_RE.match(session_id):
        raise ManifestError(f"{path}: session_id {session_id!r} is not a session id")
    if session_id != session_dir.name:
        raise ManifestError(f"{path}: session_id {session_id} does not match its folder name")
    if meta.get("state") not in END_STATES:
        raise ManifestError(f"{path}: state {meta.get('state')!r} is not a finished state "
                            f"({', '.join(END_STATES)})")
    names = meta.get("recordings")
    if not isinstance(names, list) or not all(
            isinstance(n, str) and is_recording_name(n) for n in names):
        raise ManifestError(f"{path}: recordings must be a list of recording file names "
                            "(1-shell.cast, 2-exec.stdout...)")
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: a recording is listed twice")
    for key in ("channels", "commands"):
        if not isinstance(meta.get(key, []), list):
            raise ManifestError(f"{path}: {key} must be a list")
    return meta


def _session_files(session_dir: Path, listed: list[str]) -> list[str]:
    """Every recording file of the folder (those session.json lists must be there), in channel
    order, then session.json."""
    present = {p.name for p in session_dir.iterdir()
               if is_recording_name(p.name) and p.is_file() and not p.is_symlink()}
    missing = sorted(set(listed) - present)
    if missing:
        raise ManifestError(f"{session_dir}: recording {missing[0]} is listed in "
                            f"{SESSION_FILE} but missing")

    def order(name: str) -> tuple[int, int, str]:
        parsed = parse_recording_name(name)
        assert parsed is not None
        return parsed.number, list(type(parsed.part)).index(parsed.part), name

    return [*sorted(present, key=order), SESSION_FILE]


def build_manifest(session_dir: Path, meta: dict[str, Any], *, sequence: int,
                   previous: str | None, sealed_at: str) -> bytes:
    """The canonical (schema 2) manifest bytes for a finished session folder; hashes every file
    of the folder."""
    files = []
    for name in _session_files(session_dir, meta["recordings"]):
        path = session_dir / name
        try:
            size, sha = hash_file(path)
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read: {exc.strerror}") from None
        files.append(FileEntry(name, size, sha).as_json())
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
        "files": files,
        "channels": meta.get("channels") or [],
        "commands": meta.get("commands") or [],
        "masks": meta.get("masks") or {},
        "approvals": meta.get("approvals") or [],
        "recording_errors": meta.get("recording_errors") or [],
    }
    raw = jcs(doc)
    parse_manifest(raw)  # never sign what a verifier would refuse to read
    return raw


def parse_manifest(raw: bytes, where: str = "manifest") -> Manifest:
    """Parse manifest bytes: its schema's canonical form, every field's type, every file."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ManifestError(f"{where}: not JSON") from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    # Only an int is looked up: a list is unhashable, and True or 1.0 would pass for 1.
    if type(schema) is not int or schema not in _FIELD_TYPES:
        raise ManifestError(f"{where}: schema {schema!r} is not one this release knows "
                            f"({', '.join(map(str, sorted(_FIELD_TYPES)))})")
    canonical = is_legacy_canonical(raw) if schema == LEGACY_SCHEMA else is_jcs(raw)
    if not canonical:
        form = "canonical JSON" if schema == LEGACY_SCHEMA else "RFC 8785 (JCS) canonical JSON"
        raise ManifestError(f"{where}: not a manifest in {form} form")
    for key, kind in _FIELD_TYPES[schema].items():
        if key not in doc:
            raise ManifestError(f"{where}: field {key} is missing")
        value = doc[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ManifestError(f"{where}: field {key} has the wrong type")
    if not SESSION_ID_RE.match(doc["session_id"]):
        raise ManifestError(f"{where}: session_id {doc['session_id']!r} is not a session id")
    if doc["sequence"] < 1:
        raise ManifestError(f"{where}: sequence must be 1 or more")
    if doc["previous"] is not None and not SHA256_HEX.match(doc["previous"]):
        raise ManifestError(f"{where}: previous is not a SHA-256 hex digest")
    if (doc["sequence"] == 1) != (doc["previous"] is None):
        raise ManifestError(f"{where}: previous must be null exactly for sequence 1")
    _check_files(doc, schema, where)
    return Manifest(doc=doc, raw=raw)


def _check_files(doc: dict[str, Any], schema: int, where: str) -> None:
    key = "recordings" if schema == LEGACY_SCHEMA else "files"
    names = []
    for entry in doc[key]:
        if not (isinstance(entry, dict) and set(entry) == {"name", "size", "sha256"}
                and isinstance(entry["name"], str)
                and (is_recording_name(entry["name"])
                     or (schema != LEGACY_SCHEMA and entry["name"] == SESSION_FILE))
                and isinstance(entry["size"], int) and not isinstance(entry["size"], bool)
                and entry["size"] >= 0
                and isinstance(entry["sha256"], str) and SHA256_HEX.match(entry["sha256"])):
            raise ManifestError(f"{where}: a {key} entry is malformed")
        names.append(entry["name"])
    if len(set(names)) != len(names):
        raise ManifestError(f"{where}: a file is listed twice")
    if schema != LEGACY_SCHEMA:
        if SESSION_FILE not in names:
            raise ManifestError(f"{where}: {SESSION_FILE} is not listed in files")
        if doc["state"] not in END_STATES:
            raise ManifestError(f"{where}: state {doc['state']!r} is not a finished state")
