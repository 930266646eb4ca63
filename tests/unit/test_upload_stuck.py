"""Which active sessions ``bastion upload`` reports as stuck (storage/stuck.py)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from bastion.recording import Spool
from bastion.storage.stuck import spool_lock_held, stuck_sessions

NOW = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.UTC)


def _session(spool: Path, name: str, state: str, start: str) -> None:
    (spool / name).mkdir(parents=True)
    (spool / name / "session.json").write_text(json.dumps({"state": state, "start": start}))


def test_stuck_sessions(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    _session(spool, "old-active", "active", "2026-01-02T11:00:00Z")
    _session(spool, "new-active", "active", "2026-01-02T11:59:30Z")  # still being set up
    _session(spool, "running", "active", "2026-01-02T10:00:00Z")
    _session(spool, "closed", "closed", "2026-01-02T10:00:00Z")
    (spool / "garbage").mkdir()
    (spool / "garbage" / "session.json").write_text("[1, 2")
    held = stuck_sessions(spool, {"running"}, lock_held=True, now=NOW)
    assert [s["session"] for s in held] == ["old-active"]
    assert "the running server does not record it" in held[0]["error"]
    free = stuck_sessions(spool, set(), lock_held=False, now=NOW)
    assert [s["session"] for s in free] == ["old-active", "running"]
    assert "no bastion server holds the spool" in free[0]["error"]


def test_the_spool_lock_is_seen_without_taking_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "node-1")
    spool.lock()
    try:
        assert spool_lock_held(tmp_path / "spool")
    finally:
        spool.unlock()
    assert not spool_lock_held(tmp_path / "spool")
