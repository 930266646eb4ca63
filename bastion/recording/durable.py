"""Small durable-file helpers shared by the spool: atomic JSON rewrite, directory fsync, times."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

FILE_MODE = 0o640  # recordings and metadata: owner writes, group (auditors) reads
DIR_MODE = 0o750


def rfc3339(unix_time: float) -> str:
    """A Unix time as RFC 3339 UTC with microseconds, e.g. ``2026-01-02T03:04:05.000000Z``."""
    stamp = dt.datetime.fromtimestamp(unix_time, dt.UTC)
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


def fsync_dir(path: Path) -> None:
    """fsync a directory so that entries created or renamed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Replace ``path`` with ``doc`` as JSON: write a temp file, fsync, rename, fsync the dir.

    Readers see either the old or the new document, never a torn one. Raises OSError.
    """
    data = (json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
