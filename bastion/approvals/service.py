"""Opening, waiting for and deciding approval requests, with their audit events and webhook.

Rules a decision must pass (each refusal is an ``ApprovalError`` and an ``approval.refused``
audit event): the approver is in ``[approvals] approver_groups`` or ``approver_users``; nobody
decides their own request; approving needs the approver's TOTP code (unless
``require_totp = false``); denying needs a reason. A decision records who, when and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bastion.approvals.store import ApprovalRequest, ApprovalState, ApprovalStore, new_request_id
from bastion.audit import AuditLog
from bastion.config.model import ApprovalsConfig
from bastion.errors import ApprovalError, BastionError
from bastion.identity.model import Identity

MAX_REASON = 500


class TotpChecker(Protocol):
    """What deciding needs of identity/totp.TotpStore."""

    def verify(self, identity_key: str, code: str) -> None: ...


class Notifier(Protocol):
    """Tells approvers about a new request (the webhook)."""

    async def send(self, payload: dict[str, Any]) -> bool: ...


@dataclass(frozen=True)
class Approver:
    """Who decides: an identity's key, display name, e-mail and groups."""

    key: str
    name: str
    groups: tuple[str, ...] = ()
    email: str | None = None

    @classmethod
    def of(cls, identity: Identity) -> Approver:
        """The approver an authenticated identity is."""
        return cls(identity.key, identity.name, identity.groups, identity.email)


def rfc3339(ts: float) -> str:
    """A timestamp as RFC 3339 UTC (seconds)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


class ApprovalService:
    """Approval requests for one bastion process (server or CLI)."""

    def __init__(self, store: ApprovalStore, config: ApprovalsConfig, audit: AuditLog,
                 node: str, totp: TotpChecker | None = None, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self._audit = audit
        self._node = node
        self._totp = totp
        self._notifier = notifier
        self._clock = clock
        self._tasks: set[asyncio.Task[bool]] = set()

    # -- the waiting side (a session holding a command) ------------------------------------
    def open(self, *, session_id: str, channel: int, requester_key: str, requester_name: str,
             target: str, login: str, command: str, rule: str | None) -> ApprovalRequest:
        """Store a pending request, audit it and notify the webhook (in the background)."""
        now = self._clock()
        request = ApprovalRequest(
            id=new_request_id(), state=ApprovalState.PENDING, created=now,
            expires=now + self.config.timeout, node=self._node, session_id=session_id,
            channel=channel, requester=requester_key, requester_name=requester_name,
            target=target, login=login, command=command, rule=rule)
        self.store.create(request)
        self._audit.emit("approval.requested", **self._fields(request))
        if self._notifier is not None:
            payload = {"event": "approval.requested", **self._fields(request),
                       "created": rfc3339(request.created), "expires": rfc3339(request.expires)}
            task = asyncio.get_running_loop().create_task(self._notify(payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return request

    async def _notify(self, payload: dict[str, Any]) -> bool:
        assert self._notifier is not None
        delivered = await self._notifier.send(payload)
        if not delivered:
            self._audit.emit("approval.webhook_failed", id=payload["id"])
        return delivered

    async def wait(self, request_id: str, cancelled: asyncio.Event) -> ApprovalRequest:
        """Poll the state DB until the request is decided, expires, or ``cancelled`` is set."""
        while True:
            request = self.store.get(request_id)
            if request is None:  # the row vanished (state DB replaced): fail closed
                raise ApprovalError(f"approval request {request_id} disappeared")
            if request.state.final:
                return request
            now = self._clock()
            if cancelled.is_set() or now >= request.expires:
                state = ApprovalState.CANCELLED if cancelled.is_set() else ApprovalState.EXPIRED
                reason = "cancelled by the user" if cancelled.is_set() else "timed out"
                try:
                    decided = self.store.decide(request_id, state, "bastion", "bastion", now,
                                                reason)
                except ApprovalError:
                    continue  # an approver was faster: read their decision
                self._audit.emit(f"approval.{state.value}", **self._fields(decided),
                                 reason=reason)
                return decided
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancelled.wait(), self.config.poll_interval)

    def withdraw(self, request_id: str, reason: str) -> None:
        """Cancel a request whose session is gone (never raises: the session is closing)."""
        try:
            decided = self.store.decide(request_id, ApprovalState.CANCELLED, "bastion",
                                        "bastion", self._clock(), reason)
        except BastionError:
            return  # already decided, or the state DB failed: nothing waits for it any more
        self._audit.emit("approval.cancelled", **self._fields(decided), reason=reason)

    # -- the deciding side (CLI or approver menu) ------------------------------------------
    def may_decide(self, approver: Approver) -> bool:
        """Whether this person is a configured approver."""
        cfg = self.config
        return (bool(set(cfg.approver_groups) & set(approver.groups))
                or approver.name in cfg.approver_users
                or (approver.email is not None and approver.email in cfg.approver_users))

    def pending_for(self, approver: Approver) -> list[ApprovalRequest]:
        """Pending requests this approver may decide (not their own)."""
        if not self.may_decide(approver):
            return []
        return [r for r in self.store.pending(self._clock()) if r.requester != approver.key]

    def decide(self, request_id: str, approver: Approver, approve: bool, reason: str | None,
               totp_code: str | None = None) -> ApprovalRequest:
        """Approve or deny a pending request; raise ApprovalError (audited) if not allowed."""
        try:
            return self._decide(request_id, approver, approve, reason, totp_code)
        except BastionError as exc:
            self._audit.emit("approval.refused", id=request_id[:32], approver=approver.name,
                             approver_key=approver.key,
                             action="approve" if approve else "deny", reason=str(exc))
            raise

    def _decide(self, request_id: str, approver: Approver, approve: bool, reason: str | None,
                totp_code: str | None) -> ApprovalRequest:
        if not self.may_decide(approver):
            raise ApprovalError(f"{approver.name} is not an approver "
                                "([approvals] approver_groups / approver_users)")
        request = self.store.get(request_id)
        if request is None:
            raise ApprovalError(f"no approval request {request_id}")
        if request.requester == approver.key:
            raise ApprovalError("nobody approves or denies their own request")
        reason = (reason or "").strip()[:MAX_REASON] or None
        if reason is not None and not reason.isprintable():
            raise ApprovalError("the reason must be printable text on one line")
        if not approve and reason is None:
            raise ApprovalError("denying needs a reason (--reason TEXT)")
        if approve and self.config.require_totp:
            if self._totp is None or not totp_code:
                raise ApprovalError("approving needs your TOTP code")
            self._totp.verify(approver.key, totp_code)
        state = ApprovalState.APPROVED if approve else ApprovalState.DENIED
        decided = self.store.decide(request_id, state, approver.key, approver.name,
                                    self._clock(), reason)
        self._audit.emit(f"approval.{state.value}", **self._fields(decided),
                         approver=approver.name, approver_key=approver.key, reason=reason)
        return decided

    @staticmethod
    def _fields(r: ApprovalRequest) -> dict[str, Any]:
        return {"id": r.id, "user": r.requester_name, "user_key": r.requester,
                "target": r.target, "login": r.login, "command": r.command, "rule": r.rule,
                "session": r.session_id, "channel": r.channel, "node": r.node}
