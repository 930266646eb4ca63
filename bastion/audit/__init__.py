"""Audit events: one JSON line per decision, to a file and to stderr (journald under systemd).

Schema (stable): every event has ``ts`` (RFC 3339 UTC, microseconds), ``event`` (a dotted name
such as ``login.success``, ``session.start``, ``command.verdict``), ``node`` and then the event's
own fields (``worker``, the number of the worker process that wrote it, comes right after
``node`` in events of ``bastion serve``'s workers). Field values are JSON scalars, lists or
objects; secrets never appear.
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
    """Appends audit events as JSON lines, each written whole with one ``write``.

    Writing an event never raises: a full disk must not stop a session from being finalized.
    The stderr (journal) copy is written first; a failure to write the file is kept in
    ``error`` (cleared by the next successful write) so that the server refuses new logins and
    commands exit non-zero while the audit trail is broken.
    """

    def __init__(self, path: Path | None, node: str, stream: TextIO | None = sys.stderr,
                 worker: int | None = None) -> None:
        self._node = node
        self._worker = worker  # the worker process of `bastion serve --workers` writing
        self._stream = stream
        self._lock = threading.Lock()
        self._path = path
        self._fd: int | None = None
        self._torn = False  # a failed write may have left part of a line: start afresh
        self.error: str | None = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                   0o640)
            except OSError as exc:
                raise ConfigError(f"cannot open audit log {path}: {exc.strerror}") from None

    @property
    def healthy(self) -> bool:
        """Whether the last write to the audit file succeeded."""
        return self.error is None

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event and return it (tests and callers may inspect it); never raises."""
        record: dict[str, Any] = {
            "ts": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace(
                "+00:00", "Z"),
            "event": event,
            "node": self._node,
        }
        if self._worker is not None:
            record["worker"] = self._worker
        record.update(fields)
        line = json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":"))
        with self._lock:
            if self._stream is not None:
                try:
                    self._stream.write("audit " + line + "\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    pass
            if self._fd is not None:
                self._write_file(line)
        return record

    def _write_file(self, line: str) -> None:
        assert self._fd is not None
        data = (("\n" if self._torn else "") + line + "\n").encode()
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError as exc:
            self._torn = True
            first = self.error is None
            self.error = f"cannot write audit log {self._path}: {exc.strerror or exc}"
            if first and self._stream is not None:
                try:
                    self._stream.write(f"bastion: {self.error}\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    pass
            return
        self._torn = False
        self.error = None

    def close(self) -> None:
        """Close the audit file."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every event in an audit file (for tests and ``bastion sessions``)."""
    events = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                events.append(json.loads(line))
    return events
