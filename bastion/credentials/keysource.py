"""Where a secret key comes from: a file, an environment variable or a systemd credential.

The vault key and the user CA key are both read through here, so they share the same checks
(a key file others may read is refused, as ssh refuses open private keys) and the same messages.
Every error names where the key came from, never its content.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import BastionError, ConfigError


@dataclass(frozen=True)
class KeySourceSpec:
    """The ``key_file``, ``key_env`` and ``key_credential`` keys of one config section."""

    section: str  # "vault", "ca", "ca.next": named in messages
    noun: str  # "vault key", "CA key"
    key_file: Path | None = None
    key_env: str | None = None
    key_credential: str | None = None


def read_private_file(path: Path, what: str, error: type[BastionError],
                      max_bytes: int) -> bytes:
    """Read a key file of at most ``max_bytes``; refuse one that other users may read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise error(f"{what}: no such file") from None
    except OSError as exc:
        raise error(f"{what}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what}: not a regular file")
        if mode & 0o077:  # like ssh with a private key: only its owner may read it
            # A setup mistake, like a bad config value: exit status 2 from every command.
            raise ConfigError(f"{what} is accessible to other users (mode {mode & 0o777:04o}); "
                              f"run chmod 600 {path}")
        return fh.read(max_bytes + 1)


def read_key_source(spec: KeySourceSpec, error: type[BastionError], max_bytes: int,
                    environ: Mapping[str, str] = os.environ) -> tuple[bytes | str, str]:
    """The raw key text from the first of key_file, key_env, key_credential that is set,
    and a description of where it came from (for the caller's decoding errors)."""
    if spec.key_file is not None:
        what = f"{spec.noun} file {spec.key_file}"
        return read_private_file(spec.key_file, what, error, max_bytes), what
    if spec.key_env is not None:
        value = environ.get(spec.key_env)
        if value is None:
            raise error(f"environment variable {spec.key_env} ({spec.section}.key_env) "
                        "is not set")
        return value, f"{spec.noun} in environment variable {spec.key_env}"
    if spec.key_credential is not None:
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise error(f"systemd credential {spec.key_credential} "
                        f"({spec.section}.key_credential): $CREDENTIALS_DIRECTORY is not set; "
                        f"run under systemd with LoadCredential={spec.key_credential}:... or "
                        f"LoadCredentialEncrypted={spec.key_credential}")
        path = Path(directory) / spec.key_credential
        what = f"systemd credential {spec.key_credential} ({path})"
        return read_private_file(path, what, error, max_bytes), what
    raise error(f"no {spec.noun} source configured ({spec.section}.key_file, key_env or "
                "key_credential)")
