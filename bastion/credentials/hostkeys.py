"""The bastion's own SSH host keys: generated once, kept mode 0600."""

from __future__ import annotations

from pathlib import Path

import asyncssh

from bastion.errors import ConfigError
from bastion.fsutil import write_new_private


def generate_host_key(path: Path) -> str:
    """Write a new Ed25519 host key to ``path`` (refusing to overwrite); return its public line."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment="bastion host key")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_new_private(path, key.export_private_key())
    except FileExistsError:
        raise ConfigError(f"{path} exists already; not overwriting a host key") from None
    except OSError as exc:
        raise ConfigError(f"cannot write host key {path}: {exc.strerror}") from None
    public = key.export_public_key().decode().strip()
    Path(f"{path}.pub").write_text(public + "\n", encoding="utf-8")
    return public


def load_host_keys(
    paths: tuple[Path, ...], create: bool
) -> tuple[list[asyncssh.SSHKey], list[str]]:
    """Load host keys; with ``create``, generate missing ones. Returns keys and log lines."""
    keys: list[asyncssh.SSHKey] = []
    notes: list[str] = []
    for path in paths:
        if not path.exists() and create:
            public = generate_host_key(path)
            notes.append(f"generated host key {path}: {public}")
        try:
            keys.append(asyncssh.read_private_key(str(path)))
        except (OSError, asyncssh.KeyImportError) as exc:
            raise ConfigError(f"cannot load host key {path}: {exc}") from None
    if not keys:
        raise ConfigError("no host keys configured (server.host_keys)")
    return keys, notes
