"""Exec sessions through the bastion with the real OpenSSH client and sshd targets."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from harness.ssh import bastion_destination, run_ssh
from harness.wait import wait_for_session_end

from bastion.audit import read_events
from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e


def _sessions_with(stack: DemoStack, needle: str) -> list[Path]:
    """Session dirs with a channel whose command contains ``needle`` (session.json)."""
    found = []
    for meta_path in stack.spool_dir.glob("*/session.json"):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if any(needle in (c.get("command") or "") for c in meta.get("channels", [])):
            found.append(meta_path.parent)
    return found


def test_exec_passes_stdout_stderr_and_exit_status(demo_stack: DemoStack,
                                                   ssh_base: list[str]) -> None:
    result = run_ssh([*ssh_base, bastion_destination(demo_stack, "web01"), "--",
                      "echo to-stdout; echo to-stderr >&2; exit 7"])
    assert result.returncode == 7
    assert result.stdout == "to-stdout\n"
    assert result.stderr == "to-stderr\n"


def test_exec_on_default_login_and_second_target(demo_stack: DemoStack,
                                                 ssh_base: list[str]) -> None:
    result = run_ssh([*ssh_base, f"db01@{demo_stack.bastion_host}", "--", "id -un"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == demo_stack.login


def test_exec_input_typed_before_target_is_ready_arrives(demo_stack: DemoStack,
                                                        ssh_base: list[str]) -> None:
    text = "".join(f"line {n}\n" for n in range(2000))
    result = run_ssh([*ssh_base, bastion_destination(demo_stack, "web01"), "--", "cat"],
                     input_text=text)
    assert result.returncode == 0, result.stderr
    assert result.stdout == text


def test_exec_50mb_binary_arrives_byte_identical_and_is_recorded(
        demo_stack: DemoStack, ssh_base: list[str], tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(50 * 1024 * 1024))
    marker = f"cat {payload}"
    result = subprocess.run([*ssh_base, bastion_destination(demo_stack, "web01"), "--", marker],
                            capture_output=True, timeout=180, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == payload.stat().st_size
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(
        payload.read_bytes()).digest()
    [session] = _sessions_with(demo_stack, marker)
    meta = wait_for_session_end(session)
    assert meta["state"] == "closed"
    [channel] = meta["channels"]
    assert channel["kind"] == "exec" and not channel["pty"] and channel["exit_status"] == 0
    # Byte-exact: the recorded stdout is the file itself.
    recorded = session / "1-exec.stdout"
    assert recorded.stat().st_size == payload.stat().st_size
    assert hashlib.sha256(recorded.read_bytes()).digest() == hashlib.sha256(
        payload.read_bytes()).digest()


def test_exec_session_is_recorded_with_header_and_audited(demo_stack: DemoStack,
                                                         ssh_base: list[str]) -> None:
    result = run_ssh([*ssh_base, bastion_destination(demo_stack, "web01"), "--",
                      "printf 'caf\\303\\251 recorded\\n'"])
    assert result.returncode == 0, result.stderr
    [session] = _sessions_with(demo_stack, "recorded")
    assert (session / "1-exec.stdout").read_bytes() == "café recorded\n".encode()
    timing = (session / "1-exec.timing").read_text().split()
    assert timing[0] == "O" and timing[2] == str(len("café recorded\n".encode()))
    meta = wait_for_session_end(session)
    assert meta["session_id"] == session.name
    assert meta["channels"][0]["command"] == "printf 'caf\\303\\251 recorded\\n'"
    assert meta["channels"][0]["exit_status"] == 0
    assert meta["target"]["name"] == "web01" and meta["target"]["login"] == demo_stack.login
    assert meta["target"]["host_key_fingerprint"].startswith("SHA256:")
    assert meta["identity"]["name"] == "demo"
    events = read_events(demo_stack.state_dir / "audit.jsonl")
    starts = [e for e in events if e["event"] == "session.start" and e["session"] == session.name]
    ends = [e for e in events if e["event"] == "session.end" and e["session"] == session.name]
    assert len(starts) == 1 and len(ends) == 1
    assert starts[0]["target"] == "web01" and ends[0]["state"] == "closed"


def test_exec_without_target_lists_reachable_targets(demo_stack: DemoStack,
                                                     ssh_base: list[str]) -> None:
    result = run_ssh([*ssh_base, f"alice@{demo_stack.bastion_host}", "--", "list"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["web01", "db01"]
    result = run_ssh([*ssh_base, f"alice@{demo_stack.bastion_host}", "--", "uname"])
    assert result.returncode == 1
    assert "no target in the user name" in result.stderr


def test_forwarding_and_subsystems_are_refused(demo_stack: DemoStack,
                                               ssh_base: list[str]) -> None:
    dest = bastion_destination(demo_stack, "web01")
    result = run_ssh([*ssh_base, "-o", "ExitOnForwardFailure=yes", "-L", "0:127.0.0.1:22",
                      dest, "--", "true"])
    assert result.returncode != 0
    result = run_ssh([*ssh_base, "-s", dest, "netconf"])  # sftp is relayed; others are not
    assert result.returncode != 0
