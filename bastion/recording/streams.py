"""Byte-exact streams for channels without a pty (exec, sftp): the writer on the relay's hot path.

A channel's recording is four files, named by ``layout``:

- ``<n>-<kind>.stdin``, ``.stdout``, ``.stderr``: exactly the bytes that crossed, in order,
  nothing added (no header, no framing), so each hashes to what the user sent or received;
- ``<n>-<kind>.timing``: one line per chunk in util-linux scriptreplay's advanced (multi-stream)
  timing format, ``I|O|E <delay> <nbytes>`` (``E``, stderr, is ours; scriptreplay skips it),
  where ``delay`` is the seconds since the previous line with 6 decimals. Delays are differences
  of whole microseconds since the channel started, so summing them gives every chunk's time
  without drift.

Markers and the exit status of a stream channel go into its session.json entry (see
``SessionRecording``): the streams stay pure bytes and the timing file stays scriptreplay's.

Per chunk the writer does a bytearray append (or, for a chunk of ``BUFFER_LIMIT`` or more with
nothing buffered, one ``os.write``) and formats one short timing line; no decoding, no hashing.
The sealer hashes the closed files instead, in a worker thread: measured on the 2-core dev
machine, SHA-256 of 200 MB costs 0.14 s inline (on the event loop, inside the relay's time)
against 0.19 s re-read at seal time (off the loop, page cache), and hashing the files on disk
is what proves the manifest matches them. A stream's buffer goes to the OS when it
holds ``BUFFER_LIMIT`` bytes; every buffer when the oldest buffered byte is ``FLUSH_INTERVAL``
old (``flush_if_older``) or at close. Streams are always written before the timing lines that
count them, so after a crash the timing never claims bytes that are not on disk. ``close`` /
``close_deferred`` fsync. Any failure raises RecordingError and the writer refuses everything after
it: the caller ends the channel (no unrecorded session).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from bastion.errors import RecordingError
from bastion.recording.asciicast import BUFFER_LIMIT, FLUSH_INTERVAL, Clock, exit_label
from bastion.recording.durable import FILE_MODE
from bastion.recording.layout import STREAM_PARTS, ChannelKind, Part, recording_name

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class _Stream:
    """One stream file and its buffer."""

    __slots__ = ("buf", "fd", "path", "size")

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self.buf = bytearray()
        self.size = 0  # bytes received (buffered or written)


class StreamWriter:
    """Appends one channel's stdin, stdout and stderr byte-exact, with a timing file.

    Not thread-safe: use from the event loop (``close_deferred`` hands only the fsyncs away).
    """

    def __init__(self, directory: Path, number: int, kind: ChannelKind, *,
                 clock: Clock = time.monotonic) -> None:
        """Create the channel's four files (never existing ones, never through a symlink);
        RecordingError if that fails (files created so far are removed)."""
        self.kind = kind
        self.number = number
        self.error: RecordingError | None = None
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.markers: list[tuple[float, str]] = []  # (seconds since start, label)
        self.closed_at: float | None = None
        self.on_change: Callable[[], None] | None = None  # as CastWriter.on_change
        self._clock = clock
        self._start = clock()
        self._last_us = 0  # microseconds since start of the last timing line
        self._dirty_since = 0.0
        self._dirty = False
        self._closed = False
        streams: list[_Stream] = []
        try:
            for part in (*STREAM_PARTS, Part.TIMING):
                path = directory / recording_name(number, kind, part)
                streams.append(_Stream(os.open(path, _OPEN_FLAGS, FILE_MODE), path))
        except OSError as exc:
            for made in streams:
                os.close(made.fd)
                made.path.unlink(missing_ok=True)
            raise RecordingError(f"cannot record session: cannot create {path}: "
                                 f"{_reason(exc)}") from None
        self._stdin, self._stdout, self._stderr, self._timing = streams
        self.path = self._stdout.path  # the file a person looks at first

    # -- what the relay calls ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once close() ran."""
        return self._closed

    @property
    def started(self) -> float:
        """Clock time the channel's recording started (timing 0)."""
        return self._start

    @property
    def files(self) -> list[Path]:
        """The channel's files: stdin, stdout, stderr, timing."""
        return [s.path for s in (self._stdin, self._stdout, self._stderr, self._timing)]

    @property
    def input_bytes(self) -> int:
        """Bytes recorded on stdin."""
        return self._stdin.size

    @property
    def output_bytes(self) -> int:
        """Bytes recorded on stdout and stderr."""
        return self._stdout.size + self._stderr.size

    @property
    def bytes_written(self) -> int:
        """Bytes recorded in all four files (buffered ones included)."""
        return (self._stdin.size + self._stdout.size + self._stderr.size
                + self._timing.size)

    def input(self, data: bytes) -> None:
        """Record bytes the user sent (the command's stdin)."""
        self._chunk(self._stdin, b"I", data)

    def output(self, data: bytes) -> None:
        """Record bytes of the command's stdout."""
        self._chunk(self._stdout, b"O", data)

    def stderr(self, data: bytes) -> None:
        """Record bytes of the command's stderr."""
        self._chunk(self._stderr, b"E", data)

    def resize(self, width: int, height: int) -> None:
        """Nothing to record: a channel without a pty has no window."""
        if self._closed or self.error is not None:
            raise self._refusal()

    def marker(self, label: str) -> None:
        """Keep a marker for the channel's session.json entry."""
        if self._closed or self.error is not None:
            raise self._refusal()
        self.markers.append((round(self._clock() - self._start, 6), str(label)))
        if self.on_change is not None:
            self.on_change()

    def exited(self, status: int | None, signal: str | None) -> None:
        """Keep how the command ended (session.json entry, and an ``exit: ...`` marker)."""
        self.marker(exit_label(status, signal))
        self.exit_status, self.exit_signal = status, signal

    # -- the hot path -----------------------------------------------------------------------

    def _chunk(self, stream: _Stream, code: bytes, data: bytes) -> None:
        if self._closed or self.error is not None:
            raise self._refusal()
        size = len(data)
        if not size:
            return
        now = self._clock()
        at_us = int((now - self._start) * 1_000_000)
        delay = at_us - self._last_us
        if delay < 0:  # a clock that went back: keep the times in order
            delay, at_us = 0, self._last_us
        self._last_us = at_us
        if not self._dirty:
            self._dirty, self._dirty_since = True, now
        stream.size += size
        buf = stream.buf
        if size >= BUFFER_LIMIT and not buf:
            self._write(stream, data)  # a big chunk goes to the OS as it is: no copy
        else:
            buf += data
            if len(buf) >= BUFFER_LIMIT:
                self._write(stream, buf)
                buf.clear()
        line = b"%s %d.%06d %d\n" % (code, delay // 1_000_000, delay % 1_000_000, size)
        timing = self._timing
        timing.size += len(line)
        timing.buf += line
        if len(timing.buf) >= BUFFER_LIMIT or now - self._dirty_since >= FLUSH_INTERVAL:
            self.flush()

    def _write(self, stream: _Stream, data: bytes | bytearray) -> None:
        try:
            view = memoryview(data)
            while view:
                written = os.write(stream.fd, view)
                view = view[written:]
        except OSError as exc:
            raise self._fail(stream.path, exc) from None

    # -- flushing and closing ---------------------------------------------------------------

    def flush(self) -> None:
        """Hand every buffer to the OS, the streams before the timing that counts them."""
        for stream in (self._stdin, self._stdout, self._stderr, self._timing):
            if stream.buf:
                self._write(stream, stream.buf)
                stream.buf.clear()
        self._dirty = False

    def flush_if_older(self, now: float, max_age: float) -> None:
        """Flush if the oldest buffered byte is at least ``max_age`` seconds old."""
        if self._dirty and not self._closed and self.error is None \
                and now - self._dirty_since >= max_age:
            self.flush()

    def close(self) -> None:
        """Flush, fsync and close every file; idempotent (RecordingError as CastWriter.close)."""
        self.close_deferred(lambda job: job())

    def close_deferred(self, submit: Callable[[Callable[[], None]], object]) -> None:
        """Flush now; hand the fsyncs and closes to ``submit`` (the spool's ordered worker);
        idempotent. A failure known when ``submit`` returns is raised; a later one is kept in
        ``error``."""
        if self._closed:
            return
        self._closed = True
        self.closed_at = self._clock()
        already_failed = self.error is not None
        if not already_failed:
            with contextlib.suppress(RecordingError):  # kept in self.error
                self.flush()
        if self.on_change is not None:
            self.on_change()
        streams = (self._stdin, self._stdout, self._stderr, self._timing)

        def sync_and_close() -> None:
            for stream in streams:  # the timing last, as it is written
                try:
                    if self.error is None:
                        os.fsync(stream.fd)
                except OSError as exc:
                    self._fail(stream.path, exc)
                finally:
                    try:
                        os.close(stream.fd)
                    except OSError as exc:
                        if self.error is None:
                            self._fail(stream.path, exc)

        submit(sync_and_close)
        if self.error is not None and not already_failed:
            raise self.error

    def _fail(self, path: Path, exc: OSError) -> RecordingError:
        self.error = RecordingError(f"recording stopped: cannot write {path}: {_reason(exc)}")
        for stream in (self._stdin, self._stdout, self._stderr, self._timing):
            stream.buf.clear()
        return self.error

    def _refusal(self) -> RecordingError:
        if self.error is not None:
            return self.error
        return RecordingError(f"recording stopped: {self.path} is closed")
