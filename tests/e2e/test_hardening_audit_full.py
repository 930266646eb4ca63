"""An audit log that cannot be written (full disk): sessions still finish and are recorded,
logins are refused with the reason until it can be written again."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.ssh import bastion_destination, run_ssh, ssh_base_argv
from harness.wait import wait_for_session_end

from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e


class SmallAuditStack(DemoStack):
    """The audit log on a 256 KiB tmpfs that the test can fill."""

    def prepare_workdir(self) -> None:
        super().prepare_workdir()
        self.audit_dir = self.workdir / "audit"
        self.audit_dir.mkdir(mode=0o700)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700",
                        "bastion-test-audit", str(self.audit_dir)], check=True)
        self.add_cleanup(lambda: subprocess.run(["umount", str(self.audit_dir)], check=True))
        self.merge_config({"paths": {"audit_log": str(self.audit_dir / "audit.jsonl")}})


@pytest.fixture
def audit_stack(tmp_path: Path) -> Iterator[SmallAuditStack]:
    with SmallAuditStack(tmp_path / "stack", with_idp=False, with_s3=False) as stack:
        yield stack


def _fill(directory: Path) -> Path:
    """Fill the file system; then the audit file's last page too (blank lines, which readers
    skip), as the log itself would as it grows: its next write finds no space."""
    filler = directory / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as out:
        while True:
            out.write(b"\0" * 4096)
    with contextlib.suppress(OSError), (directory / "audit.jsonl").open("ab", buffering=0) as log:
        while True:
            log.write(b"\n")
    return filler


def test_full_audit_disk_finishes_sessions_and_refuses_logins(audit_stack: SmallAuditStack,
                                                               ) -> None:
    stack = audit_stack
    session = subprocess.Popen(
        [*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--",
         "echo up; read line; echo after-$line"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert session.stdout is not None and session.stdout.readline() == "up\n"
        filler = _fill(stack.audit_dir)
        out, _ = session.communicate("full\n", timeout=30)
    finally:
        session.kill()
    assert session.returncode == 0 and out == "after-full\n"
    # The session is finished and recorded although session.end could not be audited.
    [folder] = [p.parent for p in stack.spool_dir.glob("*/session.json")]
    assert wait_for_session_end(folder)["state"] == "closed"
    # No login without its audit line: refused, with the reason.
    refused = run_ssh([*ssh_base_argv(stack, batch=False), "-o", "BatchMode=yes",
                       bastion_destination(stack, "web01"), "--", "echo should-not-run"])
    assert refused.returncode == 255 and "should-not-run" not in refused.stdout
    assert "cannot write audit log" in refused.stderr
    assert "logins are refused" in refused.stderr
    # Space again: the next login is audited and goes through.
    filler.unlink()
    ok = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--", "echo ok"])
    assert ok.returncode == 0 and ok.stdout == "ok\n"
