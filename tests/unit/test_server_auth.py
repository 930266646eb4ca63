"""Authentication decisions of one connection, without sockets."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from bastion.audit import AuditLog
from bastion.config.model import Config, LocalUser, PathsConfig, ServerConfig, VaultConfig
from bastion.errors import AuthenticationError
from bastion.server.auth import ConnectionAuth, LocalKeyIndex


def _setup(tmp_path: Path) -> tuple[ConnectionAuth, asyncssh.SSHKey, AuditLog]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    config = Config(
        source=tmp_path / "bastion.toml", server=ServerConfig(max_auth_attempts=2),
        paths=PathsConfig(state_dir=tmp_path, spool_dir=tmp_path, audit_log=None),
        vault=VaultConfig(path=tmp_path / "v", key_file=tmp_path / "k"),
        users=(LocalUser(name="ann", keys=(key.export_public_key().decode(),),
                         groups=("ops",)),))
    audit = AuditLog(tmp_path / "audit.jsonl", "test", stream=None)
    auth = ConnectionAuth(config, audit, LocalKeyIndex.from_config(config), "1", "127.0.0.1:5")
    return auth, key, audit


def test_config_user_key_is_accepted_and_names_the_identity(tmp_path: Path) -> None:
    auth, key, _ = _setup(tmp_path)
    auth.begin("deploy@web01")
    assert auth.validate_public_key(key)
    assert auth.signature_checked(key)
    identity = auth.completed()
    assert (identity.name, identity.groups, identity.issuer) == ("ann", ("ops",), "local")
    assert auth.key_fingerprint == key.get_fingerprint("sha256")


def test_unknown_keys_count_as_failures_without_device_login(tmp_path: Path) -> None:
    auth, _, _ = _setup(tmp_path)
    for _ in range(2):
        assert not auth.validate_public_key(asyncssh.generate_private_key("ssh-ed25519"))
    assert auth.attempts_exhausted
    assert not auth.kbdint_supported()


def test_completion_without_a_verified_identity_fails_closed(tmp_path: Path) -> None:
    auth, _, audit = _setup(tmp_path)
    auth.begin("web01")
    with pytest.raises(AuthenticationError):
        auth.completed()
    assert auth.identity is None
    audit.close()
    assert "login.failure" in (tmp_path / "audit.jsonl").read_text()
