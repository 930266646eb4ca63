"""Per-source and per-identity limits, held across worker processes and nodes.

A client that has not authenticated is a stranger; strangers from one address share one small
allowance, so silent or slow sockets from one place cannot use up the bastion for everyone, and
one address cannot make the identity provider mint device codes without end. A signed-in person
has a cap on open sessions.

A node runs several worker processes and several nodes share a state database, so each limit is
checked twice: first in this process (``SourceLimits`` and a count per identity: free, and it
refuses most of a flood before any database work), then in the state database
(bastion/state/limits.py), in a small thread pool of its own so the event loop never waits for
the database and a slow database cannot take the threads sealing and lookups need.

- unauthenticated connections per source, across the workers of a node: ``connection_made`` is
  synchronous, so a connection is let in at once and aborted when the shared check refuses it
  (a millisecond later, before it can sign in). At most ``MAX_CHECKS_IN_FLIGHT`` checks wait
  for the database; a connection beyond that is refused, so a flood cannot queue database work
  without end. If the database fails, this process's allowance alone applies: a stranger can
  do nothing before signing in, and signing in fails closed by itself.
- device logins per source per minute, across nodes: if the database fails, this process's
  count alone applies (the login cannot bind a key without the database anyway).
- open sessions per identity, across nodes: if the database fails, new sessions are refused
  (fail closed); running sessions go on.

Places are given back by a thread (bastion/server/limits_keeper.py) that retries what the
database did not take and renews this process's leases; a place whose release never reaches
the database lapses with its lease (``LEASE`` after the process stopped renewing it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable

from bastion.config.model import Config
from bastion.errors import BastionError
from bastion.server.limits_keeper import LimitKeeper
from bastion.state.limits import LimitStore, Scope

log = logging.getLogger("bastion.server")

_WINDOW = 60.0  # seconds: device logins are counted per minute
MAX_CHECKS_IN_FLIGHT = 32  # shared checks of new connections waiting for the database
TOO_MANY_UNAUTHENTICATED = "too many unauthenticated connections from this address"
TOO_MANY_CHECKS = "too many connections waiting to be checked"


class SourceLimits:
    """Counts per client address in this process; used from the event loop only."""

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


class UnauthenticatedHold:
    """One connection's place in its address's allowance, until it signs in or goes away."""

    def __init__(self, limits: ServerLimits, source: str, holder: str) -> None:
        self._limits = limits
        self.source = source
        self.holder = holder
        self.shared = False  # the state database holds a place for it
        self.released = False

    def release(self) -> None:
        """The connection signed in or went away: give its place back (once)."""
        if not self.released:
            self.released = True
            self._limits.sources.close_unauthenticated(self.source)
            if self.shared:
                self._limits.give_back(Scope.UNAUTHENTICATED, self._limits.node_source(
                    self.source), self.holder)


class ServerLimits:
    """The limits of one worker process: in-process checks, then the shared ones."""

    def __init__(self, config: Config, store: LimitStore, *, threads: int = 4) -> None:
        server = config.server
        self.sources = SourceLimits(server.max_unauthenticated_per_source,
                                    server.device_logins_per_source)
        self._max_unauthenticated = server.max_unauthenticated_per_source
        self._device_logins = server.device_logins_per_source
        self.store = store
        self._per_identity: Counter[str] = Counter()
        # Holder names: unique within the process even with several servers in it (tests).
        self._tag = secrets.token_hex(4)
        self._serial = itertools.count(1)
        self._checks_in_flight = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="bastion-limits")
        self._keeper = LimitKeeper(store)

    def node_source(self, source: str) -> str:
        """The subject of a source's unauthenticated allowance: per node."""
        return f"{self.store.node}|{source}"

    def _holder(self, name: str) -> str:
        return f"{self._tag}.{name}"

    # -- connections not signed in -----------------------------------------------------------
    def open_unauthenticated(self, source: str, conn_id: str,
                             refuse: Callable[[str], None]) -> UnauthenticatedHold | None:
        """Count a new connection from ``source``. None if this process refuses it at once;
        else its hold, and ``refuse(reason)`` is called (on the event loop) if the shared check
        refuses it before it signed in."""
        if not self.sources.open_unauthenticated(source):
            refuse(TOO_MANY_UNAUTHENTICATED)
            return None
        hold = UnauthenticatedHold(self, source, self._holder(conn_id))
        if self._checks_in_flight >= MAX_CHECKS_IN_FLIGHT:
            hold.release()
            refuse(TOO_MANY_CHECKS)
            return None
        self._checks_in_flight += 1
        check = asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(
            self.store.acquire, Scope.UNAUTHENTICATED, self.node_source(source),
            self._max_unauthenticated, hold.holder))
        check.add_done_callback(functools.partial(self._checked, hold, refuse))
        return hold

    def _checked(self, hold: UnauthenticatedHold, refuse: Callable[[str], None],
                 check: asyncio.Future[bool]) -> None:
        self._checks_in_flight -= 1
        if check.cancelled():
            return
        if (exc := check.exception()) is not None:
            _warn_now_and_then("unauthenticated connections: %s; this process's allowance "
                               "applies", exc)
            return
        if check.result():
            self._keeper.taken()
            hold.shared = True
            if hold.released:  # it signed in or left while the database answered
                self.give_back(Scope.UNAUTHENTICATED, self.node_source(hold.source),
                               hold.holder)
        elif not hold.released:
            refuse(TOO_MANY_UNAUTHENTICATED)

    # -- device logins -------------------------------------------------------------------------
    async def start_device_login(self, source: str) -> bool:
        """Count a device login started from ``source``; False if it started too many lately
        (on any node)."""
        if not self.sources.start_device_login(source):
            return False
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(
                    self.store.acquire, Scope.DEVICE_LOGIN, source, self._device_logins,
                    self._holder(f"d{next(self._serial)}"), lease=False, ttl=_WINDOW))
        except BastionError as exc:
            _warn_now_and_then("device login rate: %s; this process's count applies", exc)
            return True

    # -- sessions per identity -----------------------------------------------------------------
    async def acquire_session(self, identity_key: str, limit: int, holder: str) -> bool:
        """Count a session of ``identity_key`` unless it has ``limit`` open on any worker or
        node. Raises StateError if the database cannot say (the caller refuses: fail closed)."""
        if self._per_identity[identity_key] >= limit:
            return False
        self._per_identity[identity_key] += 1  # counted now: this process's other acquires see it
        name = self._holder(holder)
        taking = asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(
            self.store.acquire, Scope.SESSION, identity_key, limit, name))
        try:
            held = await asyncio.shield(taking)
        except asyncio.CancelledError:
            # Whoever waited is gone, the database may still say yes: give that place back.
            taking.add_done_callback(functools.partial(
                self._give_back_if_taken, Scope.SESSION, identity_key, name))
            self._uncount(identity_key)
            raise
        except BaseException:
            self._uncount(identity_key)
            raise
        if held:
            self._keeper.taken()
        else:
            self._uncount(identity_key)
        return held

    def release_session(self, identity_key: str, holder: str) -> None:
        """Uncount a session counted by ``acquire_session`` (never waits for the database)."""
        self._uncount(identity_key)
        self.give_back(Scope.SESSION, identity_key, self._holder(holder))

    def _uncount(self, identity_key: str) -> None:
        self._per_identity[identity_key] -= 1
        if self._per_identity[identity_key] <= 0:
            del self._per_identity[identity_key]

    def _give_back_if_taken(self, scope: Scope, subject: str, holder: str,
                            taking: asyncio.Future[bool]) -> None:
        if not taking.cancelled() and taking.exception() is None and taking.result():
            self._keeper.taken()
            self.give_back(scope, subject, holder)

    def give_back(self, scope: Scope, subject: str, holder: str) -> None:
        """Give a place in the database back, in the keeper's thread, retried until it is."""
        self._keeper.give_back(scope, subject, holder)

    def flush(self, timeout: float) -> bool:
        """Wait (blocking) up to ``timeout`` s for every place given back to reach the
        database; whether all did. For a worker's orderly exit."""
        return self._keeper.flush(timeout)


_last_warning = 0.0


def _warn_now_and_then(message: str, exc: BaseException) -> None:
    """Log a database failure at most every few seconds (a flood during an outage would
    otherwise write one line per connection)."""
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= 5.0:
        _last_warning = now
        log.warning(message, exc)
