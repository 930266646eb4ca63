"""TOTP after the first factor: in-band enrollment, right/reused/wrong codes, break-glass users."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from harness.device_login import SshClient, askpass_env
from harness.wait import wait_until

from bastion.demo.idp import complete_device_login
from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    with DemoStack(tmp_path_factory.mktemp("identity-totp"),
                   idp_options={"device_interval": 1},
                   identity_config={"totp_required_for": {"targets": ["db01"]},
                                    "totp_inband_enrollment": True}) as st:
        yield st


def client(st: DemoStack, config: Path, target: str, answer: Path) -> SshClient:
    answer.unlink(missing_ok=True)
    argv = ["ssh", "-F", str(config), "-p", str(st.bastion_port),
            f"{st.login}@{target}@{st.bastion_host}", "--", "echo", f"on-{target}"]
    return SshClient(argv, env=askpass_env(st.workdir, answer))


@dataclass
class Enrolled:
    """alice's TOTP, enrolled in-band after a device login; the codes used so far."""

    totp: pyotp.TOTP
    uri_shown: bool
    first_login_ok: bool
    last_code: str
    last_step: int

    def fresh_code(self) -> str:
        """A code of a step after the last one used (each is accepted once; ±1 step)."""
        wait_until(lambda: int(time.time() // 30) + 1 > self.last_step, 70,
                   "a TOTP step not used yet")
        self.last_step = int(time.time() // 30) + 1
        self.last_code = self.totp.at(self.last_step * 30)
        return self.last_code


@pytest.fixture(scope="module")
def enrolled(stack: DemoStack) -> Enrolled:
    """The in-band enrollment every test below builds on (done once, whichever test runs)."""
    answer = stack.workdir / "answer-enroll"
    ssh = client(stack, stack.sso_ssh_config_path, "db01", answer)
    complete_device_login(ssh.verification_url(), "alice", "alice-password")
    uri = ssh.wait_for_stderr(r"(otpauth://totp/\S+)").group(1)
    totp = pyotp.TOTP(parse_qs(urlsplit(uri).query)["secret"][0])
    code = totp.now()
    answer.write_text(code + "\n")
    ok = ssh.finish() == 0 and ssh.stdout == "on-db01\n"
    return Enrolled(totp, bool(uri), ok, code, int(time.time() // 30))


def test_inband_enrollment_after_device_login(enrolled: Enrolled) -> None:
    assert enrolled.uri_shown and enrolled.first_login_ok


def test_bound_key_still_needs_the_right_code(stack: DemoStack, enrolled: Enrolled) -> None:
    answer = stack.workdir / "answer"
    ssh = client(stack, stack.sso_ssh_config_path, "db01", answer)
    ssh.wait_for_stderr("A one-time code is required")
    assert "user_code" not in ssh.stderr  # the binding replaced the device login
    answer.write_text(enrolled.fresh_code() + "\n")
    assert ssh.finish() == 0 and ssh.stdout == "on-db01\n"


def test_reused_code_fails(stack: DemoStack, enrolled: Enrolled) -> None:
    answer = stack.workdir / "answer"
    ssh = client(stack, stack.sso_ssh_config_path, "db01", answer)
    answer.write_text(f"{enrolled.last_code}\n")  # accepted once already
    assert ssh.finish() == 255 and ssh.stdout == ""
    assert "bastion: this TOTP code was used already" in ssh.stderr


def test_wrong_code_fails(stack: DemoStack, enrolled: Enrolled) -> None:
    now = time.time()
    valid = {enrolled.totp.at(now + d) for d in (-30, 0, 30, 60)}
    wrong = next(c for c in ("000000", "111111", "222222") if c not in valid)
    answer = stack.workdir / "answer"
    ssh = client(stack, stack.sso_ssh_config_path, "db01", answer)
    answer.write_text(wrong + "\n")
    assert ssh.finish() == 255 and ssh.stdout == ""
    assert "bastion: wrong TOTP code" in ssh.stderr


def test_no_totp_where_policy_does_not_ask(stack: DemoStack) -> None:
    answer = stack.workdir / "answer"
    ssh = client(stack, stack.sso_ssh_config_path, "web01", answer)
    assert ssh.finish() == 0 and ssh.stdout == "on-web01\n"
    assert "one-time code" not in ssh.stderr


def test_break_glass_local_user_needs_totp(stack: DemoStack) -> None:
    enrolled = subprocess.run(
        [sys.executable, "-m", "bastion", "totp", "enroll", "demo", "-c", str(stack.config_path)],
        capture_output=True, text=True, timeout=30, check=False)
    assert enrolled.returncode == 0, enrolled.stderr
    uri = next(line for line in enrolled.stdout.splitlines() if line.startswith("otpauth://"))
    totp = pyotp.TOTP(parse_qs(urlsplit(uri).query)["secret"][0])
    answer = stack.workdir / "answer"
    ssh = client(stack, stack.ssh_config_path, "db01", answer)
    ssh.wait_for_stderr("A one-time code is required")
    answer.write_text(totp.now() + "\n")
    assert ssh.finish() == 0 and ssh.stdout == "on-db01\n"
    plain = client(stack, stack.ssh_config_path, "web01", answer)
    assert plain.finish() == 0 and "one-time code" not in plain.stderr
