"""The ``[approvals]`` section: who may approve held commands, how long a request waits, webhook."""

from __future__ import annotations

from bastion.config.model import GROUP_NAME, ApprovalsConfig
from bastion.config.reader import Table

__all__ = ["ApprovalsConfig", "parse_approvals"]


def parse_approvals(t: Table) -> ApprovalsConfig:
    """Read ``[approvals]``."""
    config = ApprovalsConfig(
        approver_groups=t.strings("approver_groups", (), pattern=GROUP_NAME,
                                  what="a list of group names"),
        approver_users=t.strings("approver_users", (), pattern=r"[^\x00-\x1f\x7f]{1,256}",
                                 what="a list of user names"),
        timeout=t.duration("timeout", 600.0, allow_zero=False),
        require_totp=t.boolean("require_totp", True),
        webhook_url=t.string("webhook_url", None, pattern=r"https?://[^\s\x00-\x1f]+",
                             what="an http:// or https:// URL"),
        webhook_timeout=t.duration("webhook_timeout", 5.0, allow_zero=False),
        webhook_attempts=t.integer("webhook_attempts", 3, lo=1, hi=10),
        poll_interval=t.duration("poll_interval", 0.3, allow_zero=False),
    )
    t.done()
    return config
