"""Audit events: one JSON line per decision, to a file and to stderr (journald under systemd).

Schema (stable): every event has ``ts`` (RFC 3339 UTC, microseconds), ``event`` (a dotted name
such as ``login.success``, ``session.start``, ``command.verdict``), ``node`` and then the event's
own fields. Field values are JSON scalars, lists or objects; secrets never appear.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from bastion.errors import ConfigError


class AuditLog:
    """Appends audit events as JSON lines; each line is flushed when written."""

    def __init__(self, path: Path | None, node: str, stream: TextIO | None = sys.stderr) -> None:
        self._node = node
        self._stream = stream
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
            except OSError as exc:
                raise ConfigError(f"cannot open audit log {path}: {exc.strerror}") from None

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event and return it (tests and callers may inspect it)."""
        record: dict[str, Any] = {
            "ts": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace(
                "+00:00", "Z"),
            "event": event,
            "node": self._node,
        }
        record.update(fields)
        line = json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":"))
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
            if self._stream is not None:
                try:
                    self._stream.write("audit " + line + "\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    pass
        return record

    def close(self) -> None:
        """Close the audit file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every event in an audit file (for tests and ``bastion sessions``)."""
    events = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                events.append(json.loads(line))
    return events
