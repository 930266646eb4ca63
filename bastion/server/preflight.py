"""What ``bastion serve`` needs from the machine before it listens, checked without changing
anything: ``check-config`` runs these checks and ``serve`` runs the same ones first, so a config
``check-config`` calls OK does start (and one it refuses fails with the same one line).

Each check returns problems as ``<config file>: <setting>: <what is wrong>``. Files serve creates
when missing (host keys, spool, state and audit directories, an empty vault) are judged by
whether they could be created: the nearest existing parent must be a writable directory.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import asyncssh

from bastion.config import check_files
from bastion.config.model import Config
from bastion.credentials.vault import Vault
from bastion.credentials.vaultkey import load_vault_key
from bastion.errors import BastionError
from bastion.evidence.signing import Signer, load_public_key


def _creatable_dir(path: Path) -> str | None:
    """Why ``path`` cannot be used (or created) as a directory, or None."""
    if path.exists():
        if not path.is_dir():
            return f"{path} is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable"
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{path} cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be created: {parent} is not writable"
    return None


def _creatable_file(path: Path) -> str | None:
    """Why ``path`` cannot be written (or created) as a file, or None."""
    if path.exists():
        if not path.is_file():
            return f"{path} is not a regular file"
        if not os.access(path, os.W_OK):
            return f"{path} is not writable"
        return None
    return _creatable_dir(path.parent)


def _listen(config: Config) -> Iterator[str]:
    server = config.server
    try:
        socket.getaddrinfo(server.listen, server.port, type=socket.SOCK_STREAM,
                           flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        yield f"server.listen: {server.listen!r} cannot be resolved ({reason})"


def _paths(config: Config) -> Iterator[str]:
    for setting, path in (("paths.state_dir", config.paths.state_dir),
                          ("paths.spool_dir", config.paths.spool_dir)):
        if (why := _creatable_dir(path)) is not None:
            yield f"{setting}: {why}"
    audit_log = config.paths.audit_log
    if audit_log is not None and (why := _creatable_file(audit_log)) is not None:
        yield f"paths.audit_log: {why}"


def _host_keys(config: Config) -> Iterator[str]:
    if not config.server.host_keys:
        yield "server.host_keys: no host keys configured"
    for path in config.server.host_keys:
        if not path.exists():
            if (why := _creatable_file(path)) is not None:  # serve generates a missing key
                yield f"server.host_keys: {why}"
            continue
        if not path.is_file():
            yield f"server.host_keys: {path} is not a file"
            continue
        try:
            asyncssh.read_private_key(str(path))
        except (OSError, asyncssh.KeyImportError) as exc:
            yield f"server.host_keys: cannot load host key {path}: {exc}"


def _vault(config: Config, environ: Mapping[str, str]) -> Iterator[str]:
    try:
        key = load_vault_key(config.vault, environ)
    except BastionError as exc:
        yield f"vault: {exc}"
        return
    path = config.vault.path
    if path.exists():
        try:
            Vault.open(path, key)
        except BastionError as exc:
            yield f"vault.path: {exc}"
    elif (why := _creatable_file(path)) is not None:
        yield f"vault.path: {why}"


def _evidence(config: Config) -> Iterator[str]:
    evidence = config.evidence
    if evidence is None:
        return
    if evidence.signing_key is not None:
        try:
            Signer.from_file(evidence.signing_key)
        except BastionError as exc:
            yield f"evidence.signing_key: {exc}"
    for path in evidence.public_keys:
        try:
            load_public_key(path)
        except BastionError as exc:
            yield f"evidence.public_keys: {exc}"


_CHECKS: tuple[Callable[[Config], Iterator[str]], ...] = (_listen, _paths, _host_keys, _evidence)


def preflight(config: Config, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Every problem that would stop ``bastion serve`` from starting with ``config``."""
    problems = list(check_files(config))
    for check in _CHECKS:
        problems += [f"{config.source}: {p}" for p in check(config)]
    problems += [f"{config.source}: {p}" for p in _vault(config, environ)]
    return problems
