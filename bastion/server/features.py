"""The features on the channel pipeline, in the order data passes them.

Each feature is a ``StageFactory`` (see bastion/relay/pipeline.py) built from the config; adding
one is a line here. Input passes them in this order on its way to the target, output on its way
to the user: command control reads what the user typed before masking could change the view of
the screen it reads, and masking comes before the recorder in both directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from bastion.config.model import Config
from bastion.masking import MaskingFactory
from bastion.masking.seam import Stage as MaskingStage
from bastion.relay.pipeline import ChannelInfo, ChannelStages, Stage, StageContext, StageFactory


def stage_factories(config: Config) -> tuple[StageFactory, ...]:
    """The configured features' stage factories."""
    factories: list[StageFactory] = []
    if config.masking.enabled:
        factories.append(masking_feature(MaskingFactory(config.masking)))  # last: recorder next
    return tuple(factories)


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
