"""Config errors name the file, the line, the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from bastion.config import load_config
from bastion.errors import ConfigError

HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()

BASE = f"""\
[server]
port = 2222

[vault]
key_file = "vault.key"

[[targets]]
name = "web01"
host = "127.0.0.1"
host_key = "{HOST_KEY}"

[[access]]
groups = ["ops"]
targets = ["web01"]
logins = ["deploy"]
"""


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "bastion.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return str(info.value)


def test_valid_config_loads(tmp_path: Path) -> None:
    config = _load(tmp_path, BASE)
    assert config.target("web01").host == "127.0.0.1"  # type: ignore[attr-defined]


def test_wrong_type_names_line_key_and_expectation(tmp_path: Path) -> None:
    text = BASE.replace('host = "127.0.0.1"', 'host = "127.0.0.1"\nport = "ssh"')
    message = _error(tmp_path, text)
    assert message == (f'{tmp_path / "bastion.toml"}:10: targets[0].port: expected an '
                       'integer from 1 to 65535, got "ssh"')


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, BASE.replace("port = 2222", "port = 2222\nlisten_adress = 'x'"))
    assert message.endswith(":3: server.listen_adress: expected no such key here (unknown option)")


def test_target_without_pinned_host_key_is_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, BASE.replace(f'host_key = "{HOST_KEY}"\n', ""))
    assert "targets[0].host_key: expected a pinned host key" in message


def test_access_rule_naming_unknown_target(tmp_path: Path) -> None:
    message = _error(tmp_path, BASE.replace('targets = ["web01"]', 'targets = ["web02"]'))
    assert "access[0].targets" in message and "web02" in message


def test_target_name_with_dots_is_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, BASE.replace('name = "web01"', 'name = "web01.example.com"'))
    assert "targets[0].name: expected a target name" in message


def test_toml_syntax_error_is_one_line(tmp_path: Path) -> None:
    message = _error(tmp_path, BASE + "\n[[targets]\n")
    assert "not valid TOML" in message and "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_duplicate_target_names(tmp_path: Path) -> None:
    second = BASE.split("[[access]]")[0].split("[[targets]]")[1]
    message = _error(tmp_path, BASE + "\n[[targets]]" + second)
    assert "targets[1].name" in message and "appears twice" in message


def test_vault_needs_a_key_source(tmp_path: Path) -> None:
    message = _error(tmp_path, BASE.replace('key_file = "vault.key"', ""))
    assert "vault.key_file: expected one of key_file, key_env or key_credential" in message


def test_durations_accept_units(tmp_path: Path) -> None:
    config = _load(tmp_path, BASE.replace("port = 2222", 'port = 2222\nidle_timeout = "15m"'))
    assert config.server.idle_timeout == 900.0  # type: ignore[attr-defined]
    message = _error(tmp_path, BASE.replace("port = 2222", 'port = 2222\nidle_timeout = "soon"'))
    assert "server.idle_timeout: expected a duration" in message


def test_ciphers_default_leaves_chacha20_out(tmp_path: Path) -> None:
    ciphers = _load(tmp_path, BASE).server.ciphers  # type: ignore[attr-defined]
    assert "chacha20-poly1305@openssh.com" not in ciphers
    assert ciphers[0] == "aes128-gcm@openssh.com" and "aes128-ctr" in ciphers


def test_ciphers_can_bring_chacha20_back(tmp_path: Path) -> None:
    text = BASE.replace("port = 2222", 'port = 2222\nciphers = ["chacha20-poly1305@openssh.com",'
                        ' "aes128-gcm@openssh.com"]')
    assert _load(tmp_path, text).server.ciphers == (  # type: ignore[attr-defined]
        "chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com")


@pytest.mark.parametrize("value", ['["aes128-cbc"]', '["3des-cbc", "aes128-ctr"]', "[]",
                                   '"aes128-ctr"', '["aes128-ctr.*"]'])
def test_ciphers_outside_the_hardened_list_are_refused(tmp_path: Path, value: str) -> None:
    message = _error(tmp_path, BASE.replace("port = 2222", f"port = 2222\nciphers = {value}"))
    assert ":3: server.ciphers: expected a list of ciphers from aes128-gcm@openssh.com" in message
    assert "\n" not in message


def test_server_offers_the_configured_ciphers_in_order() -> None:
    from bastion.server.hardening import algorithm_options

    chosen = ("chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com")
    assert algorithm_options(chosen)["encryption_algs"] == list(chosen)


def test_upstream_linger_is_a_duration_of_at_most_ten_minutes(tmp_path: Path) -> None:
    assert _load(tmp_path, BASE).server.upstream_linger == 10.0  # type: ignore[attr-defined]
    off = _load(tmp_path, BASE.replace("port = 2222", "port = 2222\nupstream_linger = 0"))
    assert off.server.upstream_linger == 0.0  # type: ignore[attr-defined]
    message = _error(tmp_path, BASE.replace("port = 2222",
                                            'port = 2222\nupstream_linger = "1h"'))
    assert message == (f'{tmp_path / "bastion.toml"}:3: server.upstream_linger: expected a '
                       'duration of at most 600s, got 3600.0')
