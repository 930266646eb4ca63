"""asciicast v2 files: the writer on the relay's hot path and the repair of interrupted files.

A file is one JSON header line, then one JSON array per event: ``[t, "o", text]`` for output,
``[t, "i", text]`` for user input (keystrokes, as asciinema records stdin), ``[t, "r", "WxH"]``
for a window change, ``[t, "m", label]`` for a marker (``exit: 0``, ``exit: signal TERM``...);
``t`` is seconds since the channel started (monotonic clock, 6 decimals). Terminal escapes are
kept as they are: sanitizing belongs to replay. Per chunk the writer does only C-level work
(incremental UTF-8 decode, one decoder per direction, JSON string escape, a bytearray append);
the buffer goes to the OS once it holds
``BUFFER_LIMIT`` bytes or its oldest byte is ``FLUSH_INTERVAL`` old, and idle writers are flushed by
the spool's periodic ``flush_due``. ``close`` fsyncs. Any failure raises RecordingError and the
writer refuses everything after it: the caller ends the session (no unrecorded session).
"""

from __future__ import annotations

import codecs
import enum
import json
import os
import time
from collections.abc import Callable
from json.encoder import encode_basestring, encode_basestring_ascii  # C-accelerated escapes
from pathlib import Path
from typing import Any

from bastion.errors import RecordingError
from bastion.recording.durable import FILE_MODE
from bastion.recording.layout import is_event_time

FLUSH_INTERVAL = 1.0  # seconds: no recorded output stays in our buffer longer than this
BUFFER_LIMIT = 64 * 1024  # bytes: write to the OS at least this often under heavy output
INTERRUPTED = "interrupted"  # marker label appended by crash recovery
_INTERRUPTED_SUFFIX = f', "m", "{INTERRUPTED}"]'.encode()

Clock = Callable[[], float]
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _json_str(text: str) -> str:
    # Same JSON either way; the ASCII-only escaper is faster, the other keeps non-ASCII compact.
    return encode_basestring_ascii(text) if text.isascii() else encode_basestring(text)


def exit_label(status: int | None, signal: str | None) -> str:
    """The marker label of a command's end: ``exit: 0``, ``exit: signal TERM``, or
    ``exit: unknown``."""
    if signal:
        return f"exit: signal {signal}"
    if status is not None:
        return f"exit: {int(status)}"
    return "exit: unknown"


def build_header(*, width: int, height: int, timestamp: int, term: str | None,
                 title: str, command: str | None, bastion: dict[str, Any]) -> dict[str, Any]:
    """An asciicast v2 header; ``bastion`` holds our own fields (session_id, user, target...)."""
    header: dict[str, Any] = {"version": 2, "width": width, "height": height,
                              "timestamp": timestamp, "title": title}
    if term:
        header["term"] = {"type": term}
        header["env"] = {"TERM": term}
    if command is not None:
        header["command"] = command
    header["bastion"] = bastion
    return header


class CastWriter:
    """Appends events to one asciicast v2 file. Not thread-safe: use from the event loop."""

    def __init__(self, fd: int, path: Path, header: dict[str, Any], *,
                 clock: Clock = time.monotonic) -> None:
        """Take ownership of ``fd`` and write ``header`` to the OS at once (RecordingError)."""
        self.path = path
        self.bytes_written = 0  # bytes of asciicast produced, header included (= final file size)
        self.output_bytes = 0  # raw output bytes received by output() and stderr()
        self.input_bytes = 0  # raw input bytes received by input()
        self.number = 0  # the channel's number in its session (set by SessionRecording)
        self.error: RecordingError | None = None  # the failure that stopped this writer, if any
        self.exit_status: int | None = None  # from exited()
        self.exit_signal: str | None = None
        self.closed_at: float | None = None  # clock time close_deferred ran
        # Called (on the caller's thread) when exited() or close_deferred() changes what
        # session.json says about this channel.
        self.on_change: Callable[[], None] | None = None
        self._fd = fd
        self._clock = clock
        self._decoder = _Utf8Decoder(errors="replace")
        self._input_decoder = _Utf8Decoder(errors="replace")
        self._buf = bytearray()
        self._dirty_since = 0.0  # clock time of the oldest byte in _buf
        self._closed = False
        self._start = clock()
        line = json.dumps(header, ensure_ascii=False) + "\n"
        try:
            self._append(line.encode(), self._start)
            self.flush()
        except RecordingError:
            self._closed = True
            os.close(fd)
            raise

    @property
    def closed(self) -> bool:
        """True once close() ran."""
        return self._closed

    @property
    def started(self) -> float:
        """Clock time the channel's recording started (event time 0)."""
        return self._start

    def output(self, data: bytes) -> None:
        """Record terminal output; a UTF-8 character split across calls is joined, bad bytes
        become U+FFFD."""
        if self._closed or self.error is not None:
            raise self._refusal()
        self.output_bytes += len(data)
        text = self._decoder.decode(data)
        if text:
            now = self._clock()
            # Built as bytes in the buffer: a large chunk is escaped, encoded and copied once.
            self._append_event(b'[%.6f, "o", ' % (now - self._start), _json_str(text).encode(),
                               now)

    stderr = output  # a pty has one output stream: anything sent as stderr is terminal output

    def input(self, data: bytes) -> None:
        """Record user input (keystrokes) as ``"i"`` events, decoded like output."""
        if self._closed or self.error is not None:
            raise self._refusal()
        self.input_bytes += len(data)
        text = self._input_decoder.decode(data)
        if text:
            now = self._clock()
            self._append_event(b'[%.6f, "i", ' % (now - self._start), _json_str(text).encode(),
                               now)

    def exited(self, status: int | None, signal: str | None) -> None:
        """Record how the channel's command ended: an ``exit: N`` or ``exit: signal NAME``
        marker, kept for session.json's channel entry too."""
        label = exit_label(status, signal)
        self.marker(label)
        self.exit_status, self.exit_signal = status, signal
        if self.on_change is not None:
            self.on_change()

    def resize(self, width: int, height: int) -> None:
        """Record a window change."""
        self._event("r", f"{int(width)}x{int(height)}")

    def marker(self, label: str) -> None:
        """Record a marker (a notable event: command, verdict, approval...)."""
        self._event("m", label)

    def flush(self) -> None:
        """Hand buffered events to the OS (not fsync)."""
        try:
            while self._buf:
                written = os.write(self._fd, self._buf)
                del self._buf[:written]
        except OSError as exc:
            raise self._fail(exc) from None

    def flush_if_older(self, now: float, max_age: float) -> None:
        """Flush if the oldest buffered byte is at least ``max_age`` seconds old."""
        if self._buf and not self._closed and self.error is None \
                and now - self._dirty_since >= max_age:
            self.flush()

    def close(self) -> None:
        """Write the decoder's remainder, flush, fsync and close; idempotent.

        Raises RecordingError if this final write fails (not again for an earlier failure).
        """
        self.close_deferred(lambda job: job())

    def close_deferred(self, submit: Callable[[Callable[[], None]], object]) -> None:
        """Flush now; hand the fsync and close of the file to ``submit``; idempotent.

        The server submits to the spool's one ordered worker thread, so the event loop never
        waits for the disk and the session's later writes still come after this fsync. Raises
        RecordingError for a failure known by the time ``submit`` returns; a later fsync
        failure is kept in ``error`` (which ``SessionRecording.finish`` reports).
        """
        if self._closed:
            return
        self._closed = True
        self.closed_at = self._clock()
        already_failed = self.error is not None
        if not already_failed:
            try:
                for code, decoder in (("i", self._input_decoder), ("o", self._decoder)):
                    tail = decoder.decode(b"", final=True)
                    if tail:
                        now = self._clock()
                        line = f'[{now - self._start:.6f}, "{code}", {_json_str(tail)}]\n'
                        self._append(line.encode(), now)
                self.flush()
            except RecordingError:
                pass  # kept in self.error
        if self.on_change is not None:
            self.on_change()
        fd = self._fd

        def sync_and_close() -> None:
            try:
                if self.error is None:
                    os.fsync(fd)
            except OSError as exc:
                self._fail(exc)
            finally:
                try:
                    os.close(fd)
                except OSError as exc:
                    if self.error is None:
                        self._fail(exc)

        submit(sync_and_close)
        if self.error is not None and not already_failed:
            raise self.error

    def _event(self, code: str, data: str) -> None:
        if self._closed or self.error is not None:
            raise self._refusal()
        now = self._clock()
        line = f'[{now - self._start:.6f}, "{code}", {_json_str(data)}]\n'
        self._append(line.encode(), now)

    def _append(self, line: bytes, now: float) -> None:
        if not self._buf:
            self._dirty_since = now
        self._buf += line
        self.bytes_written += len(line)
        if len(self._buf) >= BUFFER_LIMIT or now - self._dirty_since >= FLUSH_INTERVAL:
            self.flush()

    def _append_event(self, head: bytes, body: bytes, now: float) -> None:
        buf = self._buf
        if not buf:
            self._dirty_since = now
        buf += head
        buf += body
        buf += b"]\n"
        self.bytes_written += len(head) + len(body) + 2
        if len(buf) >= BUFFER_LIMIT or now - self._dirty_since >= FLUSH_INTERVAL:
            self.flush()

    def _fail(self, exc: OSError) -> RecordingError:
        self.error = RecordingError(f"recording stopped: cannot write {self.path}: {_reason(exc)}")
        self._buf.clear()
        return self.error

    def _refusal(self) -> RecordingError:
        if self.error is not None:
            return self.error
        return RecordingError(f"recording stopped: {self.path} is closed")


def create_cast(path: Path, header: dict[str, Any], *,
                clock: Clock = time.monotonic) -> CastWriter:
    """Create a new .cast file (never an existing one, never through a symlink) with its header."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     FILE_MODE)
    except OSError as exc:
        raise RecordingError(
            f"cannot record session: cannot create {path}: {_reason(exc)}") from None
    try:
        return CastWriter(fd, path, header, clock=clock)
    except RecordingError:
        path.unlink(missing_ok=True)  # a file without its header is no recording
        raise


class _Line(enum.Enum):
    """A line that is no valid record: torn (or garbage), or a whole event whose time is none."""

    TORN = "torn"  # not JSON, or not an event: what a crash can leave at the end
    BAD_TIME = "bad time"  # a whole event with NaN, infinite, negative or huge time: never torn


def _parse_line(line: bytes, at_start: bool) -> float | _Line:
    """The event time of a complete, valid line (0.0 for the header), as strict as replay's
    reader (a finite number >= 0); else why it is not one."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, deep nesting
        return _Line.TORN
    if at_start:
        return 0.0 if isinstance(value, dict) and value.get("version") == 2 else _Line.TORN
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[1], str)
            and isinstance(value[0], int | float) and not isinstance(value[0], bool)):
        return _Line.TORN
    # NaN, infinite, negative, or an integer of hundreds of digits: no time a writer makes.
    return float(value[0]) if is_event_time(value[0]) else _Line.BAD_TIME


def _scan(fd: int) -> tuple[int, bool, float, bytes, list[int]] | None:
    """Read every line: (bytes up to the end of the last valid line, whether that line lacks its
    newline, its event time, the line, the numbers of invalid lines before it), or None when no
    line is valid. Invalid lines after the last valid one are the torn tail a crash leaves."""
    found: tuple[int, bool, float, bytes] | None = None
    bad: list[int] = []
    pending: list[int] = []  # invalid lines since the last valid one
    offset = 0
    with os.fdopen(os.dup(fd), "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            offset += len(raw)
            complete = raw.endswith(b"\n")
            line = raw[:-1] if complete else raw
            when = _parse_line(line, number == 1)
            if when is _Line.TORN or (when is _Line.BAD_TIME and found is None):
                pending.append(number)
                continue
            if when is _Line.BAD_TIME:
                # A whole record no crash can make: kept as found, and no time to go on from
                # (the marker takes the last valid one, so the file stays valid JSON lines).
                assert found is not None
                bad += [*pending, number]
                pending = []
                found = (offset, not complete, found[2], line)
                continue
            bad += pending
            pending = []
            found = (offset, not complete, when, line)
    if found is None:
        return None
    return (*found, bad)


def close_interrupted(path: Path, fallback_header: dict[str, Any]) -> list[int]:
    """Close a .cast file a crash left open: drop a torn tail, append an "interrupted" marker
    (at the last event's time), fsync. Every line is checked: invalid lines before the last valid
    one are kept as found (they are evidence) and their numbers (1 = the header) returned, so the
    caller can record the file as damaged. A file already ending with the marker (recovery itself
    interrupted) is not changed. OSError."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        found = _scan(fd)
        bad: list[int]
        if found is None:  # not even a header reached the disk
            keep, add_newline, when, bad = 0, False, 0.0, []
            tail = json.dumps(fallback_header, ensure_ascii=False) + "\n"
        else:
            keep, add_newline, when, line, bad = found
            if keep == size and not add_newline and line.endswith(_INTERRUPTED_SUFFIX):
                return bad
            tail = "\n" if add_newline else ""
        tail += f'[{when:.6f}, "m", "{INTERRUPTED}"]\n'
        os.ftruncate(fd, keep)
        data = tail.encode()
        offset = keep
        while data:
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written
        os.fsync(fd)
        return bad
    finally:
        os.close(fd)
