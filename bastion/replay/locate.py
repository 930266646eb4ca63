"""Find a session from what the analyst typed: a folder, an ``s3://`` address or a session id.

A session id is looked up in the local spool first, then in the S3 bucket of ``[storage]``
(under ``<prefix>/YYYY/MM/DD/``, the date being part of the id). An S3 session is verified in
place and copied into a private temporary folder for playing; the folder goes when done.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.config.model import StorageConfig
from bastion.errors import ReplayError
from bastion.replay.trust import Verdict, download_s3, verify_folder, verify_s3
from bastion.storage.client import make_client, parse_s3_uri, storage_error
from bastion.storage.reader import listing_entries, listing_key

SESSION_ID = re.compile(r"(\d{4})(\d{2})(\d{2})T\d{6}Z-[0-9a-f]{12}\Z")


@dataclass
class Located:
    """A session found and available as a local folder."""

    folder: Path
    where: str  # for people and the audit log: a path or an s3:// address
    live: bool = False  # still being recorded (no manifest yet)
    _s3: tuple[Any, str, str] | None = None  # (client, bucket, folder prefix)
    _temp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def verify(self, public_keys: list[Path]) -> Verdict:
        """Verify the session where it is stored."""
        if self._s3 is not None:
            client, bucket, prefix = self._s3
            return verify_s3(client, bucket, prefix, public_keys)
        return verify_folder(self.folder, public_keys)

    def close(self) -> None:
        """Remove a temporary download."""
        if self._temp is not None:
            self._temp.cleanup()
            self._temp = None


def _client(storage: StorageConfig | None, endpoint_url: str | None) -> Any:
    return make_client(endpoint_url or (storage.endpoint_url if storage else None),
                       storage.region if storage else None,
                       storage.max_attempts if storage else 3)


def _download(client: Any, bucket: str, prefix: str) -> Located:
    temp = tempfile.TemporaryDirectory(prefix="bastion-replay-")
    try:
        folder = download_s3(client, bucket, prefix, Path(temp.name))
    except BaseException:
        temp.cleanup()
        raise
    return Located(folder=folder, where=f"s3://{bucket}/{prefix}", _s3=(client, bucket, prefix),
                   _temp=temp)


def find_in_bucket(client: Any, bucket: str, prefix: str, session_id: str) -> str | None:
    """The key prefix of a session's folder in the bucket, or None."""
    match = SESSION_ID.match(session_id)
    if not match:
        return None
    day = "/".join(match.groups())
    search = "/".join(p for p in (prefix.strip("/"), day) if p) + "/"
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=search):
            where = f"s3://{bucket}/{search}"
            for item in listing_entries(page, "Contents", where):
                key = listing_key(item, where)
                folder, _, name = key.rpartition("/")
                if name == "manifest.json" and folder.rpartition("/")[2] == session_id:
                    return folder
    except Exception as exc:
        if type(exc).__module__.startswith("botocore"):
            raise storage_error(exc, f"s3://{bucket}/{search}") from None
        raise
    return None


def locate(spec: str, *, spool_dir: Path | None, storage: StorageConfig | None,
           endpoint_url: str | None = None) -> Located:
    """Resolve SESSION (path, s3:// address or id) to a local folder."""
    if spec.startswith("s3://"):
        bucket, prefix = parse_s3_uri(spec)
        if not prefix:
            raise ReplayError(f"{spec}: give the address of one session folder")
        return _download(_client(storage, endpoint_url), bucket, prefix)
    path = Path(spec)
    if "/" in spec or spec.startswith("."):
        if not path.is_dir():
            raise ReplayError(f"{spec}: no such session folder")
        return _local(path)
    if not SESSION_ID.match(spec):
        if path.is_dir():
            return _local(path)
        raise ReplayError(f"{spec[:80]!r} is not a session id, a folder or an s3:// address")
    if spool_dir is not None and (spool_dir / spec).is_dir():
        return _local(spool_dir / spec)
    if storage is not None:
        client = _client(storage, endpoint_url)
        folder = find_in_bucket(client, storage.bucket, storage.prefix, spec)
        if folder is not None:
            return _download(client, storage.bucket, folder)
    where = f"{spool_dir}" + (f" or s3://{storage.bucket}/{storage.prefix}" if storage else "")
    raise ReplayError(f"session {spec} not found in {where}")


def _local(path: Path) -> Located:
    live = not (path / "manifest.json").exists() and _state(path) == "active"
    return Located(folder=path, where=str(path), live=live)


def _state(path: Path) -> str | None:
    try:
        doc = json.loads((path / "session.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    state = doc.get("state") if isinstance(doc, dict) else None
    return state if isinstance(state, str) else None
