"""A session recorded for real through the demo stack goes to S3 and verifies there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness.ssh import bastion_destination, run_ssh, ssh_base_argv

from bastion.demo.stack import DemoStack
from bastion.evidence.manifest import parse_manifest

pytestmark = pytest.mark.e2e


def test_real_session_is_sealed_uploaded_and_verified(tmp_path: Path) -> None:
    with DemoStack(tmp_path / "demo", with_idp=False) as stack:
        result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--",
                          "echo evidence-$((6*7))"])
        assert result.returncode == 0, result.stderr
        assert result.stdout == "evidence-42\n"

        # The server seals the session once it ends: await its manifest.
        deadline = time.monotonic() + 30
        sealed: list[Path] = []
        while time.monotonic() < deadline and not sealed:
            sealed = [p.parent for p in stack.spool_dir.glob("*/manifest.json")]
            if not sealed:
                time.sleep(0.05)
        assert len(sealed) == 1, "the session was not sealed"
        manifest = parse_manifest((sealed[0] / "manifest.json").read_bytes())
        assert manifest.doc["target"]["name"] == "web01"
        assert manifest.doc["state"] == "closed"
        # Every file of the session is listed: the exec's byte-exact streams and session.json.
        assert {r.name for r in manifest.recordings} >= {
            "1-exec.stdin", "1-exec.stdout", "1-exec.stderr", "1-exec.timing"}

        env = {**os.environ, **stack.env}
        upload = subprocess.run(
            [sys.executable, "-m", "bastion", "upload", "--config", str(stack.config_path)],
            capture_output=True, text=True, env=env, timeout=120)
        assert upload.returncode == 0, upload.stdout + upload.stderr
        assert json.loads(upload.stdout)["uploaded"] == [manifest.session_id]

        verify = subprocess.run(
            [sys.executable, "-m", "bastion", "verify", stack.env["BASTION_S3_URI"],
             "--public-key", stack.env["BASTION_PUBKEY"],
             "--endpoint-url", stack.env["S3_ENDPOINT"]],
            capture_output=True, text=True, env=env, timeout=120)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert verify.stdout.splitlines()[-1].startswith("VERIFIED: 1 sessions in s3://")
