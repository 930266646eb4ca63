"""Just-in-time approval of held commands: requests in the state DB, decided by approvers.

A session that holds a command opens a request (``ApprovalService.open``) and polls the state
database for its decision; approvers decide from another process (``bastion approvals``) or
another connection (the approver menu). Approvers are notified by an audit event and, when
configured, a webhook.
"""

from bastion.approvals.service import ApprovalService, Approver
from bastion.approvals.store import ApprovalRequest, ApprovalState, ApprovalStore

__all__ = ["ApprovalRequest", "ApprovalService", "ApprovalState", "ApprovalStore", "Approver"]
