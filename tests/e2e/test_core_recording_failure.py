"""A recording that can no longer be written ends the session: no unrecorded session, ever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.ssh import bastion_destination, run_ssh, ssh_base_argv
from harness.wait import wait_until

from bastion.audit import read_events
from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e


class SmallSpoolStack(DemoStack):
    """A demo stack whose spool is a 1 MiB tmpfs, so recordings run out of space."""

    def prepare_workdir(self) -> None:
        super().prepare_workdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "bastion-test-spool",
                        str(self.spool_dir)], check=True)
        self.add_cleanup(lambda: subprocess.run(["umount", str(self.spool_dir)], check=True))


@pytest.fixture
def small_spool_stack(tmp_path: Path) -> Iterator[DemoStack]:
    with SmallSpoolStack(tmp_path / "stack", with_idp=False, with_s3=False) as stack:
        yield stack


def test_full_spool_ends_the_session_with_a_notice(small_spool_stack: DemoStack) -> None:
    stack = small_spool_stack
    total = 8 * 1024 * 1024
    result = subprocess.run(
        [*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--",
         f"yes recorded-line | head -c {total}; sleep 5; echo finished-unrecorded"],
        capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert b"bastion: recording failed; the session was ended" in result.stderr
    assert b"finished-unrecorded" not in result.stdout
    assert len(result.stdout) < total
    events = read_events(stack.state_dir / "audit.jsonl")
    assert any(e["event"] == "recording.error" and "No space left" in e["error"]
               for e in events)
    # New sessions are refused while nothing can be recorded.
    again = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--",
                     "echo should-not-run"])
    assert again.returncode == 1 and "should-not-run" not in again.stdout


@pytest.fixture
def small_spool_evidence_stack(tmp_path: Path) -> Iterator[DemoStack]:
    with SmallSpoolStack(tmp_path / "stack", with_idp=False, with_s3=True) as stack:
        yield stack


def _upload(stack: DemoStack) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "bastion", "upload", "--config",
                           str(stack.config_path), "--json"], capture_output=True, text=True,
                          env={**os.environ, **stack.env}, timeout=120)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_a_session_whose_recording_failed_is_sealed_at_once_and_uploaded(
        small_spool_evidence_stack: DemoStack) -> None:
    stack = small_spool_evidence_stack
    result = subprocess.run(
        [*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--",
         f"yes recorded-line | head -c {8 * 1024 * 1024}; sleep 5"],
        capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert b"bastion: recording failed; the session was ended" in result.stderr
    [folder] = [p for p in stack.spool_dir.iterdir() if p.is_dir()]
    # Finished and sealed by the running server, not left "active" until a restart.
    wait_until(lambda: (folder / "manifest.json").is_file(), 30, "the failed session's seal")
    meta = json.loads((folder / "session.json").read_text(encoding="utf-8"))
    assert meta["state"] == "killed"
    assert meta["end_reason"].startswith("recording failed: "), meta["end_reason"]
    assert "No space left" in meta["end_reason"]

    code, summary = _upload(stack)
    assert code == 0, summary
    assert summary["uploaded"] == [folder.name] and summary["stuck"] == []


def test_upload_reports_a_session_no_server_records(
        small_spool_evidence_stack: DemoStack) -> None:
    stack = small_spool_evidence_stack
    stuck = stack.spool_dir / "20200101T000000Z-0123456789ab"
    stuck.mkdir()
    (stuck / "session.json").write_text(json.dumps(
        {"schema": 2, "session_id": stuck.name, "state": "active",
         "start": "2020-01-01T00:00:00Z"}), encoding="utf-8")
    code, summary = _upload(stack)
    assert code == 3 and summary["status"] == "attention", summary
    assert [s["session"] for s in summary["stuck"]] == [stuck.name]
    assert "the running server does not record it" in summary["stuck"][0]["error"]
    assert stuck.is_dir()
