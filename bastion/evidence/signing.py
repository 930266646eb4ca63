"""Manifest signing keys and signatures: Ed25519 keys in PEM files, ``manifest.sig`` files.

``manifest.sig`` is a small JSON object (RFC 8785 form): the algorithm, a key id (a hint for
people), the manifest's SHA-256 (a hint) and the base64 Ed25519 signature over the exact bytes of
``manifest.json`` (the only part trusted).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.credentials.keysource import read_private_file
from bastion.errors import ConfigError, VerificationFailed
from bastion.evidence.canonical import jcs
from bastion.fsutil import write_new_private

SIGNATURE_ALGORITHM = "ed25519"


def key_id_of(public: Ed25519PublicKey) -> str:
    """The default key id: ``ed25519:`` and the first 16 hex digits of SHA-256(raw key)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"ed25519:{hashlib.sha256(raw).hexdigest()[:16]}"


def public_pem(public: Ed25519PublicKey) -> str:
    """A public key as PEM (SubjectPublicKeyInfo), the form ``--public-key`` files hold."""
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()


_MAX_KEY_FILE = 64 * 1024  # a PEM Ed25519 key is about 120 bytes


def generate_signing_key(path: Path) -> Ed25519PublicKey:
    """Write a new Ed25519 private key (PKCS#8 PEM, mode 0600, never overwritten) and
    its public key beside it as ``<path>.pub``; return the public key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        write_new_private(path, pem)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; not overwriting a signing key") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    public = key.public_key()
    Path(f"{path}.pub").write_text(public_pem(public), encoding="ascii")
    return public


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a trusted Ed25519 public key from a PEM file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read public key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key")
    return key


class Signer:
    """Signs manifest bytes with the node's Ed25519 key."""

    def __init__(self, key: Ed25519PrivateKey, key_id: str | None = None) -> None:
        self._key = key
        self.public = key.public_key()
        self.key_id = key_id or key_id_of(self.public)

    @classmethod
    def from_file(cls, path: Path, key_id: str | None = None) -> Signer:
        """Load the private key written by ``bastion keygen signing`` (mode 0600: a key file
        other users may read is refused, as the vault and CA keys are)."""
        data = read_private_file(path, f"signing key {path}", ConfigError, _MAX_KEY_FILE)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ConfigError(f"{path}: not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path}: not an Ed25519 private key")
        return cls(key, key_id)

    def signature_file(self, manifest: bytes) -> bytes:
        """The ``manifest.sig`` bytes (canonical JSON) for ``manifest``."""
        return jcs({
            "algorithm": SIGNATURE_ALGORITHM,
            "key_id": self.key_id,
            "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
            "signature": base64.b64encode(self._key.sign(manifest)).decode("ascii"),
        })


_SIGNATURE_FIELDS = frozenset({"algorithm", "key_id", "manifest_sha256", "signature"})


@dataclass(frozen=True)
class SignatureFile:
    """A parsed ``manifest.sig``."""

    key_id: str
    signature: bytes
    manifest_sha256: str | None = None  # what the signer hashed; must match when present

    @classmethod
    def parse(cls, raw: bytes, where: str = "manifest.sig") -> SignatureFile:
        """Parse signature-file bytes; any defect is a VerificationFailed."""
        try:
            doc = json.loads(raw.decode("utf-8"))
            if not isinstance(doc, dict) or doc.get("algorithm") != SIGNATURE_ALGORITHM:
                raise ValueError("algorithm is not ed25519")
            key_id, sig = doc["key_id"], doc["signature"]
            if not isinstance(key_id, str) or not isinstance(sig, str):
                raise ValueError("key_id and signature must be strings")
            signature = base64.b64decode(sig, validate=True)
            if base64.b64encode(signature).decode("ascii") != sig:  # unused bits set: altered
                raise ValueError("signature is not canonical base64")
            if set(doc) != _SIGNATURE_FIELDS:  # nothing added, renamed or left out
                raise ValueError(f"fields must be {', '.join(sorted(_SIGNATURE_FIELDS))}")
            digest = doc["manifest_sha256"]
            if not isinstance(digest, str):
                raise ValueError("manifest_sha256 must be a string")
        except RecursionError:  # nested deeper than the parser goes: no signature file
            raise VerificationFailed(f"{where}: malformed signature file (nested too "
                                     "deeply)") from None
        except (UnicodeDecodeError, ValueError, KeyError) as exc:
            raise VerificationFailed(f"{where}: malformed signature file ({exc})") from None
        return cls(key_id=key_id, signature=signature, manifest_sha256=digest)

    def verify(self, manifest: bytes, public: Ed25519PublicKey) -> bool:
        """Whether the signature over ``manifest`` verifies with ``public`` (and the file's
        ``manifest_sha256``, when it has one, is that manifest's: an altered signature file is
        no signature, even if its signature bytes still verify)."""
        if self.manifest_sha256 is not None \
                and self.manifest_sha256 != hashlib.sha256(manifest).hexdigest():
            return False
        try:
            public.verify(self.signature, manifest)
        except InvalidSignature:
            return False
        return True
