"""The vault key: 32 random bytes kept as one base64 line in a file, variable or systemd credential.

Every error names where the key came from (file path, variable name, credential name) and never
its content, so a mistyped key cannot end up in a log or a terminal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from bastion.config.model import VaultConfig
from bastion.errors import ConfigError, VaultError
from bastion.fsutil import write_new_private
from bastion.secret import Secret

KEY_BYTES = 32  # AES-256
_KEY_ID_LABEL = b"bastion-vault-key-id"
_MAX_KEY_TEXT = 4096  # a key line is 44 characters; anything much longer is not a key


def key_id(key: Secret[bytes]) -> str:
    """A key's public id: first 8 bytes (hex) of SHA-256("bastion-vault-key-id" + key)."""
    return hashlib.sha256(_KEY_ID_LABEL + key.reveal()).digest()[:8].hex()


def generate_vault_key() -> Secret[bytes]:
    """A new random 32-byte vault key."""
    return Secret(os.urandom(KEY_BYTES))


def encode_vault_key(key: Secret[bytes]) -> Secret[str]:
    """The key as the single base64 line stored in files, variables and credentials."""
    return Secret(base64.b64encode(key.reveal()).decode("ascii"))


def write_vault_key(path: Path, key: Secret[bytes]) -> None:
    """Write ``key`` as one base64 line to a new file of mode 0600; never overwrite."""
    _check_length(key, f"key for {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_new_private(path, (encode_vault_key(key).reveal() + "\n").encode("ascii"))
    except FileExistsError:
        raise VaultError(f"{path} exists already; not overwriting a vault key") from None
    except OSError as exc:
        raise VaultError(f"cannot write vault key {path}: {exc.strerror}") from None


def read_vault_key_file(path: Path, what: str | None = None) -> Secret[bytes]:
    """Read a key file; refuse one that everybody may read, like ssh refuses open private keys."""
    what = what or f"vault key file {path}"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise VaultError(f"{what}: no such file") from None
    except OSError as exc:
        raise VaultError(f"{what}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise VaultError(f"{what}: not a regular file")
        if mode & 0o077:  # like ssh with a private key: only its owner may read it
            # A setup mistake, like a bad config value: exit status 2 from every command.
            raise ConfigError(f"{what} is accessible to other users (mode {mode & 0o777:04o}); "
                             f"run chmod 600 {path}")
        data = fh.read(_MAX_KEY_TEXT + 1)
    return decode_vault_key(data, what)


def decode_vault_key(data: bytes | str, what: str) -> Secret[bytes]:
    """Decode base64 of exactly 32 bytes (outer whitespace ignored); errors name ``what``."""
    expected = (f"{what}: expected base64 of {KEY_BYTES} random bytes on one line "
                "(make one with `bastion keygen vault --out FILE`)")
    if isinstance(data, str):
        try:
            data = data.encode("ascii")
        except UnicodeEncodeError:
            raise VaultError(expected) from None
    if len(data) > _MAX_KEY_TEXT:
        raise VaultError(expected)
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise VaultError(expected) from None
    if len(raw) != KEY_BYTES:
        raise VaultError(expected)
    return Secret(raw)


def load_vault_key(cfg: VaultConfig, environ: Mapping[str, str] = os.environ) -> Secret[bytes]:
    """The vault key from the first of ``key_file``, ``key_env``, ``key_credential`` that is set."""
    if cfg.key_file is not None:
        return read_vault_key_file(cfg.key_file)
    if cfg.key_env is not None:
        what = f"vault key in environment variable {cfg.key_env}"
        value = environ.get(cfg.key_env)
        if value is None:
            raise VaultError(f"environment variable {cfg.key_env} (vault.key_env) is not set")
        return decode_vault_key(value, what)
    if cfg.key_credential is not None:
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise VaultError(f"systemd credential {cfg.key_credential} (vault.key_credential): "
                             "$CREDENTIALS_DIRECTORY is not set; run under systemd with "
                             f"LoadCredential={cfg.key_credential}:... or "
                             f"LoadCredentialEncrypted={cfg.key_credential}")
        path = Path(directory) / cfg.key_credential
        return read_vault_key_file(
            path, f"systemd credential {cfg.key_credential} ({path})")
    raise VaultError("no vault key source configured (vault.key_file, key_env or key_credential)")


def _check_length(key: Secret[bytes], what: str) -> None:
    if len(key.reveal()) != KEY_BYTES:
        raise VaultError(f"{what}: a vault key must be {KEY_BYTES} bytes")
