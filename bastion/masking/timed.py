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
    """What the stages of one channel share: counts, and flags between the directions."""

    counts: Counter[str] = field(default_factory=Counter)
    dirty: bool = False  # the user stage released a possible secret's start on its timer


class TimedMasker(Stage):
    """Masks one direction; what may be a secret's start waits at most ``delay`` seconds."""

    def __init__(self, scanner: Scanner, shared: SharedState, delay: float,
                 call_later: CallLater = loop_call_later) -> None:
        self.shared = shared
        self.scanner = scanner
        self.delay = delay
        self.call_later = call_later
        self.maskers: dict[Any, StreamMasker] = {}
        self.timer: TimerHandle | None = None

    def _masker(self, stream: Any) -> StreamMasker:
        masker = self.maskers.get(stream)
        if masker is None:
            masker = self.maskers[stream] = StreamMasker(self.scanner, self.shared.counts)
        return masker

    def feed(self, data: bytes, stream: Any) -> None:
        out = self._masker(stream).push(data)
        if out:
            self.emit(out, stream)
        self._arm()

    def _arm(self) -> None:
        held = any(m.pending for m in self.maskers.values())
        if held and self.timer is None:
            self.timer = self.call_later(self.delay, self._release)
        elif not held and self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _release(self) -> None:
        self.timer = None
        for stream, masker in self.maskers.items():
            out = masker.flush()
            if out:
                self._released(out, stream)

    def _released(self, data: bytes, stream: Any) -> None:
        self.emit(data, stream)

    def end(self) -> None:
        self.close()
        for stream, masker in self.maskers.items():
            out = masker.end()
            if out:
                self.emit(out, stream)
        self.emit_end()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


ECHO_SIZE = 4  # bytes: the echo of one key (a UTF-8 character) is never held for the user


class UserOutputMasker(TimedMasker):
    """Terminal output before it reaches the user (and so before it is recorded).

    A chunk of at most ``ECHO_SIZE`` bytes with nothing held before it is the echo of a key: it
    is shown at once even if it could start a secret (holding it would slow every such key by
    the hold time), and the record side re-checks what follows, as after a timed release.
    """

    def feed(self, data: bytes, stream: Any) -> None:
        masker = self._masker(stream)
        if len(data) > ECHO_SIZE or masker.pending:
            super().feed(data, stream)
            return
        out = masker.push(data)
        if len(masker.pending):  # (len: mypy narrowed .pending to empty above)
            out += masker.flush()
            self.shared.dirty = True
        if out:
            self.emit(out, stream)

    def _released(self, data: bytes, stream: Any) -> None:
        # A timed release may be the start of a secret whose rest comes later: the record
        # side re-checks what follows (the user has seen it; the recording must not keep it).
        self.shared.dirty = True
        self.emit(data, stream)


class RecordOutputMasker(TimedMasker):
    """The recorded copy of the output.

    With ``always`` (the user's output is not masked) every byte is masked here. Otherwise the
    data is already masked and passes straight on, except after a timed release of the user
    stage: then this stage holds and re-checks until the possible secret is decided.
    """

    def __init__(self, scanner: Scanner, shared: SharedState, delay: float, *,
                 always: bool, call_later: CallLater = loop_call_later) -> None:
        super().__init__(scanner, shared, delay, call_later)
        self.always = always

    def feed(self, data: bytes, stream: Any) -> None:
        if not (self.always or self.shared.dirty or self.timer is not None):
            self.emit(data, stream)
            return
        self.shared.dirty = False
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
