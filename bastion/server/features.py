"""The features on the channel pipeline, in the order data passes them.

Each feature is a ``StageFactory`` (see bastion/relay/pipeline.py) built from the config; adding
one is a line here. Input passes them in this order on its way to the target, output on its way
to the user: command control reads what the user typed before masking could change the view of
the screen it reads, and masking comes before the recorder in both directions.
"""

from __future__ import annotations

from bastion.config.model import Config
from bastion.relay.pipeline import StageFactory


def stage_factories(config: Config) -> tuple[StageFactory, ...]:
    """The configured features' stage factories."""
    factories: list[StageFactory] = []
    return tuple(factories)
