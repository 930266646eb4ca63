"""A recording that can no longer be written ends the session: no unrecorded session, ever."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.ssh import bastion_destination, run_ssh, ssh_base_argv

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
