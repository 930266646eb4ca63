"""bench/run still works: one tiny run (a few MB, a few sessions) with its JSON checked.

The bench is not a test and no speed is asserted here; this proves the command runs end to end
against real OpenSSH, sshd and ``bastion serve`` and writes the figures it promises.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.bench import run_bench

pytestmark = pytest.mark.e2e



def test_bench_tiny_run_writes_every_figure(tmp_path: Path) -> None:
    figures, stdout = run_bench(
        # --quick: the idle sessions are watched 3 s, not 10 (the rest is set here).
        tmp_path, "--quick", "--paths", "direct,jump,bastion", "--size-mb", "2", "--rounds", "1",
        "--samples", "20", "--load-sessions", "2", "--sessions", "3", "--login-seconds", "1",
        "--transfer-mb", "1", "--parallel-sessions", "2")
    assert {"machine", "command", "paths", "bulk_pty_text", "bulk_exec_binary",
            "bulk_exec_upload", "echo_latency",
            "idle_sessions", "login_rate", "transfers", "scale", "targets"} <= set(figures)
    for name in ("bulk_pty_text", "bulk_exec_binary", "bulk_exec_upload"):
        bulk = figures[name]
        assert bulk["failures"] == {}
        assert set(bulk["seconds"]) == {"direct", "jump", "bastion"}
        assert set(bulk["ratio_vs_jump"]) == set(bulk["ratio_vs_direct"]) == set(bulk["seconds"])
    for condition in ("idle", "loaded"):
        paths = figures["echo_latency"][condition]["paths"]
        assert set(paths) == {"direct", "jump", "bastion"}
        assert all(p["samples"] == 20 for p in paths.values()), paths
        assert "bastion" in figures["echo_latency"][condition]["added_over_direct"]
    assert figures["echo_latency"]["loaded"]["paths"]["bastion"]["streaming_sessions"] == 2
    idle = figures["idle_sessions"]
    assert idle["held"] == idle["requested"] == 3
    assert idle["rss_per_session_kib"] is not None
    login = figures["login_rate"]
    assert login["direct"]["done"] > 0 and login["bastion"]["done"] > 0
    assert login["bastion"]["failed"] == 0
    fresh = login["bastion_new_target_login"]  # the same with upstream_linger = 0
    assert fresh["done"] > 0 and fresh["failed"] == 0
    for method, directions in figures["transfers"]["methods"].items():
        for direction, transfer in directions.items():
            assert transfer["failures"] == {}, (method, direction, transfer)
            assert set(transfer["seconds"]) == {"jump", "bastion"}
            assert transfer["bastion_cpu_seconds"] is not None
    assert set(figures["transfers"]["methods"]) == {"scp", "scp -O", "sftp", "rsync"}
    scale = figures["scale"]
    for name in ("jump", "bastion_one_worker", "bastion_workers_cpus",
                 "bastion_workers_cpus_reuseport"):
        assert scale[name]["parallel_bulk"]["complete"] == 2, (name, scale[name])
        assert "p99_ms" in scale[name]["loaded_echo"], (name, scale[name])
    capped = scale["capped"]  # each worker held to a share of a core, or why it could not be
    assert "error" in capped or capped["workers_cpus"]["complete"] == 2, capped
    assert "| bastion |" in stdout  # the printed table
