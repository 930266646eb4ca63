"""The masking feature as a channel-pipeline stage factory (returning ``MaskingStages``, which
bastion/server/features.py hands to the relay as its ``ChannelStages``).

Per channel (see docs/masking.md):

- pty (shell, ``ssh -t host cmd``): output masked before the user sees it (unless the target's
  ``mask_user_output`` is off) and always before it is recorded; recorded keystrokes masked,
  no-echo input recorded as ``*``.
- exec without a pty: bytes unchanged, detectors count what passes (output and stdin); with
  ``mask_exec`` both are masked (altering what passes).
- sftp: nothing.

Counts per detector are kept per channel (``ChannelMasking.counts()``), summed per session
(``MaskingFactory.session_counts``), and sent as one ``masking.summary`` audit event (plus a
recording marker on a pty) when the channel ends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from bastion.config.masking import CustomDetector, MaskingConfig
from bastion.config.model import Target
from bastion.masking.detectors import BUILTIN, Detector, Replacement, Validator
from bastion.masking.engine import AllowRule, Scanner
from bastion.masking.noecho import pair
from bastion.masking.seam import ChannelContext, ChannelFacts, MaskingStages, Stage
from bastion.masking.stream import StreamMasker
from bastion.masking.timed import (
    CallLater,
    RecordOutputMasker,
    ScanOnly,
    SharedState,
    TimedMasker,
    UserOutputMasker,
    loop_call_later,
)

MAX_CHANNELS_KEPT = 100_000  # channels whose counts are kept until forget_session


@dataclass(frozen=True)
class Timing:
    """Hold-back times (seconds). Only ``hold_time`` delays what a user sees."""

    hold_time: float = 0.001  # a possible secret's start waits this long for the next chunk
    record_hold: float = 2.0  # the recorded copy re-checks a timed release this long
    echo_window: float = 1.0  # typed keys not echoed within this are recorded hidden


def custom_detector(custom: CustomDetector) -> Detector:
    """A config detector as an engine detector; its tail is the rest of a word or token."""
    return Detector(
        name=custom.name,
        pattern=custom.pattern,
        tail=r"[^\s]{1,256}$",
        validator=Validator(custom.validator),
        replacement=Replacement(custom.replacement),
    )


class ChannelMasking:
    """One channel's masking: its shared state and the counts the manifest needs."""

    def __init__(self, info: ChannelFacts, ctx: ChannelContext, shared: SharedState) -> None:
        self.pty = info.pty
        self.ctx: ChannelContext | None = ctx  # dropped once summarised: the factory keeps this
        self.shared = shared

    def counts(self) -> dict[str, int]:
        """Values found per detector so far (masked, or only counted on exec channels)."""
        return {name: count for name, count in sorted(self.shared.counts.items()) if count}

    def summarise(self) -> None:
        """Once per channel: the counts as an audit event (and a marker on a pty)."""
        ctx, self.ctx = self.ctx, None
        if ctx is None:
            return
        counts = self.counts()
        if counts and self.pty:
            ctx.marker("masked: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
        ctx.audit("masking.summary", counts=counts, mode="masked" if self.pty else "counted")


class _Summary(Stage):
    """Last output record stage: at the end of the output (or the channel) the summary."""

    def __init__(self, channel: ChannelMasking) -> None:
        self.channel = channel

    def end(self) -> None:
        self.channel.summarise()
        self.emit_end()

    def close(self) -> None:
        self.channel.summarise()


class MaskingFactory:
    """The ``StageFactory`` the server lists; one per configuration."""

    def __init__(self, config: MaskingConfig, timing: Timing | None = None,
                 call_later: CallLater = loop_call_later) -> None:
        self.config = config
        self.timing = timing or Timing(hold_time=config.hold_time)
        self.call_later = call_later
        self.allow = tuple(AllowRule.parse(entry) for entry in config.allow)
        self.detectors = (*BUILTIN, *(custom_detector(d) for d in config.detectors))
        self._scanners: dict[frozenset[str], Scanner] = {}
        self._channels: dict[tuple[str, int], ChannelMasking] = {}

    def scanner(self, target: Target | None = None) -> Scanner | None:
        """The detectors enabled for ``target`` (None: masking is off there)."""
        off = set(self.config.detectors_off)
        if target is not None:
            off |= set(target.masking.masking_off)
        if not self.config.enabled or "*" in off:
            return None
        key = frozenset(off)
        scanner = self._scanners.get(key)
        if scanner is None:
            scanner = self._scanners[key] = Scanner(
                [d for d in self.detectors if d.name not in off], self.allow)
        return scanner

    def __call__(self, info: ChannelFacts, ctx: ChannelContext) -> MaskingStages | None:
        scanner = self.scanner(info.target)
        if scanner is None or info.kind.value == "sftp":
            return None
        shared = SharedState()
        channel = ChannelMasking(info, ctx, shared)
        self._channels[(info.session_id, info.channel)] = channel
        while len(self._channels) > MAX_CHANNELS_KEPT:  # forget_session was not called
            del self._channels[next(iter(self._channels))]
        summary = _Summary(channel)
        if info.pty:
            return self._pty(info, scanner, shared, summary)
        mask_exec = info.target.masking.mask_exec
        if mask_exec if mask_exec is not None else self.config.mask_exec:
            # Output as on a pty: the user's copy waits ``hold_time``, the recorded one is
            # masked from the raw bytes with the longer hold. Stdin is masked before it reaches
            # the target, so it gets the longer hold itself (a secret cut 1 ms to 2 s apart
            # went through whole after its start's release).
            timing = self.timing
            return MaskingStages(
                input=[TimedMasker(scanner, shared, timing.record_hold, self.call_later)],
                output=[UserOutputMasker(scanner, shared, timing.hold_time, self.call_later)],
                output_record=[RecordOutputMasker(scanner, shared, timing.record_hold,
                                                  self.call_later), summary])
        return MaskingStages(input_record=[ScanOnly(scanner, shared)],
                             output_record=[ScanOnly(scanner, shared), summary])

    def _pty(self, info: ChannelFacts, scanner: Scanner, shared: SharedState,
             summary: Stage) -> MaskingStages:
        per_target = info.target.masking.mask_user_output
        to_user = per_target if per_target is not None else self.config.mask_user_output
        timing = self.timing
        keys, watcher = pair(scanner, shared, record_hold=timing.record_hold,
                             window=timing.echo_window, call_later=self.call_later)
        record = RecordOutputMasker(scanner, shared, timing.record_hold, self.call_later)
        output: list[Stage] = []
        if to_user:
            output.append(UserOutputMasker(scanner, shared, timing.hold_time, self.call_later))
        # The summary comes last on the record side: after the recorded copy's final flush.
        return MaskingStages(output=output, input_record=[keys],
                             output_record=[watcher, record, summary])

    def channel(self, session_id: str, number: int) -> ChannelMasking | None:
        """The masking of one channel (for its counts)."""
        return self._channels.get((session_id, number))

    def session_counts(self, session_id: str) -> dict[str, int]:
        """Counts per detector over every channel of a session."""
        total: Counter[str] = Counter()
        for (sid, _), channel in self._channels.items():
            if sid == session_id:
                total.update(channel.counts())
        return dict(sorted(total.items()))

    def forget_session(self, session_id: str) -> dict[str, int]:
        """Drop a finished session's channels; returns its counts (call once it is sealed)."""
        counts = self.session_counts(session_id)
        for key in [k for k in self._channels if k[0] == session_id]:
            del self._channels[key]
        return counts

    def mask_text(self, text: str, target: Target | None = None) -> str:
        """``text`` (a command line, an audit field) with every secret masked."""
        scanner = self.scanner(target)
        return text if scanner is None else _mask_with(scanner, text)


def _mask_with(scanner: Scanner, text: str) -> str:
    return StreamMasker(scanner).mask_all(text.encode("utf-8", "surrogateescape")).decode(
        "utf-8", "surrogateescape")


_DEFAULT: list[Scanner] = []


def mask_text(text: str) -> str:
    """``text`` with every secret the built-in detectors know masked (width kept)."""
    if not _DEFAULT:
        _DEFAULT.append(Scanner())
    return _mask_with(_DEFAULT[0], text)
