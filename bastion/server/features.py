"""The features on the channel pipeline, in the order data passes them.

Each feature is a ``StageFactory`` (see bastion/relay/pipeline.py) built from the config; adding
one is a line here. Input passes them in this order on its way to the target, output on its way
to the user: command control reads what the user typed before masking could change the view of
the screen it reads, and masking comes before the recorder in both directions.
"""

from __future__ import annotations

from bastion.approvals.notifier import WebhookNotifier
from bastion.approvals.service import ApprovalService
from bastion.approvals.store import ApprovalStore
from bastion.audit import AuditLog
from bastion.config.model import Config
from bastion.identity.service import IdentityService
from bastion.policy.commands import CommandPolicy
from bastion.relay.command_stage import CommandCatcher
from bastion.relay.pipeline import StageFactory


def stage_factories(config: Config,
                    approvals: ApprovalService | None = None) -> tuple[StageFactory, ...]:
    """The configured features' stage factories."""
    factories: list[StageFactory] = []
    commands = config.commands
    if commands.rules or commands.unresolved or any(t.unresolved for t in config.targets):
        factories.append(CommandCatcher(CommandPolicy.from_config(config), approvals))
    return tuple(factories)


def approval_service(config: Config, audit: AuditLog, identity: IdentityService) -> ApprovalService:
    """The server's approval service: requests in the state DB, webhook when configured."""
    settings = config.approvals
    notifier = (WebhookNotifier(settings.webhook_url, settings.webhook_timeout,
                                settings.webhook_attempts) if settings.webhook_url else None)
    return ApprovalService(ApprovalStore(identity.db), settings, audit, config.server.node_id,
                           totp=identity.totp, notifier=notifier)
