"""The console script: check-config and keygen host, as an operator runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "bastion.example.toml"
# The console script installed beside this interpreter (the venv), as an operator runs it.
BASTION = str(Path(sys.executable).with_name("bastion"))


def _bastion(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASTION, *args], capture_output=True, text=True, timeout=60,
                          check=False, stdin=subprocess.DEVNULL)


def test_check_config_names_file_line_and_key(tmp_path: Path) -> None:
    broken = tmp_path / "bastion.toml"
    text = EXAMPLE.read_text(encoding="utf-8")
    broken.write_text(text.replace("port = 2222", "port = 99999", 1), encoding="utf-8")
    line = next(n for n, row in enumerate(text.splitlines(), 1) if row.startswith("port = 2222"))
    result = _bastion("check-config", str(broken))
    assert result.returncode == 2
    assert result.stderr == (f"bastion: {broken}:{line}: server.port: expected an integer "
                             "from 0 to 65535, got 99999\n")


def test_check_config_on_missing_file_is_one_line(tmp_path: Path) -> None:
    result = _bastion("check-config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no such file" in result.stderr


def test_keygen_host_writes_a_private_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "host_key"
    result = _bastion("keygen", "host", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ssh-ed25519 ")
    assert out.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "host_key.pub").read_text().strip() == result.stdout.strip()
    again = _bastion("keygen", "host", "--out", str(out))
    assert again.returncode != 0 and "not overwriting" in again.stderr


def test_an_unknown_command_is_one_line_naming_it_once() -> None:
    result = _bastion("sessoins")
    assert result.returncode == 2
    assert result.stderr == "bastion: No such command 'sessoins'. (see --help)\n"
    missing = _bastion("keys", "revoke", "--no-such-option")
    assert missing.returncode == 2
    assert missing.stderr.startswith("bastion: keys revoke: No such option")
