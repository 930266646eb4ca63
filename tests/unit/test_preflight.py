"""check-config's and serve's shared start-up checks (bastion/server/preflight.py), one problem
each, and the config file itself: a directory, non-UTF-8 text, an empty file."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from bastion.config import load_config
from bastion.credentials.vaultkey import generate_vault_key, write_vault_key
from bastion.errors import ConfigError
from bastion.evidence.signing import generate_signing_key
from bastion.server.preflight import preflight

HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


def _site(tmp_path: Path, **overrides: str) -> Path:
    """A config whose every file is in place; ``overrides`` replace whole lines by key."""
    generate_signing_key(tmp_path / "signing.key")
    write_vault_key(tmp_path / "vault.key", generate_vault_key())
    lines = {
        "listen": '"127.0.0.1"', "host_keys": f'["{tmp_path}/host_key"]',
        "state_dir": f'"{tmp_path}/state"', "spool_dir": f'"{tmp_path}/spool"',
        "audit_log": f'"{tmp_path}/log/audit.jsonl"', "key_file": f'"{tmp_path}/vault.key"',
        "signing_key": f'"{tmp_path}/signing.key"',
        "public_keys": f'["{tmp_path}/signing.key.pub"]', **overrides}
    text = f"""
[server]
listen = {lines["listen"]}
host_keys = {lines["host_keys"]}

[paths]
state_dir = {lines["state_dir"]}
spool_dir = {lines["spool_dir"]}
audit_log = {lines["audit_log"]}

[vault]
key_file = {lines["key_file"]}

[evidence]
signing_key = {lines["signing_key"]}
public_keys = {lines["public_keys"]}

[[targets]]
name = "web01"
host = "127.0.0.1"
host_key = "{HOST_KEY}"
"""
    path = tmp_path / "bastion.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    return preflight(load_config(path), environ={})


def test_a_complete_site_has_no_problems(tmp_path: Path) -> None:
    assert _problems(_site(tmp_path)) == []


def test_an_unresolvable_listen_address(tmp_path: Path) -> None:
    [problem] = _problems(_site(tmp_path, listen='"no-such-host.invalid"'))
    assert "server.listen: 'no-such-host.invalid' cannot be resolved" in problem


def test_a_missing_signing_key(tmp_path: Path) -> None:
    [problem] = _problems(_site(tmp_path, signing_key=f'"{tmp_path}/nope.key"'))
    assert "evidence.signing_key: signing key" in problem and "no such file" in problem


def test_a_missing_public_key(tmp_path: Path) -> None:
    [problem] = _problems(_site(tmp_path, public_keys=f'["{tmp_path}/nope.pub"]'))
    assert "evidence.public_keys: cannot read public key" in problem


def test_host_keys_pointing_at_a_directory(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    [problem] = _problems(_site(tmp_path, host_keys=f'["{tmp_path}/keys"]'))
    assert problem.endswith(f"server.host_keys: {tmp_path}/keys is not a file")


def test_a_host_key_that_is_not_a_key(tmp_path: Path) -> None:
    (tmp_path / "host_key").write_text("garbage\n")
    [problem] = _problems(_site(tmp_path))
    assert "server.host_keys: cannot load host key" in problem


def test_an_audit_log_whose_directory_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "log").write_text("a file where the directory should be\n")
    [problem] = _problems(_site(tmp_path))
    assert problem.endswith(f"paths.audit_log: {tmp_path}/log is not a directory")


def test_a_spool_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "spool").write_text("x")
    [problem] = _problems(_site(tmp_path))
    assert problem.endswith(f"paths.spool_dir: {tmp_path}/spool is not a directory")


def test_a_vault_key_readable_by_everyone(tmp_path: Path) -> None:
    path = _site(tmp_path)
    (tmp_path / "vault.key").chmod(0o644)
    [problem] = _problems(path)
    assert "is accessible to other users (mode 0644)" in problem


def test_a_vault_the_key_does_not_open(tmp_path: Path) -> None:
    config = load_config(_site(tmp_path))
    config.vault.path.parent.mkdir(parents=True, exist_ok=True)  # state_dir/vault.json
    config.vault.path.write_text("not a vault")
    [problem] = preflight(config, environ={})
    assert "vault.path:" in problem


def test_a_vault_key_from_an_unset_environment_variable(tmp_path: Path) -> None:
    path = _site(tmp_path)
    path.write_text(path.read_text().replace(f'key_file = "{tmp_path}/vault.key"',
                                             'key_env = "BASTION_NO_SUCH_VAR"'))
    [problem] = _problems(path)
    assert "vault: environment variable BASTION_NO_SUCH_VAR (vault.key_env) is not set" in problem


def test_a_directory_given_as_the_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a config file"


def test_a_config_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bastion.toml"
    path.write_bytes(b'[server]\nport = 2222\n# caf\xe9\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}:3: not UTF-8 text (byte 0xe9); a config file must be "
                               "UTF-8")


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_an_empty_config_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bastion.toml"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "the file is empty" in str(info.value) and "\n" not in str(info.value)
