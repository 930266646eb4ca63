"""Pipeline stages around a ``StreamMasker``: hold-back released by the next chunk or a timer."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bastion.masking.engine import Scanner
from bastion.masking.seam import Stage
from bastion.masking.stream import StreamMasker


class TimerHandle(Protocol):
    """What ``loop.call_later`` returns (asyncio.TimerHandle); fakes in tests."""

    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], TimerHandle]


def loop_call_later(delay: float, callback: Callable[[], None]) -> TimerHandle:
    """``call_later`` on the running event loop (stages run inside asyncssh's callbacks)."""
    return asyncio.get_running_loop().call_later(delay, callback)


@dataclass
class SharedState:
    """What the stages of one channel share: counts, and the raw bytes behind the user's copy."""

    counts: Counter[str] = field(default_factory=Counter)
    # While the user stage hands a masked chunk on: that chunk and the raw bytes it was made
    # from. The record stage (next in line) masks the raw bytes itself (RecordOutputMasker).
    raw: HandedOn | None = None


@dataclass
class HandedOn:
    """A chunk the user stage hands on, and where it came from."""

    out: bytes  # as masked for the user
    raw: bytes  # the raw bytes it was made from
    # For a plain push: the user stage's masker's state before it, and the masker after it
    # (the record stage in that same state takes its result instead of repeating the work).
    state: tuple[object, ...] | None = None
    masker: StreamMasker | None = None


class TimedMasker(Stage):
    """Masks one direction; what may be a secret's start waits at most ``delay`` seconds."""

    def __init__(self, scanner: Scanner, shared: SharedState, delay: float,
                 call_later: CallLater = loop_call_later) -> None:
        self.shared = shared
        self.counts = shared.counts
        self.scanner = scanner
        self.delay = delay
        self.call_later = call_later
        self.maskers: dict[Any, StreamMasker] = {}
        self.timer: TimerHandle | None = None

    def _masker(self, stream: Any) -> StreamMasker:
        masker = self.maskers.get(stream)
        if masker is None:
            masker = self.maskers[stream] = StreamMasker(self.scanner, self.counts)
        return masker

    def feed(self, data: bytes, stream: Any) -> None:
        masker = self._masker(stream)
        out = masker.push(data)
        if out:
            self._pass(out, masker.released, stream)
        self._arm()

    def _pass(self, out: bytes, raw: bytes, stream: Any) -> None:
        """Hand on ``out``, masked from ``raw``."""
        self.emit(out, stream)

    def _arm(self) -> None:
        # A cut escape sequence kept through a timed release waits for the next chunk, not
        # for another timer (it shows nothing).
        held = any(m.pending and not m.escape_held for m in self.maskers.values())
        if held and self.timer is None:
            self.timer = self.call_later(self.delay, self._release)
        elif not held and self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _release(self) -> None:
        self.timer = None
        for stream, masker in self.maskers.items():
            out = masker.flush(keep_escape=True)
            if out:
                self._pass(out, masker.released, stream)

    def end(self) -> None:
        self.close()
        for stream, masker in self.maskers.items():
            out = masker.end()
            if out:
                self._pass(out, masker.released, stream)
        self.emit_end()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


ECHO_SIZE = 4  # bytes: the echo of one key (a UTF-8 character) is never held for the user


class UserOutputMasker(TimedMasker):
    """Terminal output before it reaches the user.

    A chunk of at most ``ECHO_SIZE`` bytes with nothing held before it is the echo of a key: it
    is shown at once even if it could start a secret (holding it would slow every such key by
    the hold time). What this stage lets through early is the user's; the recording is masked
    from the raw bytes by ``RecordOutputMasker`` with its longer hold, so this stage's counts
    are its own (the record stage's are the channel's).
    """

    def __init__(self, scanner: Scanner, shared: SharedState, delay: float,
                 call_later: CallLater = loop_call_later) -> None:
        super().__init__(scanner, shared, delay, call_later)
        self.counts = Counter()

    def feed(self, data: bytes, stream: Any) -> None:
        masker = self._masker(stream)
        state = masker.state()
        out = masker.push(data)
        if len(data) > ECHO_SIZE or state[0] or not masker.pending:
            if out:
                self._hand_on(HandedOn(out, masker.released, state, masker), stream)
            self._arm()
            return
        raw = masker.released
        out += masker.flush(keep_escape=True)
        if out:
            self._hand_on(HandedOn(out, raw + masker.released), stream)

    def _pass(self, out: bytes, raw: bytes, stream: Any) -> None:
        self._hand_on(HandedOn(out, raw), stream)

    def _hand_on(self, handed: HandedOn, stream: Any) -> None:
        self.shared.raw = handed
        try:
            self.emit(handed.out, stream)
        finally:
            self.shared.raw = None


class RecordOutputMasker(TimedMasker):
    """The recorded copy of the output, masked from the raw bytes.

    Behind a ``UserOutputMasker`` it is handed that stage's masked chunks, and masks the raw
    bytes each was made from instead (``SharedState.raw``). It holds a possible secret's start
    for ``record_hold`` (2 s), where the user's copy waits 1 ms: a secret whose halves arrive
    1 ms to 2 s apart is masked whole in the recording, though the user saw its start. Masking
    the user's copy again could not do that: the start was already stars, or had gone past
    this stage's scanner, which then judged the rest without it.
    """

    def feed(self, data: bytes, stream: Any) -> None:
        handed = self.shared.raw
        if handed is not None and handed.out is data:
            source = handed.masker
            if source is not None:
                masker = self._masker(stream)
                if not masker.pending and masker.state() == handed.state:
                    # In step with the user's masker, neither holding anything: the same chunk
                    # from the same state gives the same result. Scanning every chunk twice
                    # more than doubled masking's cost (17 -> 41 us per terminal line).
                    masker.adopt(source)
                    self.emit(data, stream)
                    self._arm()
                    return
            data = handed.raw
        super().feed(data, stream)


SCAN_PIECE = 256 * 1024


class ScanOnly(Stage):
    """Counts what the detectors find and passes every byte on unchanged (exec evidence)."""

    def __init__(self, scanner: Scanner, shared: SharedState) -> None:
        self.shared = shared
        self.scanner = scanner
        self.maskers: dict[Any, StreamMasker] = {}

    def feed(self, data: bytes, stream: Any) -> None:
        masker = self.maskers.get(stream)
        if masker is None:
            masker = self.maskers[stream] = StreamMasker(self.scanner, self.shared.counts)
            masker.count_only = True
        # No masked copy is made: only the counts are kept. A large chunk is scanned in pieces
        # that stay in the CPU cache: stripping binary output took 5.7 ms/MB in 2 MB chunks,
        # 3.4 in 256 KiB pieces (the stream holds back across pieces as across chunks).
        for start in range(0, len(data), SCAN_PIECE):
            masker.push(data[start:start + SCAN_PIECE] if len(data) > SCAN_PIECE else data)
        self.emit(data, stream)

    def end(self) -> None:
        for masker in self.maskers.values():
            masker.end()
        self.emit_end()
