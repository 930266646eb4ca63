"""Verify sealed sessions: signatures, recording hashes and each node's hash chain.

Verification composes small policy objects, as sigstore-python does: each session policy raises
``VerificationFailed`` with one line when its check fails; chain policies name every break in a
node's chain. A ``Verifier`` with no session policies refuses to run, and a scope with no
manifests in it fails, so nothing ever verifies by accident.

Evidence comes from a ``Source``: ``LocalSource`` reads a session folder, a spool or a download;
``S3Source`` reads a bucket prefix (the first-written version of every object, with any newer
version or delete marker reported as tampering).
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion.errors import ManifestError, VerificationFailed
from bastion.recording.layout import is_recording_name
from bastion.recording.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Manifest,
    hash_chunks,
    parse_manifest,
)
from bastion.recording.seal import SignatureFile, key_id_of

_CHUNK = 1 << 20
COMPRESSED_SUFFIX = ".gz"


# -- evidence as read from a source --------------------------------------------------------------

@dataclass
class SessionEvidence:
    """One session's stored evidence, however it was read."""

    where: str  # shown to people: a path or an s3:// URL of the session folder
    folder: str  # the session folder's name (should be the session id)
    node_folder: str | None  # the node part of the key layout, when the layout has one
    manifest_raw: bytes | None
    signature_raw: bytes | None
    open_recording: Callable[[str], Iterable[bytes]]  # raises FileNotFoundError if absent
    stored_names: frozenset[str]  # recording names present (uncompressed names)
    problems: list[str] = field(default_factory=list)  # found while reading (versions)


class Source(Protocol):
    """Where evidence is read from."""

    description: str

    def sessions(self) -> Iterator[SessionEvidence]:
        """Every session folder in scope."""
        ...


def _gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    inflater = zlib.decompressobj(wbits=31)
    for chunk in chunks:
        out = inflater.decompress(chunk)
        if out:
            yield out
    tail = inflater.flush()
    if tail:
        yield tail
    if not inflater.eof:
        raise VerificationFailed("compressed recording is truncated")


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


class LocalSource:
    """Session folders on disk: one folder, or every folder below a path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = str(path)

    def _folders(self) -> list[Path]:
        if not self.path.is_dir():
            raise VerificationFailed(f"{self.path}: no such folder")
        marker_names = {MANIFEST_NAME, SIGNATURE_NAME, "session.json"}
        folders = set()
        for item in self.path.rglob("*"):
            if item.is_file() and (item.name in marker_names or is_recording_name(
                    item.name.removesuffix(COMPRESSED_SUFFIX))):
                folders.add(item.parent)
        return sorted(folders)

    def sessions(self) -> Iterator[SessionEvidence]:
        """Every folder holding a manifest, a signature, session metadata or a recording."""
        for folder in self._folders():
            def read(name: str, folder: Path = folder) -> bytes | None:
                try:
                    return (folder / name).read_bytes()
                except FileNotFoundError:
                    return None

            def open_recording(name: str, folder: Path = folder) -> Iterable[bytes]:
                plain = folder / name
                if plain.is_file():
                    return _file_chunks(plain)
                packed = folder / (name + COMPRESSED_SUFFIX)
                if packed.is_file():
                    return _gunzip(_file_chunks(packed))
                raise FileNotFoundError(name)

            names = frozenset(
                p.name.removesuffix(COMPRESSED_SUFFIX) for p in folder.iterdir()
                if is_recording_name(p.name.removesuffix(COMPRESSED_SUFFIX)))
            yield SessionEvidence(
                where=str(folder), folder=folder.name, node_folder=None,
                manifest_raw=read(MANIFEST_NAME), signature_raw=read(SIGNATURE_NAME),
                open_recording=open_recording, stored_names=names)


@dataclass
class _KeyVersions:
    first: str | None = None  # version id of the first-written version ("null" if unversioned)
    count: int = 0
    deleted: bool = False  # the latest entry is a delete marker


class S3Source:
    """A bucket prefix laid out by ``bastion upload`` (``.../<node>/<session>/<file>``)."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.description = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _list(self) -> dict[str, _KeyVersions]:
        keys: dict[str, _KeyVersions] = {}
        prefix = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_object_versions")
        # S3 lists the versions of a key newest first, so the last one seen is the first written.
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            latest_markers = {m["Key"] for m in page.get("DeleteMarkers", []) if m["IsLatest"]}
            for key in latest_markers:
                keys.setdefault(key, _KeyVersions()).deleted = True
            for version in page.get("Versions", []):
                entry = keys.setdefault(version["Key"], _KeyVersions())
                entry.first = version.get("VersionId") or "null"
                entry.count += 1
        return keys

    def _get(self, key: str, version: str | None) -> Iterator[bytes]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version and version != "null":
            args["VersionId"] = version
        body = self.client.get_object(**args)["Body"]
        try:
            while chunk := body.read(_CHUNK):
                yield chunk
        finally:
            body.close()

    def sessions(self) -> Iterator[SessionEvidence]:
        """Every session folder under the prefix, read at its first-written versions."""
        keys = self._list()
        folders: dict[str, dict[str, _KeyVersions]] = {}
        for key, versions in keys.items():
            folder, _, name = key.rpartition("/")
            if name in (MANIFEST_NAME, SIGNATURE_NAME) or (
                    name.endswith(COMPRESSED_SUFFIX)
                    and is_recording_name(name.removesuffix(COMPRESSED_SUFFIX))):
                folders.setdefault(folder, {})[name] = versions
        for folder, files in sorted(folders.items()):
            where = f"s3://{self.bucket}/{folder}"
            problems = []
            for name, versions in sorted(files.items()):
                if versions.deleted:
                    problems.append(f"{name} was deleted (a delete marker hides it)")
                if versions.count > 1:
                    problems.append(f"{name} has {versions.count} versions: it was overwritten "
                                    "after upload (the first-written version was verified)")

            def fetch(name: str, folder: str = folder,
                      files: dict[str, _KeyVersions] = files) -> bytes | None:
                entry = files.get(name)
                if entry is None or entry.first is None:
                    return None
                return b"".join(self._get(f"{folder}/{name}", entry.first))

            def open_recording(name: str, folder: str = folder,
                               files: dict[str, _KeyVersions] = files) -> Iterable[bytes]:
                entry = files.get(name + COMPRESSED_SUFFIX)
                if entry is None or entry.first is None:
                    raise FileNotFoundError(name)
                return _gunzip(self._get(f"{folder}/{name}{COMPRESSED_SUFFIX}", entry.first))

            parts = folder.split("/")
            yield SessionEvidence(
                where=where, folder=parts[-1], node_folder=parts[-2] if len(parts) > 1 else None,
                manifest_raw=fetch(MANIFEST_NAME), signature_raw=fetch(SIGNATURE_NAME),
                open_recording=open_recording,
                stored_names=frozenset(n.removesuffix(COMPRESSED_SUFFIX) for n in files
                                       if n.endswith(COMPRESSED_SUFFIX)
                                       and is_recording_name(n.removesuffix(COMPRESSED_SUFFIX))),
                problems=problems)


# -- policies -------------------------------------------------------------------------------------

class SessionPolicy(Protocol):
    """One check of one session; raises VerificationFailed with one line when it fails."""

    name: str

    def verify(self, evidence: SessionEvidence, manifest: Manifest) -> None:
        """Raise VerificationFailed unless the check passes."""
        ...


@dataclass(frozen=True)
class TrustedKey:
    """A public key signatures may verify with."""

    key_id: str
    key: Ed25519PublicKey

    @classmethod
    def of(cls, key: Ed25519PublicKey) -> TrustedKey:
        """A trusted key with its default key id."""
        return cls(key_id_of(key), key)


class SignedByTrustedKey:
    """The manifest's Ed25519 signature verifies with one of the trusted public keys."""

    name = "signature"

    def __init__(self, keys: Sequence[TrustedKey]) -> None:
        if not keys:
            raise VerificationFailed("no trusted public key given: nothing can verify")
        self.keys = tuple(keys)

    def verify(self, evidence: SessionEvidence, manifest: Manifest) -> None:
        """Raise unless manifest.sig verifies over the manifest bytes."""
        if evidence.signature_raw is None:
            raise VerificationFailed("manifest.sig is missing")
        signature = SignatureFile.parse(evidence.signature_raw)
        by_id = [k for k in self.keys if k.key_id == signature.key_id]
        others = [k for k in self.keys if k.key_id != signature.key_id]
        if not any(signature.verify(manifest.raw, k.key) for k in by_id + others):
            raise VerificationFailed(f"signature (key id {signature.key_id}) does not verify "
                                     "with any trusted public key")


class RecordingsMatch:
    """Every recording the manifest lists is present with its size and SHA-256; none extra."""

    name = "recordings"

    def verify(self, evidence: SessionEvidence, manifest: Manifest) -> None:
        """Raise on the first recording that is missing, altered or not in the manifest."""
        listed = {entry.name for entry in manifest.recordings}
        for entry in manifest.recordings:
            try:
                size, sha = hash_chunks(evidence.open_recording(entry.name))
            except FileNotFoundError:
                raise VerificationFailed(f"recording {entry.name} is missing") from None
            except (OSError, zlib.error) as exc:
                raise VerificationFailed(f"recording {entry.name} is unreadable: "
                                         f"{exc}") from None
            if (size, sha) != (entry.size, entry.sha256):
                raise VerificationFailed(
                    f"recording {entry.name} was altered: SHA-256 {sha[:16]}… size {size}, "
                    f"manifest says {entry.sha256[:16]}… size {entry.size}")
        extra = sorted(evidence.stored_names - listed)
        if extra:
            raise VerificationFailed(f"recordings not in the manifest: {', '.join(extra)}")


class StoredWhereItSays:
    """The folder is named after the session id (and node, in the S3 layout)."""

    name = "location"

    def verify(self, evidence: SessionEvidence, manifest: Manifest) -> None:
        """Raise if a manifest was copied into another session's folder."""
        if evidence.folder != manifest.session_id:
            raise VerificationFailed(f"folder {evidence.folder} holds the manifest of session "
                                     f"{manifest.session_id}")
        if evidence.node_folder is not None and evidence.node_folder != manifest.node_id:
            raise VerificationFailed(f"node folder {evidence.node_folder} holds a manifest of "
                                     f"node {manifest.node_id}")


class NotOverwritten:
    """No object of the session was overwritten or deleted after upload (versioned buckets)."""

    name = "versions"

    def verify(self, evidence: SessionEvidence, manifest: Manifest) -> None:
        """Raise naming each newer version or delete marker found."""
        if evidence.problems:
            raise VerificationFailed("; ".join(evidence.problems))


def default_session_policies(keys: Sequence[TrustedKey]) -> list[SessionPolicy]:
    """Signature, location, versions and recording hashes (hashing last: it is the slow one)."""
    return [SignedByTrustedKey(keys), StoredWhereItSays(), NotOverwritten(), RecordingsMatch()]


def chain_failures(manifests: Sequence[Manifest]) -> list[str]:
    """Every break in one node's chain: gaps, forks, replaced or reordered manifests."""
    failures = []
    ordered = sorted(manifests, key=lambda m: (m.sequence, m.session_id))
    for before, after in itertools.pairwise(ordered):
        if after.sequence == before.sequence:
            failures.append(f"sequence {after.sequence} is claimed by two manifests "
                            f"({before.session_id} and {after.session_id})")
        elif after.sequence != before.sequence + 1:
            missing = (f"{before.sequence + 1}" if after.sequence == before.sequence + 2
                       else f"{before.sequence + 1}..{after.sequence - 1}")
            failures.append(f"gap: sequence {missing} missing between {before.session_id} "
                            f"and {after.session_id} (a manifest was removed)")
        elif after.previous != before.digest:
            failures.append(f"chain broken at sequence {after.sequence} ({after.session_id}): "
                            f"its previous hash is not that of sequence {before.sequence} "
                            f"({before.session_id}); a manifest was replaced or reordered")
        elif str(after.doc["sealed_at"]) < str(before.doc["sealed_at"]):
            failures.append(f"sequence {after.sequence} ({after.session_id}) was sealed before "
                            f"sequence {before.sequence}: reordered")
    return failures


# -- the verifier ---------------------------------------------------------------------------------

@dataclass
class SessionResult:
    """What verifying one session folder found."""

    where: str
    session_id: str | None = None
    node_id: str | None = None
    sequence: int | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)  # (check, message)

    def as_json(self) -> dict[str, Any]:
        """The result for ``--json``."""
        return {"where": self.where, "session_id": self.session_id, "node_id": self.node_id,
                "sequence": self.sequence, "ok": not self.failures,
                "failures": [{"check": c, "message": m} for c, m in self.failures]}


@dataclass
class ChainResult:
    """One node's chain as far as the scope holds it."""

    node_id: str
    first: int
    last: int
    count: int
    failures: list[str]
    notes: list[str]

    def as_json(self) -> dict[str, Any]:
        """The result for ``--json``."""
        return {"node_id": self.node_id, "first": self.first, "last": self.last,
                "count": self.count, "ok": not self.failures,
                "failures": [{"check": "chain", "message": m} for m in self.failures],
                "notes": self.notes}


@dataclass
class Report:
    """Everything a verify run found; ``ok`` only if something was checked and all passed."""

    scope: str
    sessions: list[SessionResult]
    chains: list[ChainResult]
    failures: list[str] = field(default_factory=list)  # scope-level

    @property
    def ok(self) -> bool:
        """True only if at least one session verified and nothing failed."""
        return (bool(self.sessions) and not self.failures
                and all(not s.failures for s in self.sessions)
                and all(not c.failures for c in self.chains))

    def failure_count(self) -> int:
        """How many failures there are in total."""
        return (len(self.failures) + sum(len(s.failures) for s in self.sessions)
                + sum(len(c.failures) for c in self.chains))

    def as_json(self) -> dict[str, Any]:
        """The whole report for ``--json``."""
        return {"ok": self.ok, "scope": self.scope, "failures": self.failure_count(),
                "errors": self.failures,
                "sessions": [s.as_json() for s in self.sessions],
                "chains": [c.as_json() for c in self.chains]}

    def lines(self) -> Iterator[str]:
        """Human-readable lines, one per session, chain and failure."""
        for result in self.sessions:
            name = result.session_id or result.where
            if result.failures:
                for check, message in result.failures:
                    yield f"FAIL {name}: {check}: {message}"
            else:
                yield f"ok   {name} (node {result.node_id}, sequence {result.sequence})"
        for chain in self.chains:
            for message in chain.failures:
                yield f"FAIL chain {chain.node_id}: {message}"
            for note in chain.notes:
                yield f"note chain {chain.node_id}: {note}"
            if not chain.failures:
                yield (f"ok   chain {chain.node_id}: sequences {chain.first}..{chain.last} "
                       f"linked ({chain.count} manifests)")
        for message in self.failures:
            yield f"FAIL {message}"
        verdict = "VERIFIED" if self.ok else f"NOT VERIFIED ({self.failure_count()} failures)"
        yield f"{verdict}: {len(self.sessions)} sessions in {self.scope}"


class Verifier:
    """Runs session policies on every session of a source, then checks each node's chain."""

    def __init__(self, policies: Sequence[SessionPolicy], check_chain: bool = True) -> None:
        if not policies:
            raise VerificationFailed("no verification policies: an empty check list verifies "
                                     "nothing")
        self.policies = tuple(policies)
        self.check_chain = check_chain

    def verify_session(self, evidence: SessionEvidence) -> tuple[SessionResult, Manifest | None]:
        """Run every policy on one session; a manifest that fails to parse stops the rest."""
        result = SessionResult(where=evidence.where)
        if evidence.manifest_raw is None:
            result.failures.append(("manifest", "manifest.json is missing (not sealed, or "
                                                "removed)"))
            result.failures.extend(("versions", p) for p in evidence.problems)
            return result, None
        try:
            manifest = parse_manifest(evidence.manifest_raw, "manifest.json")
        except ManifestError as exc:
            result.failures.append(("manifest", str(exc)))
            return result, None
        result.session_id = manifest.session_id
        result.node_id = manifest.node_id
        result.sequence = manifest.sequence
        signature_ok = True
        for policy in self.policies:
            try:
                policy.verify(evidence, manifest)
            except VerificationFailed as exc:
                result.failures.append((policy.name, str(exc)))
                signature_ok = signature_ok and policy.name != "signature"
        # Only signed content may vouch for the chain; an unsigned manifest is a hole in it.
        return result, manifest if signature_ok else None

    def run(self, source: Source) -> Report:
        """Verify everything in ``source``."""
        report = Report(scope=source.description, sessions=[], chains=[])
        by_node: dict[str, list[Manifest]] = {}
        for evidence in source.sessions():
            result, manifest = self.verify_session(evidence)
            report.sessions.append(result)
            if manifest is not None:
                by_node.setdefault(manifest.node_id, []).append(manifest)
        report.sessions.sort(key=lambda r: (r.node_id or "", r.sequence or 0, r.where))
        if not report.sessions:
            report.failures.append(f"no sessions found in {source.description}")
        if self.check_chain:
            for node, manifests in sorted(by_node.items()):
                sequences = sorted(m.sequence for m in manifests)
                notes = []
                if sequences[0] > 1:
                    notes.append(f"starts at sequence {sequences[0]}: earlier manifests are "
                                 "outside this scope and were not checked")
                report.chains.append(ChainResult(node, sequences[0], sequences[-1],
                                                 len(manifests), chain_failures(manifests),
                                                 notes))
        return report


def verify_source(source: Source, keys: Sequence[TrustedKey]) -> Report:
    """Verify a source with the default policies and the given trusted keys."""
    return Verifier(default_session_policies(keys)).run(source)
