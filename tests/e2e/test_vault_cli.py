"""The real ``bastion`` console script managing a vault: what an operator types and sees."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

pytestmark = pytest.mark.e2e

PASSWORD = "s3cret-Pa55word"
# The console script installed beside this interpreter (the venv), as an operator runs it.
BASTION = str(Path(sys.executable).with_name("bastion"))


def run(*args: str, stdin: str = "", env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASTION, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, check=False)


def ok(*args: str, stdin: str = "") -> str:
    result = run(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bastion: ") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert PASSWORD not in result.stdout + result.stderr


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    host_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    config = tmp_path / "bastion.toml"
    config.write_text(f"""
[paths]
state_dir = "state"

[vault]
key_file = "vault.key"

[[targets]]
name = "web01"
host = "127.0.0.1"
host_key = "{host_key}"
""", encoding="utf-8")
    private_key = tmp_path / "id_ed25519"
    private_key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    return {"config": config, "key": tmp_path / "vault.key", "vault": tmp_path / "state/vault.json",
            "private_key": private_key, "dir": tmp_path}


def test_set_list_remove(setup: dict[str, Path]) -> None:
    cfg = str(setup["config"])
    out = ok("keygen", "vault", "--out", str(setup["key"]))
    assert "key id" in out
    assert stat.S_IMODE(setup["key"].stat().st_mode) == 0o600
    assert len(base64.b64decode(setup["key"].read_text().strip())) == 32
    assert_one_line_error(run("keygen", "vault", "--out", str(setup["key"])), "not overwriting")

    ok("vault", "set", "-c", cfg, "web01", "deploy", "--key-file", str(setup["private_key"]))
    ok("vault", "set", "-c", cfg, "web01", "root", "--password-stdin", stdin=PASSWORD + "\n")
    assert stat.S_IMODE(setup["vault"].stat().st_mode) == 0o600

    listing = ok("vault", "list", "-c", cfg)
    assert [line.split() for line in listing.splitlines()] == [
        ["TARGET", "LOGIN", "KIND"], ["web01", "deploy", "private_key"],
        ["web01", "root", "password"]]
    key_text = setup["private_key"].read_text()
    for secret in (PASSWORD, key_text.splitlines()[1], setup["key"].read_text().strip()):
        assert secret not in listing
        assert secret not in setup["vault"].read_text()

    assert_one_line_error(
        run("vault", "set", "-c", cfg, "web02", "deploy", "--password-stdin", stdin=PASSWORD),
        "'web02' is not a target")
    assert_one_line_error(
        run("vault", "set", "-c", cfg, "web01", "x", "--key-file", f"{setup['private_key']}.nope"),
        "cannot read key file")

    ok("vault", "remove", "-c", cfg, "web01", "root")
    assert "root" not in ok("vault", "list", "-c", cfg)
    assert_one_line_error(run("vault", "remove", "-c", cfg, "web01", "root"),
                          "no credential for root@web01")


def test_wrong_key_and_tampered_file_are_one_line(setup: dict[str, Path]) -> None:
    cfg = str(setup["config"])
    ok("keygen", "vault", "--out", str(setup["key"]))
    ok("vault", "set", "-c", cfg, "web01", "root", "--password-stdin", stdin=PASSWORD)
    good_key = setup["key"].read_text()

    setup["key"].unlink()
    ok("keygen", "vault", "--out", str(setup["key"]))
    assert_one_line_error(run("vault", "list", "-c", cfg), "wrong vault key")

    setup["key"].write_text(good_key)
    document = json.loads(setup["vault"].read_text())
    sealed = bytearray(base64.b64decode(document["ciphertext"]))
    sealed[3] ^= 0x40
    document["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
    setup["vault"].write_text(json.dumps(document))
    assert_one_line_error(run("vault", "list", "-c", cfg), "damaged or was tampered with")

    setup["vault"].write_text(setup["vault"].read_text()[:40])
    assert_one_line_error(run("vault", "list", "-c", cfg), "damaged")


def test_rotate_key_and_env_source(setup: dict[str, Path]) -> None:
    cfg = str(setup["config"])
    ok("keygen", "vault", "--out", str(setup["key"]))
    ok("vault", "set", "-c", cfg, "web01", "root", "--password-stdin", stdin=PASSWORD)
    new_key = setup["dir"] / "new.key"
    ok("keygen", "vault", "--out", str(new_key))
    old_key_text = setup["key"].read_text()
    out = ok("vault", "rotate-key", "-c", cfg, "--new-key-file", str(new_key))
    assert str(setup["key"]) in out and PASSWORD not in out
    assert "no restart is needed" in out
    # With vault.key_file the rotation installs the new key where the config reads it (0600).
    assert setup["key"].read_text() == new_key.read_text() != old_key_text
    assert stat.S_IMODE(setup["key"].stat().st_mode) == 0o600
    assert ["web01", "root", "password"] in [
        line.split() for line in ok("vault", "list", "-c", cfg).splitlines()]
    old_copy = setup["dir"] / "old.key"
    old_copy.write_text(old_key_text)
    old_copy.chmod(0o600)
    setup["config"].write_text(setup["config"].read_text().replace(
        'key_file = "vault.key"', 'key_file = "old.key"'))
    assert_one_line_error(run("vault", "list", "-c", cfg), "wrong vault key")
    setup["config"].write_text(setup["config"].read_text().replace(
        'key_file = "old.key"', 'key_file = "vault.key"'))

    # The operator moves the key into an environment variable, as the rotation output says.
    text = setup["config"].read_text().replace('key_file = "vault.key"', 'key_env = "VAULT_KEY"')
    setup["config"].write_text(text)
    result = run("vault", "list", "-c", cfg, env={"VAULT_KEY": new_key.read_text()})
    assert result.returncode == 0, result.stderr
    assert ["web01", "root", "password"] in [line.split() for line in result.stdout.splitlines()]
    assert_one_line_error(run("vault", "list", "-c", cfg, env={"VAULT_KEY": "bm90IGEga2V5"}),
                          "environment variable VAULT_KEY")
