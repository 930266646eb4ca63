"""Refusals, limits and failures, each seen the way the user or operator sees it."""

from __future__ import annotations

import datetime
import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from harness.ssh import bastion_destination, run_ssh, ssh_base_argv
from harness.tmux import TmuxSession
from harness.wait import wait_until

from bastion.audit import read_events
from bastion.demo.sshd import generate_key_pair
from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

PROMPT = re.compile(r"[#$] ?$", re.MULTILINE)
Tune = Callable[[dict[str, Any]], None]


class TunedStack(DemoStack):
    """The demo stack with a test's changes applied to the config before it is written."""

    def __init__(self, workdir: Path, tune: Tune) -> None:
        super().__init__(workdir, with_idp=False, with_s3=False)  # not what these tests need
        self._tune = tune

    def write_config(self) -> None:
        self._tune(self.config)
        super().write_config()


@pytest.fixture
def tuned_stack(tmp_path: Path) -> Iterator[Callable[[Tune], DemoStack]]:
    stacks: list[DemoStack] = []

    def start(tune: Tune) -> DemoStack:
        stack = TunedStack(tmp_path / f"stack{len(stacks)}", tune)
        stacks.append(stack)
        return stack.start()

    yield start
    for stack in stacks:
        stack.stop()


# -- refusals on the shared demo stack ------------------------------------------------------

@pytest.mark.parametrize("destination, message", [
    ("root@nosuch@127.0.0.1", "target 'nosuch' is not available to you"),
    ("root@127.1@127.0.0.1", "target '127.1' is not available to you"),
    ("root@localhost:22@127.0.0.1", "target 'localhost:22' is not available to you"),
    ("10.0.0.1@127.0.0.1", "target '10.0.0.1' is not available to you"),
    ("Root@web01@127.0.0.1", "'Root' is not a valid login name"),
])
def test_unknown_targets_are_refused_before_any_connection(
        demo_stack: DemoStack, ssh_base: list[str], destination: str, message: str) -> None:
    result = run_ssh([*ssh_base, destination, "--", "true"])
    assert result.returncode == 1
    assert result.stderr.strip() == f"bastion: {message}"
    events = read_events(demo_stack.state_dir / "audit.jsonl")
    assert any(e["event"] == "session.refused" and message in e["reason"] for e in events)


def test_disallowed_login_is_refused(demo_stack: DemoStack, ssh_base: list[str]) -> None:
    result = run_ssh([*ssh_base, bastion_destination(demo_stack, "web01", login="nobody"),
                      "--", "id"])
    assert result.returncode == 1
    assert result.stderr.strip() == ("bastion: login 'nobody' on target web01 is not allowed "
                                     "for you")


def test_unknown_key_is_refused(demo_stack: DemoStack, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    generate_key_pair(stranger, "not known to the bastion")
    argv = ["ssh", "-p", str(demo_stack.bastion_port), "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={demo_stack.known_hosts_path}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-i", str(stranger),
            bastion_destination(demo_stack, "web01"), "--", "true"]
    result = run_ssh(argv)
    assert result.returncode == 255
    assert "Permission denied (publickey" in result.stderr
    # The server audits the failure when it sees the connection close, after the client left.
    _await_event(demo_stack, "login.failure")


# -- refusals that need their own stack ----------------------------------------------------

def test_target_host_key_mismatch_is_refused_and_audited(tuned_stack, tmp_path: Path) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()

    def pin_wrong_key(config: dict[str, Any]) -> None:
        config["targets"][1]["host_key"] = impostor

    stack = tuned_stack(pin_wrong_key)
    result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "db01"), "--", "true"])
    assert result.returncode == 1
    assert re.fullmatch(r"bastion: the host key of target db01 does not match its pinned key "
                        r"\(presented SHA256:\S+\); refusing to connect\n", result.stderr)
    events = read_events(stack.state_dir / "audit.jsonl")
    [refusal] = [e for e in events if e["event"] == "session.refused" and "host key" in e["reason"]]
    assert refusal["target"] == "db01"
    # The other target, pinned correctly, still works.
    ok = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--", "echo ok"])
    assert ok.stdout == "ok\n"


def test_session_cap_per_user(tuned_stack) -> None:
    stack = tuned_stack(lambda c: c["server"].update(max_sessions_per_user=1))
    argv = [*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--", "cat"]
    holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        holder.stdin.write(b"ping\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == b"ping\n"  # the first session is up
        second = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "db01"), "--", "true"])
        assert second.returncode == 1
        assert "sessions open, the most allowed" in second.stderr
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    third = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "db01"), "--", "true"])
    assert third.returncode == 0, third.stderr


def test_idle_session_is_closed_with_notice(tuned_stack) -> None:
    stack = tuned_stack(lambda c: c["server"].update(idle_timeout=2))
    result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--",
                      "sleep 30"], timeout=25)
    assert result.returncode == 1
    assert "bastion: idle for 2s; session closed" in result.stderr
    end = _await_event(stack, "session.end")
    assert end["reason"] == "idle timeout"
    # The idle window starts when the session has started (the target dialled and the command
    # running), never during the dial: the session did start, and ran at least the 2 s.
    start = _await_event(stack, "session.start")
    assert start["conn"] == end["conn"]
    assert _seconds(str(end["ts"])) - _seconds(str(start["ts"])) >= 2


def test_unwritable_spool_refuses_the_session(tuned_stack) -> None:
    stack = tuned_stack(lambda c: None)
    # The spool vanishes and a plain file takes its place: nothing can be recorded.
    stack.spool_dir.rename(stack.workdir / "spool.moved")
    stack.spool_dir.write_text("not a directory\n")
    result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--",
                      "touch /tmp/should-not-run-$$; echo ran"])
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("bastion: cannot record session")
    events = read_events(stack.state_dir / "audit.jsonl")
    assert not any(e["event"] == "session.start" for e in events)


def test_sigkill_mid_session_leaves_interrupted_readable_recording(tuned_stack, tmux) -> None:
    stack = tuned_stack(lambda c: None)
    screen: TmuxSession = tmux([*ssh_base_argv(stack), "-tt",
                                bastion_destination(stack, "web01")])
    screen.wait_for(PROMPT)
    screen.type_line("echo before-crash-$((2*21))")
    screen.wait_for("before-crash-42")
    [cast] = list(stack.spool_dir.glob("*/1-shell.cast"))
    # Wait until the output is flushed (at most a second), then kill the bastion outright.
    deadline_text = "before-crash-42"
    wait_until(lambda: deadline_text in cast.read_text(encoding="utf-8"), 5,
               "the output to reach the recording")
    assert stack.bastion is not None
    stack.bastion.signal(signal.SIGKILL)
    assert screen.wait_exit() == 255
    stack.bastion.stop()
    stack.start_bastion()  # recovery runs at start-up

    meta = json.loads((cast.parent / "session.json").read_text(encoding="utf-8"))
    assert meta["state"] == "interrupted"
    lines = cast.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines[1:]]
    assert events[-1][1:] == ["m", "interrupted"]
    replay = subprocess.run(["asciinema", "cat", str(cast)], capture_output=True, text=True,
                            timeout=60, check=True)
    assert "before-crash-42" in replay.stdout
    audit = read_events(stack.state_dir / "audit.jsonl")
    assert any(e["event"] == "recording.recovered" and e["session"] == cast.parent.name
               for e in audit)
    # And the restarted bastion serves again.
    ok = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--", "echo ok"])
    assert ok.stdout == "ok\n"


@pytest.mark.parametrize("damage, message", [
    ("wrong-key", "wrong vault key"),
    ("tamper", "is damaged or was tampered with"),
])
def test_serve_refuses_bad_vault_with_one_line(tuned_stack, damage: str, message: str) -> None:
    stack = tuned_stack(lambda c: None)
    assert stack.bastion is not None
    stack.bastion.stop()
    if damage == "wrong-key":
        stack.vault_key_path.write_text(
            "Ym9ndXMtYm9ndXMtYm9ndXMtYm9ndXMtYm9ndXMtMTI=\n")
    else:
        doc = json.loads(stack.vault_path.read_text(encoding="utf-8"))
        blob = bytearray(doc["ciphertext"].encode())
        blob[10] = ord("A") if blob[10] != ord("A") else ord("B")
        doc["ciphertext"] = blob.decode()
        stack.vault_path.write_text(json.dumps(doc), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "bastion", "serve", "--config",
                             str(stack.config_path)], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bastion: ") and message in lines[0]
    assert "Traceback" not in result.stderr


def _seconds(rfc3339: str) -> float:
    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _await_event(stack: DemoStack, name: str, timeout: float = 10) -> dict[str, Any]:
    """The first audit event called ``name``, waiting for the server to write it."""
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [e for e in read_events(stack.state_dir / "audit.jsonl") if e["event"] == name]
        return bool(found)

    wait_until(seen, timeout, f"audit event {name}")
    return found[0]


def test_sigterm_ends_sessions_with_notice_and_finished_recordings(tuned_stack) -> None:
    stack = tuned_stack(lambda c: None)
    argv = [*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--",
            "echo started; sleep 60"]
    client = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None and client.stdout.readline() == "started\n"
        assert stack.bastion is not None
        stack.bastion.signal(signal.SIGTERM)
        _, stderr = client.communicate(timeout=30)
    finally:
        client.kill()
    assert client.returncode == 1
    assert "bastion: the bastion is shutting down" in stderr
    assert stack.bastion.proc is not None and stack.bastion.proc.wait(timeout=30) == 0
    [meta_path] = list(stack.spool_dir.glob("*/session.json"))
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    assert (meta["state"], meta["end_reason"]) == ("closed", "shutdown")


def test_missing_host_key_is_generated_on_first_start_with_a_log_line(tuned_stack,
                                                                       tmp_path: Path) -> None:
    fresh = tmp_path / "fresh_host_key"
    stack = tuned_stack(lambda c: c["server"].update(host_keys=[str(fresh)]))
    assert stack.bastion is not None
    assert fresh.stat().st_mode & 0o777 == 0o600
    public = (tmp_path / "fresh_host_key.pub").read_text().strip()
    stack.bastion.wait_for_log(f"generated host key {fresh}: {public}")
