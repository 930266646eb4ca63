"""`bastion vault rotate-key` against a running bastion: sessions and TOTP users keep working."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from harness.device_login import SshClient, askpass_env
from harness.wait import wait_until

from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[DemoStack]:
    # TOTP lives under [identity], which needs the IdP; the TOTP user is the config user.
    with DemoStack(tmp_path, with_s3=False,
                   identity_config={"totp_required_for": {"targets": ["db01"]}}) as st:
        yield st


def bastion(st: DemoStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion", *args, "-c", str(st.config_path)],
                          capture_output=True, text=True, timeout=60, check=False)


def ssh_with_code(st: DemoStack, target: str, code: str | None) -> SshClient:
    answer = st.workdir / "answer"
    answer.write_text("" if code is None else code + "\n")
    argv = ["ssh", "-F", str(st.ssh_config_path), "-p", str(st.bastion_port),
            f"{st.login}@{target}@{st.bastion_host}", "--", "echo", f"on-{target}"]
    return SshClient(argv, env=askpass_env(st.workdir, answer))


def audit_events(st: DemoStack, name: str) -> list[dict[str, object]]:
    path = st.state_dir / "audit.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if e.get("event") == name]


def next_step_code(totp: pyotp.TOTP, after_step: int) -> tuple[str, int]:
    """A code of a step later than ``after_step`` (each code is accepted once)."""
    wait_until(lambda: int(time.time() // 30) + 1 > after_step, 60, "a fresh TOTP step")
    step = int(time.time() // 30) + 1  # the next step is accepted too (±1)
    return totp.at(step * 30), step


def test_rotation_keeps_sessions_and_totp_working(stack: DemoStack) -> None:
    enrolled = bastion(stack, "totp", "enroll", "demo")
    assert enrolled.returncode == 0, enrolled.stderr
    uri = next(line for line in enrolled.stdout.splitlines() if line.startswith("otpauth://"))
    totp = pyotp.TOTP(parse_qs(urlsplit(uri).query)["secret"][0])
    code, step = next_step_code(totp, -1)
    before = ssh_with_code(stack, "db01", code)
    assert before.finish() == 0 and before.stdout == "on-db01\n", before.stderr

    old_key = stack.vault_key_path.read_text()
    new_key = stack.workdir / "new-vault.key"
    made = bastion_keygen(new_key)
    assert made.returncode == 0, made.stderr
    rotated = bastion(stack, "vault", "rotate-key", "--new-key-file", str(new_key))
    assert rotated.returncode == 0, rotated.stderr
    assert "1 TOTP secrets" in rotated.stdout and "no restart is needed" in rotated.stdout
    assert stack.vault_key_path.read_text() == new_key.read_text() != old_key

    # The same server process, not restarted: a session to a target without TOTP opens (the
    # vault is read under the new key) ...
    assert stack.bastion is not None and stack.bastion.proc.poll() is None
    plain = ssh_with_code(stack, "web01", None)
    assert plain.finish() == 0 and plain.stdout == "on-web01\n", plain.stderr
    # ... and the TOTP user is not locked out (the secret was re-sealed under the new key).
    code, _ = next_step_code(totp, step)
    after = ssh_with_code(stack, "db01", code)
    assert after.finish() == 0 and after.stdout == "on-db01\n", after.stderr
    # Each worker process that served a session since switched to the new key, once.
    changed = audit_events(stack, "vault.key_changed")
    workers = audit_events(stack, "server.start")[-1]["workers"]
    assert 1 <= len(changed) <= workers
    assert len({e.get("worker") for e in changed}) == len(changed)
    assert all(e["new_key_id"] != e["old_key_id"] for e in changed)
    assert audit_events(stack, "vault.rotated")[0]["totp_secrets"] == 1
    assert not audit_events(stack, "vault.refused")


def bastion_keygen(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion", "keygen", "vault", "--out", str(out)],
                          capture_output=True, text=True, timeout=60, check=False)
