"""What a transfer channel (sftp, legacy scp) did to files: audit events, ops log, summary.

Each finished file operation is one entry ``{"t", "op", "path", "bytes_read", "bytes_written",
"status", ...}``: written at once to the channel's ops log (``<n>-sftp.ops.jsonl`` by the recording
layout's owner; ``JsonlOpsWriter`` is a ready sink) and audited as ``<protocol>.<op>``. A bounded
summary (counts and the first entries) is kept for the session's manifest. Names are made safe
(``shown``) before they get here; JSON encoding does the rest.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.errors import RecordingError
from bastion.relay.pipeline import StageContext

OpsSink = Callable[[dict[str, Any]], None]  # takes one entry; raises RecordingError on failure

SUMMARY_ENTRIES = 1000  # entries kept in memory for the manifest; the ops log has them all


class TransferLog:
    """Audits and logs a channel's file operations; one per transfer channel."""

    def __init__(self, ctx: StageContext, protocol: str, sink: OpsSink | None = None) -> None:
        self._ctx = ctx
        self._protocol = protocol
        self._sink = sink
        self._started = time.monotonic()
        self.entries: list[dict[str, Any]] = []
        self.files = 0
        self.denied = 0
        self.bytes_read = 0
        self.bytes_written = 0

    def record(self, op: str, path: str | None, status: str, *, bytes_read: int = 0,
               bytes_written: int = 0, event: str | None = None,
               **extra: Any) -> dict[str, Any]:
        """One finished operation: ops log entry, audit event, summary counters.

        The audit event is ``<protocol>.<event or op>``, or ``<protocol>.denied`` for a refusal.
        """
        entry: dict[str, Any] = {"t": round(time.monotonic() - self._started, 6), "op": op,
                                 "path": path, "bytes_read": bytes_read,
                                 "bytes_written": bytes_written, "status": status}
        entry.update({k: v for k, v in extra.items() if v is not None})
        if status == "denied":
            self.denied += 1
        if op in ("read", "write", "read-write"):
            self.files += 1
        self.bytes_read += bytes_read
        self.bytes_written += bytes_written
        if len(self.entries) < SUMMARY_ENTRIES:
            self.entries.append(entry)
        if self._sink is not None:
            self._sink(entry)
        name = "denied" if status == "denied" else (event or op)
        self._ctx.audit(f"{self._protocol}.{name}",
                        **{k: v for k, v in entry.items() if k != "t"})
        return entry

    def audit(self, op: str, **fields: Any) -> None:
        """An audit event that is not a finished operation (a file opened)."""
        self._ctx.audit(f"{self._protocol}.{op}", **fields)

    def summary(self) -> dict[str, Any]:
        """The channel's transfers for the session's manifest (bounded)."""
        return {"protocol": self._protocol, "files": self.files, "denied": self.denied,
                "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                "entries": list(self.entries),
                "truncated": len(self.entries) >= SUMMARY_ENTRIES}


class JsonlOpsWriter:
    """Appends entries to an ops log file as JSON lines (one write per entry; fsync at close)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise RecordingError(f"cannot create {path.name}: {exc.strerror}") from None
        self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def __call__(self, entry: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n")
        except (OSError, ValueError) as exc:
            raise RecordingError(f"cannot write {self.path.name}: {exc}") from None

    def close(self) -> None:
        """Flush, fsync and close the file."""
        if self._file.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise RecordingError(f"cannot write {self.path.name}: {exc.strerror}") from None
        finally:
            self._file.close()
