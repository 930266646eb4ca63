"""Sessions ``bastion upload`` can never take because nothing will finish them: still
``active`` in the spool, but no running bastion server records them.

A session is being recorded only while a server holds the spool's lock (an exclusive flock on
``<spool>/.lock``) and lists it in the running-session registry (bastion/state/sessions.py,
synced every half second). An active session is stuck when no server holds the spool (it stopped
or crashed: ``bastion serve`` recovers and seals it at start) or when the server that holds it
does not run it (its recording could not be finished). Sessions younger than ``grace`` are left
alone: a session being set up is not registered until its target answers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Collection
from pathlib import Path

from bastion.recording.layout import LOCK_FILE, SESSION_FILE, SessionState

GRACE = dt.timedelta(minutes=2)


def spool_lock_held(spool_dir: Path) -> bool:
    """Whether some process holds the spool's flock (read from /proc/locks, never by taking it:
    a probe would make a server starting at that moment refuse the spool)."""
    try:
        st = (spool_dir / LOCK_FILE).stat()
        locks = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    for line in locks.splitlines():
        fields = line.split()
        if "FLOCK" not in fields or "->" in fields:  # "->": a waiter, not a holder
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == \
                    (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino):
                return True
        except (IndexError, ValueError):
            continue
    return False


def _started(doc: dict[str, object]) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(doc["start"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None


def stuck_sessions(spool_dir: Path, running: Collection[str], lock_held: bool,
                   now: dt.datetime | None = None,
                   grace: dt.timedelta = GRACE) -> list[dict[str, str]]:
    """Active sessions no server is recording, each with why, in name order."""
    now = now or dt.datetime.now(dt.UTC)
    found = []
    if not spool_dir.is_dir():
        return []
    for entry in sorted(spool_dir.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        try:
            doc = json.loads((entry / SESSION_FILE).read_text(encoding="utf-8"))
            if doc.get("state") != SessionState.ACTIVE.value:
                continue
        except (OSError, ValueError, AttributeError):
            continue
        started = _started(doc)
        if started is not None and now - started < grace:
            continue
        if not lock_held:
            why = ("still active, but no bastion server holds the spool (stopped or crashed); "
                   "`bastion serve` recovers and seals it at start")
        elif entry.name not in running:
            why = ("still active, but the running server does not record it (its recording "
                   "could not be finished: see recording.error in the audit log; a restart "
                   "recovers it)")
        else:
            continue
        found.append({"session": entry.name, "error": why})
    return found
