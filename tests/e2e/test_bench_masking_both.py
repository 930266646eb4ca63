"""bench/run --masking both: masked and unmasked through one bastion in one run (issue 11).

No speed is asserted; this proves the unmasked path is measured beside the masked one, its
target really has masking off (the bastion's audit log), and the verdicts of the issue's two
speed targets are written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness.bench import run_bench

pytestmark = pytest.mark.e2e



def test_masking_both_measures_the_unmasked_path_in_the_same_run(tmp_path: Path) -> None:
    figures, stdout = run_bench(
        tmp_path, "--masking", "both", "--paths", "direct,jump,bastion",
        "--skip", "idle,login,transfers,scale", "--size-mb", "2", "--rounds", "1",
        "--samples", "20", "--load-sessions", "2")
    for name in ("bulk_pty_text", "bulk_exec_binary", "bulk_exec_upload"):
        bulk = figures[name]
        assert bulk["failures"] == {}
        assert set(bulk["seconds"]) == {"direct", "jump", "bastion", "bastion-unmasked"}
        assert bulk["unmasked_cpu_seconds"] is not None
    for condition in ("idle", "loaded"):
        assert "bastion-unmasked" in figures["echo_latency"][condition]["paths"]
    targets = figures["targets"]
    assert {"bulk_pty_text_masked_keeps", "echo_idle_masking_added_p99_ms",
            "echo_loaded_masking_added_p99_ms"} <= set(targets)
    assert "| bastion-unmasked |" in stdout
    log = next((tmp_path / "work").glob("run-*/stack/logs/bastion.log")).read_text()
    summaries = [json.loads(line.split(" ", 1)[1]) for line in log.splitlines()
                 if line.startswith("audit ") and '"masking.summary"' in line]
    assert {s["target"] for s in summaries} == {"web01"}, "masking ran on the masked path only"
