"""The credential vault: sealing, key sources, and every way a vault file can be wrong."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import asyncssh
import pytest

from bastion.config.model import VaultConfig
from bastion.credentials.vault import (
    Credential,
    Vault,
    generate_vault_key,
    key_id,
    load_vault_key,
    password_credential,
    private_key_credential,
    write_vault_key,
)
from bastion.errors import ConfigError, VaultError
from bastion.secret import Secret

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def private_key_text() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()


@pytest.fixture
def key() -> Secret[bytes]:
    return generate_vault_key()


@pytest.fixture
def vault_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "vault.json"


def sealed_vault(path: Path, key: Secret[bytes], private_key_text: str) -> Vault:
    vault = Vault.open(path, key, create=True)
    vault.set("web01", "deploy", private_key_credential(private_key_text, "test key"))
    vault.set("db1", "postgres", password_credential(PASSWORD))
    vault.save()
    return vault


def one_line_error(exc: pytest.ExceptionInfo[VaultError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


# -- round trip -----------------------------------------------------------------------------

def test_round_trip(vault_path: Path, key: Secret[bytes], private_key_text: str) -> None:
    sealed_vault(vault_path, key, private_key_text)
    reopened = Vault.open(vault_path, key)
    assert reopened.entries() == [("db1", "postgres", "password"),
                                  ("web01", "deploy", "private_key")]
    cred = reopened.get("web01", "deploy")
    assert cred is not None and cred.kind == "private_key"
    assert cred.secret.reveal() == private_key_text
    asyncssh.import_private_key(cred.secret.reveal())
    pw = reopened.get("db1", "postgres")
    assert pw == Credential("password", Secret(PASSWORD))
    assert reopened.get("db1", "root") is None


def test_file_holds_no_secret_and_is_private(vault_path: Path, key: Secret[bytes],
                                             private_key_text: str) -> None:
    sealed_vault(vault_path, key, private_key_text)
    raw = vault_path.read_bytes()
    assert PASSWORD.encode() not in raw
    assert b"PRIVATE KEY" not in raw and b"web01" not in raw
    assert stat.S_IMODE(vault_path.stat().st_mode) == 0o600
    doc = json.loads(raw)
    assert set(doc) == {"format", "version", "key_id", "nonce", "ciphertext"}
    assert doc["format"] == "bastion-vault" and doc["version"] == 1
    assert doc["key_id"] == key_id(key)
    assert len(base64.b64decode(doc["nonce"])) == 12
    assert [p.name for p in vault_path.parent.iterdir()] == ["vault.json"]  # no temp left


def test_fresh_nonce_every_save(vault_path: Path, key: Secret[bytes],
                                private_key_text: str) -> None:
    vault = sealed_vault(vault_path, key, private_key_text)
    first = json.loads(vault_path.read_text())
    vault.save()
    second = json.loads(vault_path.read_text())
    assert first["nonce"] != second["nonce"]
    assert first["ciphertext"] != second["ciphertext"]


def test_key_id_is_specified_hash(key: Secret[bytes]) -> None:
    import hashlib

    assert key_id(key) == hashlib.sha256(b"bastion-vault-key-id" + key.reveal()).hexdigest()[:16]


def test_set_replace_remove(vault_path: Path, key: Secret[bytes], private_key_text: str) -> None:
    vault = sealed_vault(vault_path, key, private_key_text)
    vault.set("db1", "postgres", password_credential("new password"))
    assert vault.remove("web01", "deploy") is True
    assert vault.remove("web01", "deploy") is False
    vault.save()
    reopened = Vault.open(vault_path, key)
    assert reopened.entries() == [("db1", "postgres", "password")]
    cred = reopened.get("db1", "postgres")
    assert cred is not None and cred.secret.reveal() == "new password"


def test_missing_file(vault_path: Path, key: Secret[bytes]) -> None:
    with pytest.raises(VaultError) as exc:
        Vault.open(vault_path, key)
    assert "does not exist" in one_line_error(exc)
    assert Vault.open(vault_path, key, create=True).entries() == []
    assert not vault_path.exists()  # opening never writes


def test_names_are_checked(vault_path: Path, key: Secret[bytes]) -> None:
    vault = Vault.open(vault_path, key, create=True)
    for target, login in [("web01.example", "deploy"), ("web01", "Deploy;rm"), ("", "x")]:
        with pytest.raises(VaultError):
            vault.set(target, login, password_credential(PASSWORD))


# -- wrong key, tampering, garbage ------------------------------------------------------------

def test_wrong_key(vault_path: Path, key: Secret[bytes], private_key_text: str) -> None:
    sealed_vault(vault_path, key, private_key_text)
    other = generate_vault_key()
    with pytest.raises(VaultError) as exc:
        Vault.open(vault_path, other)
    assert one_line_error(exc) == (f"wrong vault key (vault was sealed with key id {key_id(key)}, "
                                   f"this key is {key_id(other)})")


def _edit(path: Path, **fields: object) -> None:
    doc = json.loads(path.read_text())
    doc.update(fields)
    path.write_text(json.dumps(doc))


def _flip(b64: str, index: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("where", ["ciphertext-start", "ciphertext-tag", "nonce"])
def test_tampered_blob(vault_path: Path, key: Secret[bytes], private_key_text: str,
                       where: str) -> None:
    sealed_vault(vault_path, key, private_key_text)
    doc = json.loads(vault_path.read_text())
    if where == "nonce":
        _edit(vault_path, nonce=_flip(doc["nonce"], 0))
    else:
        _edit(vault_path, ciphertext=_flip(doc["ciphertext"], 0 if where.endswith("start")
                                           else -1))
    with pytest.raises(VaultError) as exc:
        Vault.open(vault_path, key)
    assert one_line_error(exc) == f"vault file {vault_path} is damaged or was tampered with"


def test_tampered_header_is_authenticated(vault_path: Path, key: Secret[bytes],
                                          private_key_text: str, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    # A reader that accepted another version must still fail the tag: the header is AAD.
    sealed_vault(vault_path, key, private_key_text)
    _edit(vault_path, version=2)
    monkeypatch.setattr("bastion.credentials.vault.VERSION", 2)
    with pytest.raises(VaultError) as exc:
        Vault.open(vault_path, key)
    assert one_line_error(exc) == f"vault file {vault_path} is damaged or was tampered with"


def test_tampered_header_fields(vault_path: Path, key: Secret[bytes],
                                private_key_text: str) -> None:
    sealed_vault(vault_path, key, private_key_text)
    original = vault_path.read_text()
    cases: list[dict[str, object]] = [
        {"version": 2}, {"version": "1"}, {"key_id": "0" * 16}, {"key_id": 5},
        {"nonce": "not base64!"}, {"nonce": base64.b64encode(b"short").decode()},
        {"ciphertext": ""}, {"ciphertext": None}, {"extra": "field"}, {"format": "other"},
    ]
    for fields in cases:
        vault_path.write_text(original)
        _edit(vault_path, **fields)
        with pytest.raises(VaultError) as exc:
            Vault.open(vault_path, key)
        message = one_line_error(exc)
        assert str(vault_path) in message or "wrong vault key" in message, fields


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"null", b"\xff\xfe garbage",
                                     b'{"format": "bastion-vault"}', b"x" * 1000])
def test_garbage_file(vault_path: Path, key: Secret[bytes], content: bytes) -> None:
    vault_path.parent.mkdir(parents=True)
    vault_path.write_bytes(content)
    with pytest.raises(VaultError) as exc:
        Vault.open(vault_path, key)
    assert str(vault_path) in one_line_error(exc)


def test_truncated_file(vault_path: Path, key: Secret[bytes], private_key_text: str) -> None:
    sealed_vault(vault_path, key, private_key_text)
    data = vault_path.read_bytes()
    for size in (0, 1, len(data) // 2, len(data) - 10):
        vault_path.write_bytes(data[:size])
        with pytest.raises(VaultError) as exc:
            Vault.open(vault_path, key)
        assert str(vault_path) in one_line_error(exc)


# -- credentials --------------------------------------------------------------------------------

def test_credential_repr_hides_secret(private_key_text: str) -> None:
    pw = password_credential(PASSWORD)
    pk = private_key_credential(private_key_text, "k")
    for text in (repr(pw), str(pw), f"{pw}", repr(pk), repr([pk]), repr({"c": pw})):
        assert PASSWORD not in text and "PRIVATE KEY" not in text
    assert "password" in repr(pw) and "Secret(***)" in repr(pw)


def test_vault_repr_hides_secrets(vault_path: Path, key: Secret[bytes],
                                  private_key_text: str) -> None:
    vault = sealed_vault(vault_path, key, private_key_text)
    assert PASSWORD not in repr(vault) and key_id(key) in repr(vault)
    assert base64.b64encode(key.reveal()).decode() not in repr(vault)


def test_private_key_validation(tmp_path: Path) -> None:
    with pytest.raises(VaultError, match="not an OpenSSH or PEM private key"):
        private_key_credential("garbage", "id_x")
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    with pytest.raises(VaultError, match="not an OpenSSH or PEM private key"):
        private_key_credential(public, "id_x.pub")
    encrypted = asyncssh.generate_private_key("ssh-ed25519").export_private_key(
        "pkcs8-pem", passphrase="pass").decode()
    with pytest.raises(VaultError) as exc:
        private_key_credential(encrypted, "id_enc")
    assert "passphrase" in one_line_error(exc)


def test_password_validation() -> None:
    for bad in ("", "two\nlines", "nul\0"):
        with pytest.raises(VaultError):
            password_credential(bad)
    with pytest.raises(VaultError):
        Credential("token", Secret("x"))  # type: ignore[arg-type]


# -- key sources --------------------------------------------------------------------------------

def test_write_and_read_key_file(tmp_path: Path, key: Secret[bytes]) -> None:
    path = tmp_path / "keys" / "vault.key"
    write_vault_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == base64.b64encode(key.reveal()).decode() + "\n"
    assert load_vault_key(VaultConfig(path=tmp_path / "v", key_file=path), {}) == key
    with pytest.raises(VaultError, match="not overwriting"):
        write_vault_key(path, generate_vault_key())
    assert load_vault_key(VaultConfig(path=tmp_path / "v", key_file=path), {}) == key


def test_key_from_env(tmp_path: Path, key: Secret[bytes]) -> None:
    cfg = VaultConfig(path=tmp_path / "v", key_env="BASTION_VAULT_KEY")
    encoded = base64.b64encode(key.reveal()).decode()
    assert load_vault_key(cfg, {"BASTION_VAULT_KEY": f"  {encoded}\n"}) == key
    with pytest.raises(VaultError) as exc:
        load_vault_key(cfg, {})
    assert "BASTION_VAULT_KEY" in one_line_error(exc) and "not set" in str(exc.value)


def test_key_from_systemd_credential(tmp_path: Path, key: Secret[bytes]) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    write_vault_key(creds / "bastion-vault", key)
    cfg = VaultConfig(path=tmp_path / "v", key_credential="bastion-vault")
    assert load_vault_key(cfg, {"CREDENTIALS_DIRECTORY": str(creds)}) == key
    with pytest.raises(VaultError) as exc:
        load_vault_key(cfg, {})
    assert "CREDENTIALS_DIRECTORY" in one_line_error(exc)
    with pytest.raises(VaultError) as exc:
        load_vault_key(cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path / "nowhere")})
    assert "systemd credential bastion-vault" in one_line_error(exc)


def test_first_configured_source_wins(tmp_path: Path, key: Secret[bytes]) -> None:
    path = tmp_path / "vault.key"
    write_vault_key(path, key)
    other = base64.b64encode(generate_vault_key().reveal()).decode()
    cfg = VaultConfig(path=tmp_path / "v", key_file=path, key_env="K", key_credential="c")
    assert load_vault_key(cfg, {"K": other}) == key


@pytest.mark.parametrize("value", [
    "", "not base64 at all!", base64.b64encode(b"x" * 16).decode(),
    base64.b64encode(b"x" * 33).decode(), "é" * 44, "QUJD" * 2000,
])
def test_bad_key_values_name_the_source_not_the_value(tmp_path: Path, value: str) -> None:
    cfg = VaultConfig(path=tmp_path / "v", key_env="BASTION_VAULT_KEY")
    with pytest.raises(VaultError) as exc:
        load_vault_key(cfg, {"BASTION_VAULT_KEY": value})
    message = one_line_error(exc)
    assert "environment variable BASTION_VAULT_KEY" in message
    assert not value or value not in message
    path = tmp_path / "bad.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, value.encode())
    os.close(fd)
    with pytest.raises(VaultError) as exc:
        load_vault_key(VaultConfig(path=tmp_path / "v", key_file=path), {})
    assert str(path) in one_line_error(exc)


def test_key_file_problems(tmp_path: Path, key: Secret[bytes]) -> None:
    cfg = VaultConfig(path=tmp_path / "v", key_file=tmp_path / "missing.key")
    with pytest.raises(VaultError, match="no such file"):
        load_vault_key(cfg, {})
    path = tmp_path / "open.key"
    write_vault_key(path, key)
    for mode in (0o644, 0o640, 0o604, 0o610):  # the README: 0600 enforced (group bits too)
        path.chmod(mode)
        with pytest.raises(ConfigError, match=f"accessible to other users \\(mode 0{mode:o}"):
            load_vault_key(VaultConfig(path=tmp_path / "v", key_file=path), {})
    path.chmod(0o400)  # read-only for its owner is fine
    assert load_vault_key(VaultConfig(path=tmp_path / "v", key_file=path), {}) == key


# -- rotation -------------------------------------------------------------------------------------

def test_rotate(vault_path: Path, key: Secret[bytes], private_key_text: str) -> None:
    vault = sealed_vault(vault_path, key, private_key_text)
    new_key = generate_vault_key()
    vault.rotate(new_key)
    assert vault.key_id == key_id(new_key)
    with pytest.raises(VaultError, match="wrong vault key"):
        Vault.open(vault_path, key)
    reopened = Vault.open(vault_path, new_key)
    assert reopened.entries() == vault.entries()
    cred = reopened.get("db1", "postgres")
    assert cred is not None and cred.secret.reveal() == PASSWORD


def test_rotate_failure_keeps_old_key(vault_path: Path, key: Secret[bytes],
                                      private_key_text: str) -> None:
    vault = sealed_vault(vault_path, key, private_key_text)
    vault_path.parent.chmod(0o500)  # the save cannot create its temp file
    try:
        if os.access(vault_path.parent, os.W_OK):  # root ignores the mode: make rename fail
            vault.path = vault_path.parent / "missing-dir" / "vault.json"
            (vault_path.parent / "missing-dir").write_text("a file, not a folder")
        with pytest.raises(VaultError, match="cannot write vault file"):
            vault.rotate(generate_vault_key())
    finally:
        vault_path.parent.chmod(0o700)
    assert vault.key_id == key_id(key)
    assert Vault.open(vault_path, key).entries() == vault.entries()
    with pytest.raises(VaultError):
        vault.rotate(Secret(b"short"))


# -- CLI in-process (prompting needs click's runner; the console script is tested in e2e) ---------

def test_cli_password_prompt_and_usage(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bastion.cli.main import _register, cli

    _register()
    host_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    config = tmp_path / "bastion.toml"
    config.write_text(f'[vault]\nkey_file = "vault.key"\n[[targets]]\nname = "web01"\n'
                      f'host = "127.0.0.1"\nhost_key = "{host_key}"\n')
    write_vault_key(tmp_path / "vault.key", generate_vault_key())
    runner = CliRunner()
    result = runner.invoke(cli, ["vault", "set", "-c", str(config), "web01", "root",
                                 "--password-prompt"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    result = runner.invoke(cli, ["vault", "list", "-c", str(config)])
    assert ["web01", "root", "password"] in [line.split() for line in result.output.splitlines()]
    result = runner.invoke(cli, ["vault", "set", "-c", str(config), "web01", "root"])
    assert result.exit_code == 2
    assert "exactly one of --key-file" in result.output
