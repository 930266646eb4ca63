"""Limits held across worker processes and nodes: places under a limit, in the state database.

A limit ("at most 10 sessions for alice", "at most 10 device logins a minute from 10.0.0.7")
is a set of numbered places, slots 0 .. limit-1, in the table ``limit_holds``, whose primary
key is (scope, subject, slot). Taking a place is one INSERT that picks the lowest slot nobody
holds, and the primary key makes the count exact on both backends: two processes (or nodes)
racing for the last place pick the same slot, one insert wins, the other conflicts, tries again
and finds the limit full. There is no counter to drift or to repair (the count is the rows), and
dropping every place of a dead process is one DELETE. Each change is one statement committed on
its own: one round trip to PostgreSQL.

A row names its holder: (node, pid, holder), ``holder`` unique within the process. Two kinds:

- a lease (an open session, a connection not yet signed in) is given back by its holder
  (``release``); its process renews all its leases every ``RENEW_EVERY`` seconds (``renew``) and
  a lease lapses ``LEASE`` seconds after the last renewal, so the places of a process or a node
  that died without anyone calling ``forget_process`` / ``forget_node`` free themselves;
- a rate entry (a device login started) is never given back: it lapses ``window`` seconds after
  it was taken, which makes "at most N a minute" exact over any sliding minute.

A lapsed row is a free place: the next acquire of that subject takes it over (a conditional
upsert); ``sweep`` deletes rows lapsed long ago (addresses never seen again). Times are the
nodes' clocks (unix time): nodes keep them in step (NTP), as TOTP already needs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from enum import StrEnum

from bastion.state.db import StateDB

LEASE = 120.0  # seconds a lease lasts after its process last renewed it
RENEW_EVERY = 30.0  # seconds between renewals of a process's leases
SWEEP_AFTER = 600.0  # seconds a lapsed row stays before ``sweep`` deletes it
_EXTRA_TRIES = 8  # attempts beyond ``limit`` before a contended acquire gives up (refuses)


class Scope(StrEnum):
    """Which limit a place is held under."""

    SESSION = "session"  # per identity, across nodes: server.max_sessions_per_user
    UNAUTHENTICATED = "unauthenticated"  # per node and source address
    DEVICE_LOGIN = "device_login"  # per source address, across nodes, per minute


# The lowest slot below the limit with no live row: slot 0, or one above a held slot (if slot s
# is free and s > 0, then s-1 is held, so s is among the candidates). A lapsed row in that slot
# is taken over; a live one (a racer's) makes the statement change nothing.
_ACQUIRE = (
    "INSERT INTO limit_holds (scope, subject, slot, node, pid, holder, lease, expires)"
    " SELECT ?, ?, MIN(c.slot), ?, ?, ?, ?, ?"
    " FROM (SELECT 0 AS slot UNION SELECT slot + 1 FROM limit_holds"
    " WHERE scope = ? AND subject = ?) c"
    " WHERE c.slot < ? AND NOT EXISTS (SELECT 1 FROM limit_holds h WHERE h.scope = ?"
    " AND h.subject = ? AND h.slot = c.slot AND h.expires > ?)"
    " HAVING MIN(c.slot) IS NOT NULL"
    " ON CONFLICT (scope, subject, slot) DO UPDATE SET node = excluded.node,"
    " pid = excluded.pid, holder = excluded.holder, lease = excluded.lease,"
    " expires = excluded.expires WHERE limit_holds.expires <= ?")


class LimitStore:
    """The places of one process (``node``, ``pid``) under shared limits; sync (call it from a
    worker thread, never from the event loop)."""

    def __init__(self, db: StateDB, node: str, pid: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.node = node
        self.pid = os.getpid() if pid is None else pid
        self.clock = clock

    def acquire(self, scope: Scope, subject: str, limit: int, holder: str, *,
                lease: bool = True, ttl: float = LEASE) -> bool:
        """Take a place under ``limit`` for ``holder``; False if all are taken.

        ``lease``: given back by ``release`` and kept by ``renew``; otherwise a rate entry that
        lapses ``ttl`` seconds from now. Raises StateError when the database fails.
        """
        if limit <= 0:
            return False
        for _ in range(limit + _EXTRA_TRIES):
            now = self.clock()
            if self.db.execute(_ACQUIRE, (
                    scope.value, subject, self.node, self.pid, holder, int(lease), now + ttl,
                    scope.value, subject, limit, scope.value, subject, now, now)):
                return True
            # Either the limit is full or a racer took the slot picked: look again.
            if self.count(scope, subject) >= limit:
                return False
        return False

    def release(self, scope: Scope, subject: str, holder: str) -> bool:
        """Give a place back; False if this process held none for ``holder``."""
        return bool(self.db.execute(
            "DELETE FROM limit_holds WHERE scope = ? AND subject = ? AND node = ? AND pid = ?"
            " AND holder = ?", (scope.value, subject, self.node, self.pid, holder)))

    def renew(self) -> int:
        """Extend every lease of this process by ``LEASE`` from now; how many it holds."""
        return self.db.execute(
            "UPDATE limit_holds SET expires = ? WHERE node = ? AND pid = ? AND lease = 1",
            (self.clock() + LEASE, self.node, self.pid))

    def count(self, scope: Scope, subject: str) -> int:
        """Places taken (and not lapsed) under ``subject``'s limit, by any process."""
        rows = self.db.query("SELECT COUNT(*) FROM limit_holds WHERE scope = ? AND subject = ?"
                             " AND expires > ?", (scope.value, subject, self.clock()))
        return int(rows[0][0])

    def forget_process(self, node: str, pid: int) -> int:
        """Drop every lease of a process that ended (its sessions and connections are gone);
        its rate entries stay until they lapse. How many were dropped."""
        return self.db.execute("DELETE FROM limit_holds WHERE node = ? AND pid = ? AND lease = 1",
                               (node, pid))

    def forget_node(self, node: str) -> int:
        """Drop every lease of every process of a node (at its start: a crash left them)."""
        return self.db.execute("DELETE FROM limit_holds WHERE node = ? AND lease = 1", (node,))

    def sweep(self) -> int:
        """Delete rows lapsed more than ``SWEEP_AFTER`` seconds ago; how many."""
        return self.db.execute("DELETE FROM limit_holds WHERE expires < ?",
                               (self.clock() - SWEEP_AFTER,))
