"""Refusals the README promises, seen by the user and in the audit log of that connection:
no credential in the vault, a target that does not answer, password authentication off."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.ssh import bastion_destination, run_ssh, ssh_base_argv
from harness.wait import wait_for_session_end, wait_until

from bastion.audit import read_events
from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    with DemoStack(tmp_path_factory.mktemp("refusals-audited"), with_idp=False,
                   with_s3=False) as st:
        yield st


def events_of_conn(st: DemoStack, conn: str) -> list[dict[str, Any]]:
    return [e for e in read_events(st.state_dir / "audit.jsonl") if e.get("conn") == conn]


def conn_of_last_login(st: DemoStack, before: int) -> str:
    """The conn id of the one login.success written after the first ``before`` events."""
    logins = [e for e in read_events(st.state_dir / "audit.jsonl")[before:]
              if e["event"] == "login.success"]
    assert len(logins) == 1, logins
    conn = logins[0]["conn"]
    assert isinstance(conn, str)
    return conn


def event_count(st: DemoStack) -> int:
    return len(read_events(st.state_dir / "audit.jsonl"))


def test_missing_credential_is_refused_and_audited(stack: DemoStack) -> None:
    # web01 logs in with a vaulted key (the demo's db01 uses certificates, no vault entry).
    removed = subprocess.run([sys.executable, "-m", "bastion", "vault", "remove", "web01",
                              stack.login, "-c", str(stack.config_path)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert removed.returncode == 0, removed.stderr
    before = event_count(stack)
    result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--", "true"])
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"bastion: no credential is stored for {stack.login} on target "
                             "web01; ask an administrator\n")
    conn = conn_of_last_login(stack, before)
    wait_until(lambda: any(e["event"] == "session.refused" for e in events_of_conn(stack, conn)),
               30, "session.refused of this connection")
    events = events_of_conn(stack, conn)
    names = [e["event"] for e in events]
    assert names.index("credential.missing") < names.index("session.refused")
    missing = next(e for e in events if e["event"] == "credential.missing")
    assert missing["user"] == "demo" and missing["target"] == "web01"
    refused = next(e for e in events if e["event"] == "session.refused")
    assert refused["target"] == "web01" and "no credential" in refused["reason"]
    assert "session.start" not in names


def test_unreachable_target_is_refused_and_audited(stack: DemoStack) -> None:
    stack.targets["db01"].stop()  # nothing listens on its port any more
    before = event_count(stack)
    result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "db01"), "--", "true"])
    assert result.returncode == 1 and result.stdout == ""
    assert re.fullmatch(r"bastion: cannot connect to target db01: .+\n", result.stderr), \
        result.stderr
    conn = conn_of_last_login(stack, before)
    wait_until(lambda: any(e["event"] == "session.refused" for e in events_of_conn(stack, conn)),
               30, "session.refused of this connection")
    events = events_of_conn(stack, conn)
    refused = next(e for e in events if e["event"] == "session.refused")
    assert refused["target"] == "db01" and refused["reason"].startswith("cannot connect")
    # The recording opened for it says so too.
    record = wait_for_session_end(stack.spool_dir / str(refused["session"]))
    assert record["state"] == "refused"


def test_password_authentication_is_off(stack: DemoStack, tmp_path: Path) -> None:
    argv = ["ssh", "-p", str(stack.bastion_port), "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={stack.known_hosts_path}",
            "-o", "StrictHostKeyChecking=yes", "-o", "PubkeyAuthentication=no",
            "-o", "PreferredAuthentications=password", "-o", "NumberOfPasswordPrompts=1",
            bastion_destination(stack, "db01"), "--", "true"]
    result = run_ssh(argv)
    assert result.returncode == 255
    offered = re.search(r"Permission denied \(([^)]*)\)", result.stderr)
    assert offered is not None, result.stderr
    assert "password" not in offered.group(1).split(",")
    assert "publickey" in offered.group(1).split(",")
