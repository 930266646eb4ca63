"""Run ``bench/run`` as a user would, for the tests that check it still works end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 240.0


def run_bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """``bench/run ARGS --json ... --workdir ...`` with this interpreter: (figures, stdout).
    Fails the test if it does not exit 0 within TIMEOUT seconds."""
    out = tmp_path / "bench.json"
    proc = subprocess.Popen(
        [str(REPO / "bench" / "run"), *args, "--json", str(out),
         "--workdir", str(tmp_path / "work")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL, env={**os.environ, "PYTHON": sys.executable})
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the bench stops the sshds and the bastion it started on SIGTERM
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"bench/run did not finish within {TIMEOUT:.0f} s:\n{stderr[-2000:]}")
    assert proc.returncode == 0, stderr[-2000:]
    return json.loads(out.read_text(encoding="utf-8")), stdout
