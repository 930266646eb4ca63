"""Awaiting a condition in tests: poll it, never sleep a fixed time for it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

POLL_INTERVAL = 0.05


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def session_state(session_dir: Path) -> str | None:
    """The ``state`` of a spool session's session.json (None while it cannot be read)."""
    try:
        return str(json.loads((session_dir / "session.json").read_text(encoding="utf-8"))
                   ["state"])
    except (OSError, ValueError, KeyError):
        return None


def wait_for_session_end(session_dir: Path, timeout: float = 30.0) -> dict[str, Any]:
    """session.json once the server has finished the session (its state is no longer active).

    The client exits when it has the exit status; the server writes the final session.json a
    moment later, after the connection closed. Tests await that instead of racing it.
    """
    wait_until(lambda: session_state(session_dir) not in (None, "active"), timeout,
               f"{session_dir.name} to be finished")
    doc: dict[str, Any] = json.loads((session_dir / "session.json").read_text(encoding="utf-8"))
    return doc
