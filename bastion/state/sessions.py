"""Running sessions and kill requests, shared between the server and the CLI in the state DB.

Each node's server writes a row for every session it is running (``running_sessions``) and
removes it when the session ends; ``bastion sessions kill`` writes a ``session_kills`` row. The
server's upkeep loop (every 0.5 s) asks for the kill requests of its own running sessions, ends
each with the reason shown to the user and a marker in the recording, and marks the request
done. Nothing is ever signalled by PID: the PID column is information for people only. With
PostgreSQL for several nodes, the same two tables are shared by all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bastion.state.db import StateDB

MAX_REASON = 200  # characters of a kill reason kept (it is shown on the user's terminal)


@dataclass(frozen=True)
class RunningSession:
    """A session a node says it is running."""

    session_id: str
    node: str
    user: str
    target: str
    login: str
    client: str
    conn: str
    pid: int
    started: float


@dataclass(frozen=True)
class KillRequest:
    """An analyst's request to end a session."""

    session_id: str
    reason: str
    requested_by: str
    requested: float
    done: float | None


class SessionRegistry:
    """The two tables, for the server (register, pending kills) and the CLI (list, kill)."""

    def __init__(self, db: StateDB, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    # -- the server ------------------------------------------------------------------------
    def register(self, session: RunningSession) -> None:
        """Record a session as running (replacing a stale row of the same id)."""
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO running_sessions (session_id, node, \"user\", target, login,"
                " client, conn, pid, started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (session_id) DO UPDATE SET node = excluded.node,"
                " \"user\" = excluded.\"user\", target = excluded.target,"
                " login = excluded.login, client = excluded.client, conn = excluded.conn,"
                " pid = excluded.pid, started = excluded.started",
                (session.session_id, session.node, session.user, session.target, session.login,
                 session.client, session.conn, session.pid, session.started))

    def unregister(self, session_ids: Iterable[str]) -> None:
        """Remove sessions that ended."""
        ids = list(session_ids)
        if not ids:
            return
        with self.db.transaction() as cur:
            cur.executemany("DELETE FROM running_sessions WHERE session_id = ?",
                            [(i,) for i in ids])

    def clear_node(self, node: str) -> None:
        """Forget every session of a node (at server start: a crash leaves rows behind)."""
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM running_sessions WHERE node = ?", (node,))

    def clear_process(self, node: str, pid: int) -> None:
        """Forget the sessions of one worker process of a node (it died; the supervisor
        recovered its recordings)."""
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM running_sessions WHERE node = ? AND pid = ?", (node, pid))

    def pending_kills(self, node: str) -> list[KillRequest]:
        """Kill requests not yet carried out for sessions this node runs."""
        rows = self.db.query(
            "SELECT k.session_id, k.reason, k.requested_by, k.requested, k.done "
            "FROM session_kills k JOIN running_sessions r ON r.session_id = k.session_id "
            "WHERE r.node = ? AND k.done IS NULL ORDER BY k.requested", (node,))
        return [KillRequest(r["session_id"], r["reason"], r["requested_by"], r["requested"],
                            r["done"]) for r in rows]

    def mark_done(self, session_id: str) -> None:
        """Note that the server ended the session."""
        with self.db.transaction() as cur:
            cur.execute("UPDATE session_kills SET done = ? WHERE session_id = ?",
                        (self.clock(), session_id))

    # -- the CLI -----------------------------------------------------------------------------
    def running(self) -> list[RunningSession]:
        """Every session some node says it runs, oldest first."""
        rows = self.db.query("SELECT * FROM running_sessions ORDER BY started, session_id")
        return [RunningSession(r["session_id"], r["node"], r["user"], r["target"], r["login"],
                               r["client"], r["conn"], r["pid"], r["started"]) for r in rows]

    def get_running(self, session_id: str) -> RunningSession | None:
        """The running session of that id, if any."""
        return next((s for s in self.running() if s.session_id == session_id), None)

    def request_kill(self, session_id: str, reason: str, who: str) -> None:
        """Ask the session's node to end it (a repeated request replaces the reason)."""
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO session_kills (session_id, reason, requested_by, requested, done)"
                " VALUES (?, ?, ?, ?, NULL) ON CONFLICT (session_id) DO UPDATE SET"
                " reason = excluded.reason, requested_by = excluded.requested_by,"
                " requested = excluded.requested, done = NULL",
                (session_id, reason[:MAX_REASON], who, self.clock()))

    def kill_request(self, session_id: str) -> KillRequest | None:
        """The kill request of a session, if any."""
        rows = self.db.query("SELECT * FROM session_kills WHERE session_id = ?", (session_id,))
        if not rows:
            return None
        r = rows[0]
        return KillRequest(r["session_id"], r["reason"], r["requested_by"], r["requested"],
                           r["done"])
