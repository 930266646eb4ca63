"""Awaiting a condition in tests: poll it, never sleep a fixed time for it."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_INTERVAL = 0.05


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_INTERVAL)
