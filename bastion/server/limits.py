"""Per-source limits before authentication: connections not yet signed in, device logins started.

A client that has not authenticated is a stranger; strangers from one address share one small
allowance, so silent or slow sockets from one place cannot use up the bastion for everyone, and
one address cannot make the identity provider mint device codes without end.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

_WINDOW = 60.0  # seconds: device logins are counted per minute


class SourceLimits:
    """Counts per client address; used from the event loop only."""

    def __init__(self, max_unauthenticated: int, device_logins_per_minute: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max_unauthenticated = max_unauthenticated
        self._device_logins = device_logins_per_minute
        self._clock = clock
        self._unauthenticated: Counter[str] = Counter()
        self._device_starts: dict[str, deque[float]] = {}

    def open_unauthenticated(self, source: str) -> bool:
        """Count a new connection from ``source``; False (not counted) if it has too many."""
        if self._unauthenticated[source] >= self._max_unauthenticated:
            return False
        self._unauthenticated[source] += 1
        return True

    def close_unauthenticated(self, source: str) -> None:
        """A counted connection authenticated or went away."""
        self._unauthenticated[source] -= 1
        if self._unauthenticated[source] <= 0:
            del self._unauthenticated[source]

    def start_device_login(self, source: str) -> bool:
        """Count a device login started from ``source``; False if it started too many lately."""
        now = self._clock()
        starts = self._device_starts.setdefault(source, deque())
        while starts and now - starts[0] >= _WINDOW:
            starts.popleft()
        if len(starts) >= self._device_logins:
            return False
        starts.append(now)
        # Forget quiet addresses so the map does not grow with every address ever seen.
        if len(self._device_starts) > 10000:
            quiet = [a for a, s in self._device_starts.items() if now - s[-1] >= _WINDOW]
            for addr in quiet:
                del self._device_starts[addr]
        return True
