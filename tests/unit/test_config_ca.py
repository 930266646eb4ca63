"""[ca] and the certificate keys of [[targets]]: mistakes are one line with file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

from bastion.config import load_config
from bastion.config.model import Config, TargetAuth
from bastion.errors import ConfigError

HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
CA_LINE = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()

BASE = f"""\
[vault]
key_file = "vault.key"

[[targets]]
name = "web01"
host = "127.0.0.1"
host_key = "{HOST_KEY}"

[[targets]]
name = "db01"
host = "127.0.0.1"
host_key = "{HOST_KEY}"
auth = "certificate"

[[access]]
groups = ["ops"]
targets = ["*"]
logins = ["deploy"]
"""

CA = """
[ca]
key_file = "user_ca"
"""


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "bastion.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return str(info.value)


def test_certificate_target_with_a_ca_loads(tmp_path: Path) -> None:
    config = _load(tmp_path, BASE + CA)
    web, db = config.targets
    assert (web.auth, db.auth) == (TargetAuth.VAULT, TargetAuth.CERTIFICATE)
    assert config.ca is not None and config.ca.key.key_file == tmp_path / "user_ca"
    assert (config.ca.validity, config.ca.clock_skew) == (300.0, 60.0)
    assert not config.ca.sign_with_next and config.ca.next is None


def test_certificate_target_without_ca_names_the_target_and_line(tmp_path: Path) -> None:
    message = _error(tmp_path, BASE)
    line = BASE.splitlines().index('auth = "certificate"') + 1
    assert message == (f'{tmp_path / "bastion.toml"}:{line}: targets[1].auth: expected '
                       '"vault", or a [ca] section to sign certificates with (target db01 '
                       'uses auth = "certificate"), got "certificate"')


def test_check_config_prints_that_error_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bastion.toml"
    path.write_text(BASE, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "bastion", "check-config", str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    line = BASE.splitlines().index('auth = "certificate"') + 1
    assert result.stderr.startswith(f"bastion: {path}:{line}: targets[1].auth: expected ")
    assert "target db01" in result.stderr and result.stderr.count("\n") == 1


def test_bad_auth_value(tmp_path: Path) -> None:
    text = (BASE + CA).replace('auth = "certificate"', 'auth = "cert"')
    line = text.splitlines().index('auth = "cert"') + 1
    assert _error(tmp_path, text) == (f'{tmp_path / "bastion.toml"}:{line}: targets[1].auth: '
                                      'expected "vault" or "certificate", got "cert"')


@pytest.mark.parametrize("ca, expected", [
    ('[ca]\nvalidity = "5m"\n', "ca.key_file: expected exactly one of key_file, key_env, "
                                "key_credential"),
    ('[ca]\nkey_file = "a"\nkey_env = "B"\n', "ca.key_file: expected exactly one of"),
    ('[ca]\npublic_key = "x"\n', "ca.public_key: expected no public_key here"),
    ('[ca]\nkey_file = "a"\nvalidity = "0s"\n', "ca.validity: expected a duration"),
    ('[ca]\nkey_file = "a"\nvalidity = "2d"\n', 'ca.validity: expected a duration of at most'),
    ('[ca]\nkey_file = "a"\nclock_skew = "2h"\n', "ca.clock_skew: expected a duration of at"),
    ('[ca]\nkey_file = "a"\nsign_with = "next"\n', "ca.sign_with: expected \"current\" unless"),
    ('[ca]\nkey_file = "a"\nsign_with = "old"\n', 'ca.sign_with: expected "current" or "next"'),
    ('[ca]\nkey_file = "a"\nsign_with = "next"\n[ca.next]\npublic_key = "' + CA_LINE + '"\n',
     "ca.sign_with: expected \"current\" unless [ca.next] has a private key source"),
    ('[ca]\nkey_file = "a"\n[ca.next]\npublic_key = "ssh-ed25519 nope"\n',
     "ca.next.public_key: expected an OpenSSH public key line of a CA"),
    ('[ca]\nkey_file = "a"\nkey_credential = "bad name!"\n', "ca.key_credential: expected a"),
    ('[ca]\nkey_file = "a"\nlifetime = "5m"\n', "ca.lifetime: expected no such key here"),
])
def test_ca_section_errors(tmp_path: Path, ca: str, expected: str) -> None:
    message = _error(tmp_path, BASE + "\n" + ca)
    assert message.startswith(f"{tmp_path / 'bastion.toml'}:")
    assert expected in message, message
    assert "\n" not in message


def test_rolling_configuration_loads(tmp_path: Path) -> None:
    text = BASE + '\n[ca]\nkey_file = "old_ca"\nsign_with = "next"\nvalidity = "2m"\n' \
        '[ca.next]\nkey_credential = "user-ca-2027"\n'
    ca = _load(tmp_path, text).ca
    assert ca is not None and ca.sign_with_next and ca.validity == 120.0
    assert ca.next is not None and ca.next.key_credential == "user-ca-2027"


# Named ids: CA_LINE is a new key each run, and ids made from it would differ between
# pytest-xdist's processes.
@pytest.mark.parametrize("keys, expected", [
    (f'host_ca = "{CA_LINE}"', None),
    (f'host_cas = ["{CA_LINE}", "{CA_LINE}"]', None),
    ('host_ca = "ssh-ed25519 AAAA"', "targets[2].host_ca: expected an OpenSSH public key line"),
    ('source_addresses = ["192.0.2.1", "10.0.0.0/8", "2001:db8::1"]', "host_key"),
    (f'host_ca = "{CA_LINE}"\nsource_addresses = ["bastion.example.com"]',
     "targets[2].source_addresses: expected a list of IP addresses or networks"),
], ids=["host_ca", "host_cas", "unreadable_ca", "no_key_no_ca", "name_as_source"])
def test_host_ca_instead_of_a_pinned_key(tmp_path: Path, keys: str, expected: str | None) -> None:
    text = BASE + CA + f'\n[[targets]]\nname = "app01"\nhost = "127.0.0.1"\n{keys}\n'
    if expected is None:
        target = _load(tmp_path, text).targets[2]
        assert target.host_keys == () and CA_LINE in target.host_cas
        return
    message = _error(tmp_path, text)
    assert expected in message, message


def test_check_files_reports_a_missing_ca_key_file(tmp_path: Path) -> None:
    from bastion.config import check_files

    (tmp_path / "vault.key").write_text("x", encoding="ascii")
    config = _load(tmp_path, BASE + CA)
    assert check_files(config) == [f"{tmp_path / 'bastion.toml'}: ca.key_file "
                                   f"{tmp_path / 'user_ca'} does not exist"]


def test_serve_refuses_to_start_with_a_ca_key_others_can_read(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "bastion", "keygen", "vault", "--out",
                    str(tmp_path / "vault.key")], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "bastion", "keygen", "ca", "--out",
                    str(tmp_path / "user_ca")], check=True, capture_output=True)
    (tmp_path / "user_ca").chmod(0o644)
    path = tmp_path / "bastion.toml"
    path.write_text("[server]\nport = 0\n" + BASE + CA, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "bastion", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2  # a setup mistake: exit 2, as for a vault key file
    assert result.stderr == (f"bastion: CA key file {tmp_path / 'user_ca'} is accessible to "
                             f"other users (mode 0644); run chmod 600 {tmp_path / 'user_ca'}\n")
