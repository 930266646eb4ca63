"""Small durable-file helpers shared by the spool: atomic JSON rewrite, directory fsync, times."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from bastion.fsutil import write_atomic

FILE_MODE = 0o640  # recordings and metadata: owner writes, group (auditors) reads
DIR_MODE = 0o750


def rfc3339(unix_time: float) -> str:
    """A Unix time as RFC 3339 UTC with microseconds, e.g. ``2026-01-02T03:04:05.000000Z``."""
    stamp = dt.datetime.fromtimestamp(unix_time, dt.UTC)
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Replace ``path`` with ``doc`` as JSON: write a temp file, fsync, rename, fsync the dir.

    Readers see either the old or the new document, never a torn one. Raises OSError.
    """
    data = (json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode()
    write_atomic(path, data, FILE_MODE)
