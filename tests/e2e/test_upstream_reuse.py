"""Target connections reused by the same person's next session (bastion/relay/upstream_pool.py)
with the real OpenSSH client, ``bastion serve`` and sshd targets.

What the target sees tells: ``$SSH_CONNECTION`` names the TCP connection a session arrived on.
A session on a parked connection shows the port of an earlier one; every session still has its
own recording and audit events, which say whether its connection was new or reused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from harness.ssh import bastion_destination, run_ssh
from harness.wait import wait_for_session_end

from bastion.audit import read_events
from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

# bastion serve runs a worker per CPU and each keeps its own pool: of one session more than
# there are workers, at least two reach the same worker, and the later finds the earlier's
# connection parked.
RUNS = (os.cpu_count() or 1) + 1  # the demo leaves server.workers at 0: one per CPU


def _session_dir(stack: DemoStack, marker: str) -> Path:
    for meta_path in stack.spool_dir.glob("*/session.json"):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if any(marker in (c.get("command") or "") for c in meta.get("channels", [])):
            return meta_path.parent
    raise AssertionError(f"no recording of the session that ran {marker}")


def _sessions_in_a_row(stack: DemoStack, ssh_base: list[str], target: str,
                       ) -> list[tuple[str, str, str]]:
    """(the port the target saw, connection new/reused, session id) of RUNS sessions."""
    seen = []
    for _ in range(RUNS):
        marker = f"reuse-{uuid.uuid4().hex[:12]}"
        result = run_ssh([*ssh_base, bastion_destination(stack, target), "--",
                          f"echo $SSH_CONNECTION; echo {marker}"])
        assert result.returncode == 0, result.stderr
        connection_line, echoed = result.stdout.splitlines()
        assert echoed == marker
        folder = _session_dir(stack, marker)
        meta = wait_for_session_end(folder)  # closed: its target connection is parked by now
        assert meta["state"] == "closed"
        # ssh's "client-address client-port server-address server-port" as the target saw it
        seen.append((connection_line.split()[1], meta["target"]["connection"],
                     meta["session_id"]))
    return seen


def test_the_next_session_of_the_same_person_reuses_the_target_connection(
        demo_stack: DemoStack, ssh_base: list[str]) -> None:
    seen = _sessions_in_a_row(demo_stack, ssh_base, "web01")
    ports = [port for port, _, _ in seen]
    # A session on the connection an earlier one of these left: the target saw that port.
    # (The first on each worker may take one an earlier test left: the demo is shared.)
    assert any(how == "reused" and port in ports[:n]
               for n, (port, how, _) in enumerate(seen)), seen
    for n, (port, how, _) in enumerate(seen):
        if how == "new":  # a login of its own: a TCP connection no earlier session used
            assert port not in ports[:n], seen
        else:
            assert how == "reused", seen
    assert len({session for _, _, session in seen}) == RUNS  # a recording each
    starts = {e["session"]: e for e in read_events(demo_stack.state_dir / "audit.jsonl")
              if e.get("event") == "session.start"}
    assert [starts[session]["upstream"] for _, _, session in seen] == \
        [how for _, how, _ in seen]


def test_certificate_targets_log_in_anew_for_every_session(
        demo_stack: DemoStack, ssh_base: list[str]) -> None:
    """Each certificate names one session in its key id: never shared."""
    seen = _sessions_in_a_row(demo_stack, ssh_base, "db01")
    assert [how for _, how, _ in seen] == ["new"] * RUNS
    assert len({port for port, _, _ in seen}) == RUNS


def _target_processes(target_port: str, bastion_port: str) -> set[int]:
    """The target's sshd processes holding the connection from ``bastion_port``."""
    listing = subprocess.run(
        ["ss", "-Htnp", "state", "established",
         f"( sport = :{target_port} and dport = :{bastion_port} )"],
        capture_output=True, text=True, check=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", listing)}


def test_a_parked_connection_whose_target_stopped_answering_is_replaced(
        demo_stack: DemoStack, ssh_base: list[str]) -> None:
    """The target's end of every parked connection frozen (SIGSTOP: no reply, no close, as a
    host that dropped off the network): the next sessions log in anew within seconds."""
    marker = f"port-{uuid.uuid4().hex[:8]}"
    result = run_ssh([*ssh_base, bastion_destination(demo_stack, "web01"), "--",
                      f"echo $SSH_CONNECTION; echo {marker}"])
    assert result.returncode == 0, result.stderr
    target_port = result.stdout.split()[3]
    wait_for_session_end(_session_dir(demo_stack, marker))
    earlier = [port for port, _, _ in _sessions_in_a_row(demo_stack, ssh_base, "web01")]
    frozen = set().union(*(_target_processes(target_port, port) for port in earlier))
    assert frozen
    try:
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        seen = _sessions_in_a_row(demo_stack, ssh_base, "web01")
        elapsed = time.monotonic() - started
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert not {port for port, _, _ in seen} & set(earlier), (seen, earlier)
    assert elapsed < RUNS * 10, elapsed  # a probe of at most 2 s and a login each, not 90 s
