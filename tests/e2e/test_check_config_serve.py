"""``check-config`` OK means ``bastion serve`` starts, and what serve would refuse at start-up
check-config refuses first, with the same one line (exit 2, never serve's 70 "internal error")."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.wait import wait_until

from bastion.demo.procs import free_port

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "bastion.example.toml"


def _bastion(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True,
                          text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """The example config with its paths moved under tmp_path, its keys made, a free port."""
    etc, var, creds = tmp_path / "etc", tmp_path / "var", tmp_path / "creds"
    etc.mkdir()
    creds.mkdir()
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text.replace("/var/lib/bastion", str(var)).replace("/etc/bastion", str(etc))
    text = text.replace('listen = "0.0.0.0"', 'listen = "127.0.0.1"')
    text = text.replace("port = 2222", f"port = {free_port()}", 1)
    config = tmp_path / "bastion.toml"
    config.write_text(text, encoding="utf-8")
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    for args in (("keygen", "signing", "--out", str(etc / "signing.key")),
                 ("keygen", "vault", "--out", str(creds / "vault-key")),
                 ("keygen", "ca", "--out", str(creds / "user-ca"))):
        made = _bastion(*args, env=env)
        assert made.returncode == 0, made.stderr
    yield config, env


def _serve_starts(config: Path, env: dict[str, str]) -> None:
    log = config.parent / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bastion", "serve", "--config",
                                 str(config)], stdout=subprocess.DEVNULL, stderr=err, env=env,
                                stdin=subprocess.DEVNULL)
    try:
        def listening() -> bool:
            text = log.read_text(encoding="utf-8")
            assert proc.poll() is None, text
            return "bastion: listening on 127.0.0.1:" in text

        wait_until(listening, 60, "bastion serve to listen")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_a_config_check_config_accepts_does_start_serve(
        site: tuple[Path, dict[str, str]]) -> None:
    config, env = site
    checked = _bastion("check-config", str(config), env=env)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{config}: OK")
    _serve_starts(config, env)


@pytest.mark.parametrize(("change", "expected"), [
    (('listen = "127.0.0.1"', 'listen = "no-such-host.invalid"'),
     "server.listen: 'no-such-host.invalid' cannot be resolved"),
    (("ssh_host_ed25519_key", "hostkeys-dir"), "hostkeys-dir is not a file"),
])
def test_what_serve_refuses_check_config_refuses_with_the_same_line(
        site: tuple[Path, dict[str, str]], change: tuple[str, str], expected: str) -> None:
    config, env = site
    config.write_text(config.read_text(encoding="utf-8").replace(*change), encoding="utf-8")
    (config.parent / "var" / "hostkeys-dir").mkdir(parents=True)
    checked = _bastion("check-config", str(config), env=env)
    served = _bastion("serve", "--config", str(config), env=env)
    assert checked.returncode == served.returncode == 2, (checked.stderr, served.stderr)
    assert expected in checked.stderr
    assert served.stderr == checked.stderr and served.stderr.count("\n") == 1


def test_check_config_without_the_signing_key_fails(site: tuple[Path, dict[str, str]]) -> None:
    config, env = site
    shutil.move(config.parent / "etc" / "signing.key", config.parent / "elsewhere.key")
    checked = _bastion("check-config", str(config), env=env)
    assert checked.returncode == 2
    assert "evidence.signing_key: signing key" in checked.stderr
    assert "no such file" in checked.stderr
