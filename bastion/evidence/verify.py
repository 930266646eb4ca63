"""Verify sealed sessions: signatures, file hashes and each node's hash chain.

Verification composes small policy objects, as sigstore-python does: each session policy raises
``VerificationFailed`` with one line when its check fails; chain policies name every break in a
node's chain. A ``Verifier`` with no session policies refuses to run, and a scope with no
manifests in it fails, so nothing ever verifies by accident. Evidence comes from a ``Source``
(sources.py; the S3 one is ``bastion.storage.reader.S3Source``).
"""

from __future__ import annotations

import hashlib
import itertools
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion.errors import ManifestError, VerificationFailed
from bastion.evidence.manifest import Manifest, parse_manifest
from bastion.evidence.report import ChainResult, Report, SessionResult
from bastion.evidence.signing import SignatureFile, key_id_of
from bastion.evidence.sources import SessionEvidence, Source
from bastion.recording.layout import MANIFEST_FILE, SIGNATURE_FILE


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
            raise VerificationFailed(evidence.unreadable.get(SIGNATURE_FILE,
                                                             "manifest.sig is missing"))
        signature = SignatureFile.parse(evidence.signature_raw)
        by_id = [k for k in self.keys if k.key_id == signature.key_id]
        others = [k for k in self.keys if k.key_id != signature.key_id]
        if not any(signature.verify(manifest.raw, k.key) for k in by_id + others):
            raise VerificationFailed(f"signature (key id {signature.key_id}) does not verify "
                                     "with any trusted public key")


class FilesMatch:
    """Every file the manifest lists (recordings, streams, timing, session.json) is present with
    its size and SHA-256; no recording file is there that it does not list."""

    name = "files"

    def verify(self, evidence: SessionEvidence, manifest: Manifest) -> None:
        """Raise on the first file that is missing, altered or not in the manifest."""
        listed = {entry.name for entry in manifest.files}
        for entry in manifest.files:
            try:
                size, sha = _hash_at_most(evidence.open_file(entry.name), entry.size)
            except FileNotFoundError:
                raise VerificationFailed(f"file {entry.name} is missing") from None
            except (OSError, zlib.error) as exc:
                raise VerificationFailed(f"file {entry.name} is unreadable: "
                                         f"{getattr(exc, 'strerror', None) or exc}") from None
            except VerificationFailed as exc:
                raise VerificationFailed(f"file {entry.name} was altered: {exc}") from None
            if size > entry.size:
                raise VerificationFailed(f"file {entry.name} was altered: larger than the "
                                         f"manifest's size {entry.size}")
            if (size, sha) != (entry.size, entry.sha256):
                raise VerificationFailed(
                    f"file {entry.name} was altered: SHA-256 {sha[:16]}… size {size}, "
                    f"manifest says {entry.sha256[:16]}… size {entry.size}")
        extra = sorted(evidence.stored_names - listed)
        if extra:
            raise VerificationFailed(f"files not in the manifest: {', '.join(extra)}")


def _hash_at_most(chunks: Iterable[bytes], limit: int) -> tuple[int, str]:
    """Size and SHA-256 of a stream, read no further than one chunk past ``limit`` bytes (a
    replaced or decompression-bomb file is altered as soon as it is too long)."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        if size > limit:
            break
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
    return size, digest.hexdigest()


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
    """Signature, location, versions and file hashes (hashing last: it is the slow one)."""
    return [SignedByTrustedKey(keys), StoredWhereItSays(), NotOverwritten(), FilesMatch()]


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


class Verifier:
    """Runs session policies on every session of a source, then checks each node's chain."""

    def __init__(self, policies: Sequence[SessionPolicy], check_chain: bool = True) -> None:
        if not policies:
            raise VerificationFailed("no verification policies: an empty check list verifies "
                                     "nothing")
        self.policies = tuple(policies)
        self.check_chain = check_chain

    def _add(self, evidence: SessionEvidence, report: Report,
             by_node: dict[str, list[Manifest]]) -> None:
        result, manifest = self.verify_session(evidence)
        report.sessions.append(result)
        if manifest is not None:
            by_node.setdefault(manifest.node_id, []).append(manifest)

    def verify_session(self, evidence: SessionEvidence) -> tuple[SessionResult, Manifest | None]:
        """Run every policy on one session; a manifest that fails to parse stops the rest."""
        result = SessionResult(where=evidence.where)
        if evidence.manifest_raw is None:
            result.failures.append(("manifest", evidence.unreadable.get(
                MANIFEST_FILE, "manifest.json is missing (not sealed, or removed)")))
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
        """Verify everything in ``source``.

        A bucket is listed page by page while ``bastion upload`` may be adding to it: manifest
        N can land behind the listing's position and N+1 ahead of it, which one listing would
        report as a gap. Upload places manifests in chain order, so a source that can be listed
        again (``relisted``) is, once, when a chain has a gap: manifests that appeared meanwhile
        are verified and join their chains; a manifest really removed stays a gap.
        """
        report = Report(scope=source.description, sessions=[], chains=[])
        by_node: dict[str, list[Manifest]] = {}
        seen: set[str] = set()
        for evidence in source.sessions():
            seen.add(evidence.where)
            self._add(evidence, report, by_node)
        relisted = getattr(source, "relisted", None)
        if self.check_chain and relisted is not None \
                and any(_has_gap(manifests) for manifests in by_node.values()):
            for evidence in relisted(seen):
                if evidence.manifest_raw is not None:  # not an upload begun since
                    self._add(evidence, report, by_node)
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


def _has_gap(manifests: Sequence[Manifest]) -> bool:
    sequences = sorted({m.sequence for m in manifests})
    return any(after != before + 1 for before, after in itertools.pairwise(sequences))


def verify_source(source: Source, keys: Sequence[TrustedKey]) -> Report:
    """Verify a source with the default policies and the given trusted keys."""
    return Verifier(default_session_policies(keys)).run(source)
