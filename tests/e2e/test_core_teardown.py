"""Teardown in both directions, back-pressure and what the bastion drops on the way."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.ssh import bastion_destination, run_ssh, ssh_base_argv
from harness.wait import wait_for_session_end, wait_until

from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[DemoStack]:
    """A stack of its own, for tests that break targets or measure the bastion process."""
    with DemoStack(tmp_path / "stack", with_idp=False, with_s3=False) as stack:
        yield stack


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_environment_requests_are_dropped(demo_stack: DemoStack, ssh_base: list[str]) -> None:
    result = run_ssh([*ssh_base, "-o", "SetEnv=BASTION_PROBE=leaked",
                      bastion_destination(demo_stack, "web01"), "--",
                      "echo probe=${BASTION_PROBE:-unset}"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "probe=unset\n"


def _established_to(port: int) -> int:
    """How many ESTABLISHED TCP connections on this machine go to 127.0.0.1:``port``."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


def test_user_hanging_up_closes_the_target_connection(private_stack: DemoStack) -> None:
    target_port = private_stack.targets["web01"].port
    client = subprocess.Popen([*ssh_base_argv(private_stack),
                               bastion_destination(private_stack, "web01"), "--",
                               "echo up; sleep 60"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert client.stdout is not None and client.stdout.readline() == b"up\n"
        assert _established_to(target_port) == 1
        client.kill()
        client.wait(timeout=10)
        wait_until(lambda: _established_to(target_port) == 0, 15,
               "the bastion to close its connection to the target")
    finally:
        client.kill()
    spool = private_stack.spool_dir
    wait_until(lambda: '"closed"' in next(spool.glob("*/session.json")).read_text(), 10,
           "the recording to be finished")


def test_target_dying_ends_the_session_with_notice(private_stack: DemoStack) -> None:
    argv = [*ssh_base_argv(private_stack), bastion_destination(private_stack, "db01"), "--",
            "echo up; sleep 60"]
    client = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None and client.stdout.readline() == "up\n"
        private_stack.targets["db01"].stop()  # the target's sshd and its sessions go away
        _, stderr = client.communicate(timeout=30)
    finally:
        client.kill()
    assert client.returncode == 255
    assert "bastion: connection to the target closed" in stderr
    # The record says what happened, not a plain "closed".
    [session] = [p.parent for p in private_stack.spool_dir.glob("*/session.json")
                 if "sleep 60" in p.parent.joinpath("session.json").read_text()
                 or any("sleep 60" in c.read_text(errors="replace")[:2000]
                        for c in p.parent.glob("1-*"))]
    meta = wait_for_session_end(session)
    assert meta["end_reason"].startswith("connection to the target lost"), meta
    # The other target is unaffected.
    ok = run_ssh([*ssh_base_argv(private_stack), bastion_destination(private_stack, "web01"),
                  "--", "echo ok"])
    assert ok.stdout == "ok\n"


def test_slow_client_does_not_grow_bastion_memory(private_stack: DemoStack) -> None:
    total = 100 * 1024 * 1024
    argv = [*ssh_base_argv(private_stack), bastion_destination(private_stack, "web01"), "--",
            f"yes 0123456789abcdef | head -c {total}"]
    client = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    assert private_stack.bastion is not None
    bastion_pid = private_stack.bastion.pid
    try:
        assert client.stdout is not None
        first = client.stdout.read(1024 * 1024)  # the stream is flowing
        assert len(first) == 1024 * 1024
        baseline = _rss_kib(bastion_pid)
        # The client now reads nothing: the target has 99 MB more to send. Watch the bastion
        # for a few seconds; its memory must stay within SSH window sizes, not grow with data.
        peak = baseline
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            peak = max(peak, _rss_kib(bastion_pid))
            time.sleep(0.1)
        assert peak - baseline < 32 * 1024, f"bastion RSS grew {peak - baseline} KiB"
        rest = client.stdout.read()
        assert len(first) + len(rest) == total
        assert client.wait(timeout=60) == 0
    finally:
        client.kill()
