"""The thread that gives limit places back to the state database and renews leases.

Places are given back from the event loop without waiting (``give_back`` queues them); this
thread hands them to the database, retrying every ``RETRY_EVERY`` seconds while the database
fails, so a release is never lost (and if the process dies first, the lease lapses). While the
process holds leases it renews them every ``RENEW_EVERY`` seconds; now and then it deletes
rows lapsed long ago. It ends when there is nothing left to do and starts again when needed.
"""

from __future__ import annotations

import logging
import threading
import time

from bastion.state.limits import RENEW_EVERY, LimitStore, Scope

log = logging.getLogger("bastion.server")

RETRY_EVERY = 2.0  # seconds between attempts to give back places the database did not take
SWEEP_EVERY = 600.0  # seconds between deletions of long-lapsed rows


class LimitKeeper:
    """A thread that gives places back (retrying while the database fails) and renews this
    process's leases while it holds any; it stops when there is nothing left to do."""

    def __init__(self, store: LimitStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._returns: list[tuple[Scope, str, str]] = []
        self._leases = 0  # places taken as leases and not yet given back to the database
        self._thread: threading.Thread | None = None
        self._renewed = self._swept = time.monotonic()

    def taken(self) -> None:
        """A lease was taken: renew it from now on."""
        with self._lock:
            self._leases += 1
            self._start()

    def give_back(self, scope: Scope, subject: str, holder: str) -> None:
        """Queue a place to give back (``taken`` counted it)."""
        with self._lock:
            self._returns.append((scope, subject, holder))
            self._idle.clear()
            self._start()
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued place was given back; False after ``timeout``."""
        return self._idle.wait(timeout)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bastion-limits-keeper",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        wait = RENEW_EVERY
        while True:
            self._wake.wait(wait)
            self._wake.clear()
            try:
                wait = self._round()
            except Exception:  # a bug: keep the thread (and the releases it owes) alive
                log.exception("limits keeper")
                wait = RETRY_EVERY
            if wait < 0:
                return

    def _round(self) -> float:
        """Give back what is queued, renew and sweep when due; the seconds to wait until the
        next round, or -1 when there is nothing left to do (the thread ends)."""
        with self._lock:
            returns, self._returns = self._returns, []
        failed = []
        error: Exception | None = None
        for item in returns:
            try:
                self._store.release(*item)
            except Exception as exc:  # the database (or anything): keep it, try again
                failed.append(item)
                error = exc
        if error is not None:
            log.warning("cannot give back %d limit places yet (retrying): %s", len(failed),
                        error)
        now = time.monotonic()
        with self._lock:
            self._leases -= len(returns) - len(failed)
            self._returns[:0] = failed
            leases = self._leases
        if leases > 0 and now - self._renewed >= RENEW_EVERY:
            try:
                self._store.renew()
                self._renewed = now
            except Exception as exc:  # retried soon; the leases last LEASE meanwhile
                log.warning("cannot renew limit leases (retrying): %s", exc)
        if now - self._swept >= SWEEP_EVERY:
            try:
                self._store.sweep()
                self._swept = now
            except Exception as exc:
                log.warning("cannot sweep lapsed limit places: %s", exc)
        with self._lock:
            if not self._returns:
                self._idle.set()
                if self._leases <= 0:
                    self._thread = None
                    return -1.0
            return RETRY_EVERY if self._returns or now - self._renewed >= RENEW_EVERY \
                else RENEW_EVERY
