"""Approval requests in the state database (table ``approvals``, schema 4 in state/db.py).

Every change is one short immediate transaction, and a decision only moves a request out of
``pending`` (compare-and-set), so two approvers, or an approver and the expiry, cannot both win.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass

from bastion.errors import ApprovalError
from bastion.state.db import Row, StateDB


class ApprovalState(enum.Enum):
    """Where a request is: pending until approved, denied, expired or cancelled by its user."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """Whether the request is decided (no further change)."""
        return self is not ApprovalState.PENDING


@dataclass(frozen=True)
class ApprovalRequest:
    """One held command waiting for (or decided by) an approver."""

    id: str
    state: ApprovalState
    created: float
    expires: float
    node: str
    session_id: str
    channel: int
    requester: str  # Identity.key
    requester_name: str
    target: str
    login: str
    command: str  # masked
    rule: str | None = None
    decided_by: str | None = None  # Identity.key of the approver, or "bastion" for expiry
    decided_name: str | None = None
    decided_at: float | None = None
    reason: str | None = None


_COLUMNS = ("id, state, created, expires, node, session_id, channel, requester, requester_name,"
            " target, login, command, rule, decided_by, decided_name, decided_at, reason")
# Built once from the constant column list above; values always go in as parameters.
_SELECT = f"SELECT {_COLUMNS} FROM approvals"  # noqa: S608
_INSERT = f"INSERT INTO approvals ({_COLUMNS}) VALUES ({', '.join('?' * 17)})"  # noqa: S608


def new_request_id() -> str:
    """A short id people can read out and type: 8 lowercase base32 characters (40 bits)."""
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


class ApprovalStore:
    """Approval requests: create, read, decide (once), expire."""

    def __init__(self, db: StateDB) -> None:
        self._db = db

    def create(self, request: ApprovalRequest) -> None:
        """Store a new pending request."""
        with self._db.transaction() as cur:
            cur.execute(_INSERT, _values(request))

    def get(self, request_id: str) -> ApprovalRequest | None:
        """The request with this id, or None."""
        rows = self._db.query(_SELECT + " WHERE id = ?", (request_id,))
        return _row(rows[0]) if rows else None

    def pending(self, now: float) -> list[ApprovalRequest]:
        """Requests still waiting (not yet expired), oldest first."""
        rows = self._db.query(_SELECT + " WHERE state = 'pending' AND expires > ? "
                              "ORDER BY created", (now,))
        return [_row(r) for r in rows]

    def recent(self, limit: int = 50) -> list[ApprovalRequest]:
        """The newest requests in any state, newest first."""
        rows = self._db.query(_SELECT + " ORDER BY created DESC LIMIT ?",
                              (limit,))
        return [_row(r) for r in rows]

    def decide(self, request_id: str, state: ApprovalState, by: str, by_name: str, at: float,
               reason: str | None) -> ApprovalRequest:
        """Move a pending request to ``state``; raise ApprovalError if it is not pending."""
        if not state.final:
            raise ApprovalError("a decision must approve, deny, expire or cancel")
        with self._db.transaction() as cur:
            row = cur.execute("SELECT state, expires FROM approvals WHERE id = ?",
                              (request_id,)).fetchone()
            if row is None:
                raise ApprovalError(f"no approval request {request_id}")
            current = ApprovalState(row[0])
            if current is ApprovalState.PENDING and row[1] <= at and state in (
                    ApprovalState.APPROVED, ApprovalState.DENIED):
                cur.execute("UPDATE approvals SET state = 'expired', decided_by = 'bastion', "
                            "decided_name = 'bastion', decided_at = ?, reason = 'timed out' "
                            "WHERE id = ?", (at, request_id))
                current = ApprovalState.EXPIRED
            if current is not ApprovalState.PENDING:
                raise ApprovalError(f"request {request_id} is already {current.value}")
            cur.execute("UPDATE approvals SET state = ?, decided_by = ?, decided_name = ?, "
                        "decided_at = ?, reason = ? WHERE id = ? AND state = 'pending'",
                        (state.value, by, by_name, at, reason, request_id))
        decided = self.get(request_id)
        assert decided is not None
        return decided


def _values(r: ApprovalRequest) -> tuple[object, ...]:
    return (r.id, r.state.value, r.created, r.expires, r.node, r.session_id, r.channel,
            r.requester, r.requester_name, r.target, r.login, r.command, r.rule, r.decided_by,
            r.decided_name, r.decided_at, r.reason)


def _row(row: Row) -> ApprovalRequest:
    return ApprovalRequest(
        id=row["id"], state=ApprovalState(row["state"]), created=row["created"],
        expires=row["expires"], node=row["node"], session_id=row["session_id"],
        channel=row["channel"], requester=row["requester"], requester_name=row["requester_name"],
        target=row["target"], login=row["login"], command=row["command"], rule=row["rule"],
        decided_by=row["decided_by"], decided_name=row["decided_name"],
        decided_at=row["decided_at"], reason=row["reason"])
