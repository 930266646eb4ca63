"""The user CA: certificates say exactly one login, a few minutes, one address, few rights."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import asyncssh
import pytest
from asyncssh.public_key import CERT_TYPE_USER

from bastion.config.model import CaConfig, CaKeyConfig
from bastion.credentials.ca import (
    CertificateAuthority,
    certificate_key_id,
    generate_ca_key,
    load_ca_key,
    trusted_ca_lines,
)
from bastion.errors import CertificateAuthorityError, ConfigError

NOW = 1_900_000_000.0


@pytest.fixture
def ca_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


def _described(cert: asyncssh.SSHCertificate, tmp_path: Path) -> dict[str, list[str]]:
    """The certificate as OpenSSH reads it (``ssh-keygen -L``): section -> its lines."""
    path = tmp_path / "described-cert.pub"
    path.write_bytes(cert.export_certificate())
    out = subprocess.run(["ssh-keygen", "-L", "-f", str(path)], capture_output=True, text=True,
                         check=True).stdout
    path.unlink()
    sections: dict[str, list[str]] = {}
    current = ""
    for line in out.splitlines()[1:]:
        name, sep, rest = line.strip().partition(":")
        if line.startswith("        ") and not line.startswith("                ") and sep:
            current = name
            sections[current] = [rest.strip()] if rest.strip() else []
        elif current:
            sections[current].append(line.strip())
    return sections


def test_certificate_names_one_login_for_minutes_from_one_address(ca_key,
                                                                  tmp_path: Path) -> None:
    ca = CertificateAuthority(ca_key, validity=300, clock_skew=60)
    minted = ca.issue("deploy", "ann@local session S1", ["192.0.2.7"], permit_pty=True, now=NOW)
    cert = minted.certificate
    assert cert.principals == ["deploy"]
    assert cert.signing_key.public_data == ca_key.public_data
    assert cert.key.public_data == minted.private_key.public_data
    seen = _described(cert, tmp_path)
    assert seen["Principals"] == ["deploy"]
    assert seen["Key ID"] == ['"ann@local session S1"']
    assert seen["Critical Options"] == ["source-address 192.0.2.7/32"]  # no force-command
    assert seen["Extensions"] == ["permit-pty"]
    issued = minted.issued
    assert issued.record() == {"serial": str(issued.serial), "key_id": "ann@local session S1"}
    assert issued.valid_after == NOW - 60 and issued.valid_before == NOW + 300
    stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))  # noqa: E731
    assert seen["Valid"] == [f"from {stamp(NOW - 60)} to {stamp(NOW + 300)}"]
    assert seen["Serial"] == [str(issued.serial)]


def test_no_pty_and_no_forwarding_unless_needed(ca_key, tmp_path: Path) -> None:
    minted = CertificateAuthority(ca_key).issue("deploy", "k", ["127.0.0.1", "10.0.0.0/8"],
                                                permit_pty=False)
    seen = _described(minted.certificate, tmp_path)
    assert seen["Extensions"] == ["(none)"]  # no pty, agent, port or X11 forwarding, no user rc
    assert seen["Critical Options"] == ["source-address 127.0.0.1/32,10.0.0.0/8"]


def test_every_certificate_has_its_own_key_and_random_serial(ca_key) -> None:
    ca = CertificateAuthority(ca_key)
    minted = [ca.issue("deploy", "k", ["127.0.0.1"], permit_pty=False) for _ in range(20)]
    assert len({m.issued.serial for m in minted}) == 20
    assert len({m.private_key.public_data for m in minted}) == 20
    # 64 random bits, not a counter: all 20 below 2**56 has a chance of 2**-160.
    assert max(m.issued.serial for m in minted) >= 2 ** 56
    assert all(0 <= m.issued.serial < 2 ** 64 for m in minted)


def test_login_a_certificate_does_not_validate_for_login_b(ca_key) -> None:
    cert = CertificateAuthority(ca_key).issue("alice", "k", ["127.0.0.1"], False).certificate
    cert.validate(CERT_TYPE_USER, "alice")
    with pytest.raises(ValueError, match="principal"):
        cert.validate(CERT_TYPE_USER, "bob")


def test_key_material_never_shows_in_repr(ca_key) -> None:
    ca = CertificateAuthority(ca_key)
    minted = ca.issue("deploy", "k", ["127.0.0.1"], permit_pty=False)
    private = minted.private_key.export_private_key().decode()
    for text in (repr(minted), str(minted), repr(ca), repr(minted.issued)):
        assert "PRIVATE KEY" not in text and private not in text


def test_no_source_address_no_certificate(ca_key) -> None:
    with pytest.raises(CertificateAuthorityError, match="address"):
        CertificateAuthority(ca_key).issue("deploy", "k", [], permit_pty=False)


@pytest.mark.parametrize("name, issuer, expected", [
    ("alice", "https://idp.example.com", "alice@https://idp.example.com session S"),
    ("demo", None, "demo@local session S"),
    ("eve\n\x1b[31mroot", "local", "eve??[31mroot@local session S"),
])
def test_key_id_names_person_issuer_and_session_in_printable_text(name, issuer,
                                                                  expected) -> None:
    assert certificate_key_id(name, issuer, "S") == expected


def test_key_id_is_bounded() -> None:
    assert len(certificate_key_id("x" * 1000, "local", "S")) == 256


def test_keygen_writes_0600_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "ca" / "user_ca"
    line = generate_ca_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Path(f"{path}.pub").read_text(encoding="ascii").strip() == line
    key = load_ca_key(CaKeyConfig(key_file=path))
    assert key.export_public_key().decode().strip() == line
    before = path.read_bytes()
    with pytest.raises(CertificateAuthorityError, match="exists already"):
        generate_ca_key(path)
    assert path.read_bytes() == before


def test_key_from_env_and_systemd_credential(tmp_path: Path) -> None:
    path = tmp_path / "user-ca"
    line = generate_ca_key(path)
    text = path.read_text(encoding="ascii")
    from_env = load_ca_key(CaKeyConfig(key_env="CA"), "ca", {"CA": text})
    from_cred = load_ca_key(CaKeyConfig(key_credential="user-ca"), "ca",
                            {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    for key in (from_env, from_cred):
        assert key.export_public_key().decode().strip() == line


@pytest.mark.parametrize("source, environ, message", [
    (CaKeyConfig(key_env="CA"), {}, r"^environment variable CA \(ca.key_env\) is not set$"),
    (CaKeyConfig(key_env="CA"), {"CA": "not a key"},
     r"^CA key in environment variable CA: expected an unencrypted OpenSSH private key"),
    (CaKeyConfig(key_credential="user-ca"), {},
     r"^systemd credential user-ca \(ca.key_credential\): \$CREDENTIALS_DIRECTORY is not set"),
    (CaKeyConfig(), {}, r"^no CA key source configured \(ca.key_file, key_env or "),
])
def test_key_source_errors_are_one_line_without_the_key(source, environ, message) -> None:
    with pytest.raises(CertificateAuthorityError, match=message) as info:
        load_ca_key(source, "ca", environ)
    assert "\n" not in str(info.value)


def test_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "user_ca"
    generate_ca_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"accessible to other users.*chmod 600"):
        load_ca_key(CaKeyConfig(key_file=path))


def test_key_file_that_is_not_a_key(tmp_path: Path) -> None:
    path = tmp_path / "user_ca"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n", encoding="ascii")
    path.chmod(0o600)
    with pytest.raises(CertificateAuthorityError, match=rf"CA key file {path}: expected an "):
        load_ca_key(CaKeyConfig(key_file=path))


def test_roll_current_and_next_are_both_shown_and_next_can_sign(tmp_path: Path) -> None:
    current, upcoming = tmp_path / "ca1", tmp_path / "ca2"
    line1, line2 = generate_ca_key(current), generate_ca_key(upcoming)
    step1 = CaConfig(key=CaKeyConfig(key_file=current), next=CaKeyConfig(public_key=line2))
    assert trusted_ca_lines(step1) == [("current", line1), ("next", line2)]
    assert CertificateAuthority.from_config(step1).public_line() == line1
    step2 = CaConfig(key=CaKeyConfig(key_file=current), next=CaKeyConfig(key_file=upcoming),
                     sign_with_next=True, validity=120, clock_skew=5)
    signer = CertificateAuthority.from_config(step2)
    assert signer.public_line() == line2
    assert (signer.validity, signer.clock_skew) == (120, 5)
    assert trusted_ca_lines(step2) == [("current", line1), ("next", line2)]
