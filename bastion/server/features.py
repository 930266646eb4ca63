"""The features on the channel pipeline, in the order data passes them.

Each feature is a ``StageFactory`` (see bastion/relay/pipeline.py) built from the config; adding
one is a line here. Input passes them in this order on its way to the target, output on its way
to the user: command control reads what the user typed before masking could change the view of
the screen it reads, and masking comes before the recorder in both directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from bastion.approvals.notifier import WebhookNotifier
from bastion.approvals.service import ApprovalService
from bastion.approvals.store import ApprovalStore
from bastion.audit import AuditLog
from bastion.config.model import Config, Target
from bastion.identity.service import IdentityService
from bastion.masking import MaskingFactory
from bastion.masking.seam import Stage as MaskingStage
from bastion.relay.pipeline import ChannelInfo, ChannelStages, Stage, StageContext, StageFactory
from bastion.relay.scp_stage import ExecTransferFactory
from bastion.relay.session import MaskingService
from bastion.relay.sftp_stage import SftpStageFactory


@dataclass(frozen=True)
class Features:
    """What the configured features give the relay: stage factories and the masking service."""

    stage_factories: tuple[StageFactory, ...]
    masking: MaskingService | None


def build_features(config: Config, approvals: ApprovalService | None = None) -> Features:
    """The configured features, in the order data passes them."""
    factories: list[StageFactory] = []
    # Command control first: it reads the keys the user typed and the screen as the target drew
    # it, before anything else changes them (it holds a line for approval, drops a denied one).
    commands = config.commands
    if commands.rules or commands.unresolved or any(t.unresolved for t in config.targets):
        # Imported only here: the bash grammar (tree-sitter) and the terminal emulator (pyte)
        # are about 5 MB of every worker's memory, needed only where command rules exist.
        from bastion.policy.commands import CommandPolicy
        from bastion.relay.command_stage import CommandCatcher

        factories.append(CommandCatcher(CommandPolicy.from_config(config), approvals))
    # Transfers read the file-transfer protocols as user and target speak them; masking comes
    # last, right before the recorder.
    factories.append(SftpStageFactory(config))  # sftp channels: audit, ops log, [[transfers]]
    factories.append(ExecTransferFactory(config))  # scp -t/-f and rsync --server execs
    masking: MaskingService | None = None
    if config.masking.enabled:
        factory = MaskingFactory(config.masking)
        # Compile each target's detectors now (Hyperscan: about 45 ms a set), not in the first
        # session a worker relays there.
        for target in (None, *config.targets):
            factory.scanner(target)
        masking = _Masking(factory)
        factories.append(masking_feature(factory))  # last: the recorder comes next
    return Features(tuple(factories), masking)


class _Masking:
    """The masking factory as the relay's MaskingService."""

    def __init__(self, factory: MaskingFactory) -> None:
        self._factory = factory

    def mask_text(self, text: str, target: Target | None = None) -> str:
        return self._factory.mask_text(text, target)

    def channel_counts(self, session_id: str, number: int) -> dict[str, int]:
        channel = self._factory.channel(session_id, number)
        return {} if channel is None else channel.counts()

    def forget_session(self, session_id: str) -> None:
        self._factory.forget_session(session_id)


def masking_feature(factory: MaskingFactory) -> StageFactory:
    """The masking factory as a relay StageFactory (masking, below relay, cannot import it)."""
    def build(info: ChannelInfo, ctx: StageContext) -> ChannelStages | None:
        stages = factory(info, ctx)
        if stages is None:
            return None
        return ChannelStages(input=_relay(stages.input), output=_relay(stages.output),
                             input_record=_relay(stages.input_record),
                             output_record=_relay(stages.output_record))
    return build


def _relay(stages: Sequence[MaskingStage]) -> Sequence[Stage]:
    # masking.seam.Stage has relay.pipeline.Stage's attributes and methods (the pipeline drives
    # it by them); the classes differ only because masking may not import relay.
    return cast(Sequence[Stage], stages)


def approval_service(config: Config, audit: AuditLog, identity: IdentityService) -> ApprovalService:
    """The server's approval service: requests in the state DB, webhook when configured."""
    settings = config.approvals
    notifier = (WebhookNotifier(settings.webhook_url, settings.webhook_timeout,
                                settings.webhook_attempts) if settings.webhook_url else None)
    return ApprovalService(ApprovalStore(identity.db), settings, audit, config.server.node_id,
                           totp=identity.totp, notifier=notifier)
