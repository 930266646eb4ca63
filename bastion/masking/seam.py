"""The channel pipeline's stage shape, restated for masking, which sits below relay and may not
import it (packages import downward only).

``bastion.relay.pipeline`` drives any object with these attributes and methods as a stage: it
sets ``emit``, ``emit_end`` and ``ctx``, then calls ``feed``, ``end``, ``resize`` and ``close``.
``Stream`` has the same values as the relay's; a stage passes on the stream object it was given.
``bastion/server/features.py`` turns ``MaskingStages`` into the relay's ``ChannelStages``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bastion.config.model import Target


class Stream(enum.IntEnum):
    """Which stream of a direction a chunk belongs to (values as in relay.pipeline.Stream)."""

    DATA = 0
    STDERR = 1


class ChannelContext(Protocol):
    """What masking asks of a channel's StageContext."""

    def marker(self, label: str) -> None:
        """Add a marker to the channel's recording."""

    def audit(self, event: str, **fields: Any) -> None:
        """Emit an audit event with the channel's fields added."""


class ChannelFacts(Protocol):
    """What masking reads of a channel's ChannelInfo."""

    @property
    def kind(self) -> enum.Enum: ...  # .value: "shell", "exec" or "sftp"

    @property
    def pty(self) -> bool: ...

    @property
    def session_id(self) -> str: ...

    @property
    def channel(self) -> int: ...

    @property
    def target(self) -> Target: ...


Emit = Callable[[bytes, Any], None]


class Stage:
    """One step of a direction; passes everything through unchanged (as relay's Stage)."""

    emit: Emit
    emit_end: Callable[[], None]
    ctx: ChannelContext

    def feed(self, data: bytes, stream: Any) -> None:
        """Take one chunk; pass it on with ``self.emit``."""
        self.emit(data, stream)

    def end(self) -> None:
        """No more data in this direction."""
        self.emit_end()

    def resize(self, width: int, height: int) -> None:
        """The user's terminal changed size."""

    def close(self) -> None:
        """The channel is gone: cancel timers."""


@dataclass
class MaskingStages:
    """Masking's stages of one channel, in the relay's four lists."""

    input: Sequence[Stage] = ()
    output: Sequence[Stage] = ()
    input_record: Sequence[Stage] = ()
    output_record: Sequence[Stage] = ()
