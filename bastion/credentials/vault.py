"""The credential vault: target credentials encrypted at rest with AES-256-GCM.

File format (JSON, one object)::

    {"format": "bastion-vault", "version": 1, "key_id": "<16 hex>",
     "nonce": "<base64 of 12 bytes>", "ciphertext": "<base64>"}

The whole entry list is one AES-256-GCM blob, sealed with a fresh nonce on every save. The
header fields (format, version, key_id) are the additional authenticated data, so editing any
of them breaks the tag. The clear ``key_id`` tells "this is the wrong key" apart from "this file
was damaged": the first is a configuration mistake, the second a security event.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import asyncssh
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.config.model import LOGIN_NAME, TARGET_NAME
from bastion.credentials.vaultkey import (
    KEY_BYTES,
    encode_vault_key,
    generate_vault_key,
    key_id,
    load_vault_key,
    write_vault_key,
)
from bastion.errors import VaultError, WrongVaultKey
from bastion.fsutil import write_atomic
from bastion.secret import Secret

FORMAT = "bastion-vault"
VERSION = 1
NONCE_BYTES = 12  # 96-bit GCM nonce
_TAG_BYTES = 16
_MAX_FILE_BYTES = 64 * 1024 * 1024
_HEADER_FIELDS = ("format", "version", "key_id")
_FILE_FIELDS = {*_HEADER_FIELDS, "nonce", "ciphertext"}
_ENTRY_FIELDS = {"target", "login", "kind", "secret"}

CredentialKind = Literal["private_key", "password"]
KINDS: tuple[str, ...] = get_args(CredentialKind)


@dataclass(frozen=True)
class Credential:
    """What the relay logs in to a target with; ``repr`` shows the kind, never the secret."""

    kind: CredentialKind
    secret: Secret[str]  # OpenSSH/PEM private key text, or the password

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise VaultError(f"unknown credential kind {self.kind!r} (expected one of "
                             f"{', '.join(KINDS)})")
        if not isinstance(self.secret, Secret) or not isinstance(self.secret.reveal(), str):
            raise VaultError("a credential's secret must be a Secret[str]")
        if not self.secret.reveal():
            raise VaultError(f"empty {self.kind.replace('_', ' ')}")


def private_key_credential(text: str, source: str) -> Credential:
    """A private-key credential from OpenSSH/PEM ``text``; refuse encrypted or invalid keys."""
    try:
        asyncssh.import_private_key(text)
    except asyncssh.KeyImportError as exc:
        if "passphrase" in str(exc).lower():
            raise VaultError(f"{source} is protected by a passphrase; store an unencrypted copy "
                             "(the vault encrypts it): ssh-keygen -p -N '' -f COPY") from None
        raise VaultError(f"{source} is not an OpenSSH or PEM private key") from None
    except (ValueError, TypeError):
        raise VaultError(f"{source} is not an OpenSSH or PEM private key") from None
    return Credential("private_key", Secret(text))


def password_credential(password: str) -> Credential:
    """A password credential; refuse empty passwords and ones with line breaks or NUL."""
    if not password:
        raise VaultError("empty password")
    if any(c in password for c in "\r\n\0"):
        raise VaultError("a password cannot contain line breaks or NUL characters")
    return Credential("password", Secret(password))


def check_names(target: str, login: str) -> None:
    """Refuse target and login names that could never appear in an SSH user name."""
    if not re.fullmatch(TARGET_NAME, target):
        raise VaultError(f"{target!r} is not a valid target name")
    if not re.fullmatch(LOGIN_NAME, login):
        raise VaultError(f"{login!r} is not a valid login name")


class Vault:
    """An opened vault: credentials by (target, login), held decrypted in memory until saved."""

    def __init__(self, path: Path, key: Secret[bytes],
                 entries: dict[tuple[str, str], Credential]) -> None:
        if len(key.reveal()) != KEY_BYTES:
            raise VaultError(f"a vault key must be {KEY_BYTES} bytes")
        self.path = path
        self._key = key
        self._entries = entries

    def __repr__(self) -> str:
        return f"Vault({str(self.path)!r}, key_id={self.key_id}, {len(self._entries)} entries)"

    @property
    def key_id(self) -> str:
        """The id of the key this vault is sealed with (safe to show)."""
        return key_id(self._key)

    @classmethod
    def open(cls, path: Path, key: Secret[bytes], create: bool = False) -> Vault:
        """Open and decrypt the vault at ``path``; if missing, an empty vault when ``create``."""
        try:
            with path.open("rb") as fh:
                data = fh.read(_MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            if create:
                return cls(path, key, {})
            raise VaultError(f"vault file {path} does not exist (`bastion vault set` creates "
                             "it)") from None
        except OSError as exc:
            raise VaultError(f"cannot read vault file {path}: {exc.strerror}") from None
        if len(data) > _MAX_FILE_BYTES:
            raise VaultError(f"vault file {path} is too large to be a bastion vault")
        return cls(path, key, _decrypt(path, data, key))

    def get(self, target: str, login: str) -> Credential | None:
        """The credential for ``login`` on ``target``, or None."""
        return self._entries.get((target, login))

    def set(self, target: str, login: str, credential: Credential) -> None:
        """Add or replace the credential for ``login`` on ``target`` (in memory; call save)."""
        check_names(target, login)
        if not isinstance(credential, Credential):
            raise VaultError("only Credential objects can be stored in the vault")
        self._entries[(target, login)] = credential

    def remove(self, target: str, login: str) -> bool:
        """Forget the credential for ``login`` on ``target``; False if there was none."""
        return self._entries.pop((target, login), None) is not None

    def entries(self) -> list[tuple[str, str, str]]:
        """(target, login, kind) of every credential, sorted; never a secret."""
        return sorted((t, lg, c.kind) for (t, lg), c in self._entries.items())

    def save(self) -> None:
        """Encrypt with a fresh nonce and replace the file atomically (0600, fsync'd)."""
        _atomic_write(self.path, _encrypt(self._entries, self._key))

    def rotate(self, new_key: Secret[bytes]) -> None:
        """Re-encrypt the whole vault under ``new_key`` and save; the old key stops working."""
        if len(new_key.reveal()) != KEY_BYTES:
            raise VaultError(f"a vault key must be {KEY_BYTES} bytes")
        old_key = self._key
        self._key = new_key
        try:
            self.save()
        except BaseException:
            self._key = old_key  # the file still holds the old key's seal
            raise


@contextlib.contextmanager
def vault_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``path`` so two read-modify-write changes cannot interleave."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise VaultError(f"cannot lock vault file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# -- sealing --------------------------------------------------------------------------------

def _aad(header: dict[str, Any]) -> bytes:
    """Canonical bytes of the header fields, authenticated with the ciphertext."""
    fields = {name: header[name] for name in _HEADER_FIELDS}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _encrypt(entries: dict[tuple[str, str], Credential], key: Secret[bytes]) -> bytes:
    plain = json.dumps({"entries": [
        {"target": t, "login": lg, "kind": c.kind, "secret": c.secret.reveal()}
        for (t, lg), c in sorted(entries.items())
    ]}, separators=(",", ":")).encode("utf-8")
    header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "key_id": key_id(key)}
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key.reveal()).encrypt(nonce, plain, _aad(header))
    document = {**header, "nonce": _b64(nonce), "ciphertext": _b64(sealed)}
    return (json.dumps(document, indent=1) + "\n").encode("utf-8")


def _decrypt(path: Path, data: bytes, key: Secret[bytes]) -> dict[tuple[str, str], Credential]:
    damaged = f"vault file {path} is damaged or was tampered with"
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise VaultError(f"{damaged} (not valid JSON)") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise VaultError(f"{path} is not a bastion vault file")
    if set(document) != _FILE_FIELDS:
        raise VaultError(f"{damaged} (unexpected or missing fields)")
    version = document["version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise VaultError(f"{damaged} (version is not a number)")
    if version != VERSION:
        raise VaultError(f"vault file {path} has format version {version}; "
                         f"this bastion reads version {VERSION}")
    stored_id = document["key_id"]
    if not isinstance(stored_id, str) or not re.fullmatch(r"[0-9a-f]{16}", stored_id):
        raise VaultError(f"{damaged} (key_id is not 16 hex digits)")
    this_id = key_id(key)
    if stored_id != this_id:
        raise WrongVaultKey(f"wrong vault key (vault was sealed with key id {stored_id}, "
                         f"this key is {this_id})")
    nonce = _unb64(document["nonce"])
    sealed = _unb64(document["ciphertext"])
    if nonce is None or len(nonce) != NONCE_BYTES or sealed is None or len(sealed) < _TAG_BYTES:
        raise VaultError(f"{damaged} (nonce or ciphertext malformed)")
    try:
        plain = AESGCM(key.reveal()).decrypt(nonce, sealed, _aad(document))
    except InvalidTag:
        raise VaultError(damaged) from None
    return _parse_entries(plain, f"vault file {path} decrypted but its content is malformed")


def _parse_entries(plain: bytes, malformed: str) -> dict[tuple[str, str], Credential]:
    try:
        content = json.loads(plain.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise VaultError(malformed) from None
    items = content.get("entries") if isinstance(content, dict) else None
    if not isinstance(items, list):
        raise VaultError(malformed)
    entries: dict[tuple[str, str], Credential] = {}
    for item in items:
        if (not isinstance(item, dict) or set(item) != _ENTRY_FIELDS
                or not all(isinstance(v, str) for v in item.values())
                or item["kind"] not in KINDS or not item["secret"]):
            raise VaultError(malformed)
        if (item["target"], item["login"]) in entries:
            raise VaultError(malformed)
        check_names(item["target"], item["login"])
        entries[(item["target"], item["login"])] = Credential(item["kind"], Secret(item["secret"]))
    return entries


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace the vault file durably (0600), or raise VaultError."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, data, 0o600)
    except OSError as exc:
        raise VaultError(f"cannot write vault file {path}: {exc.strerror}") from None


__all__ = [
    "KINDS",
    "Credential",
    "CredentialKind",
    "Vault",
    "check_names",
    "encode_vault_key",
    "generate_vault_key",
    "key_id",
    "load_vault_key",
    "password_credential",
    "private_key_credential",
    "vault_lock",
    "write_vault_key",
]
