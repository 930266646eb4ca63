"""The catalog of recorded sessions: the spool and the S3 bucket, with a local index.

``bastion sessions list/search`` read every session's metadata (session.json in the spool, the
manifest in S3) and, for searches, its content: commands (from the metadata's ``commands``,
else the ``command: `` markers), output as plain text and typed input, each piece with its
time. What was read is kept in ``<state_dir>/session-index.sqlite3`` keyed by where it was read
and a stamp (file sizes and times in the spool, the manifest's ETag in S3, which Object Lock
keeps from changing), so a second search reads only what is new or changed. The index is a
cache: deleting it loses nothing.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.errors import BastionError, ReplayError
from bastion.recording.layout import MANIFEST_FILE, SESSION_FILE
from bastion.replay.sanitize import Mode, Sanitizer, visible_keys
from bastion.replay.session import (
    SessionFolder,
    load_json_object,
    open_session_folder,
)
from bastion.replay.transcript import channel_events
from bastion.replay.trust import download_s3
from bastion.storage.client import storage_error

INDEX_NAME = "session-index.sqlite3"
INDEX_VERSION = 1
SESSION_DIR = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{12}\Z")


@dataclass(frozen=True)
class Summary:
    """What ``sessions list`` shows of one session."""

    session_id: str
    source: str  # spool or s3
    where: str
    user: str
    target: str
    login: str
    start: str
    end: str
    state: str
    end_reason: str
    node: str

    def as_json(self) -> dict[str, Any]:
        """The summary for ``--json``."""
        return dict(self.__dict__)


@dataclass
class Content:
    """What a search looks in: (channel, t, text) pieces."""

    commands: list[tuple[int, float, str]]
    output: list[tuple[int, float, str]]
    input: list[tuple[int, float, str]]
    problems: list[str] = field(default_factory=list)  # channels that could not be read


def _text(meta: dict[str, Any], *keys: str) -> str:
    node: Any = meta
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, str) else ""


def summary_of(meta: dict[str, Any], source: str, where: str, fallback_id: str) -> Summary:
    """A summary from session.json or a manifest (missing fields become '')."""
    return Summary(
        session_id=_text(meta, "session_id") or fallback_id, source=source, where=where,
        user=_text(meta, "identity", "name"), target=_text(meta, "target", "name"),
        login=_text(meta, "target", "login"), start=_text(meta, "start"),
        end=_text(meta, "end"), state=_text(meta, "state"),
        end_reason=_text(meta, "end_reason"), node=_text(meta, "node_id"))


def content_of(folder: SessionFolder) -> Content:
    """Read a session folder's commands, output and input."""
    content = Content([], [], [])
    for chan in folder.channels:
        try:
            cast, events = channel_events(folder, chan)
        except (ReplayError, OSError) as exc:
            content.problems.append(f"channel {chan.number}: {exc}")
            continue  # a damaged channel: the others are still searchable
        for command in folder.commands(chan, cast):
            content.commands.append((chan.number, command.t, command.line))
        plain = Sanitizer(Mode.PLAIN)
        for event in events:
            if event.code == "o":
                text = plain.feed(event.data)
                if text:
                    content.output.append((chan.number, event.t, text))
            elif event.code == "i":
                content.input.append((chan.number, event.t, visible_keys(event.data)))
    return content


def _pack(content: Content) -> bytes:
    doc = {"commands": content.commands, "output": content.output, "input": content.input,
           "problems": content.problems}
    return zlib.compress(json.dumps(doc).encode(), 3)  # escaped: a lone surrogate round-trips


def _unpack(blob: bytes) -> Content:
    doc = json.loads(zlib.decompress(blob))
    commands, output, typed = ([tuple(x) for x in doc[k]] for k in ("commands", "output", "input"))
    return Content(commands, output, typed, problems=[str(p) for p in doc.get("problems", [])])


def _spool_stamp(folder: Path) -> str | None:
    parts = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    parts.append(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}")
    except OSError:
        return None
    return "|".join(sorted(parts))


class Catalog:
    """Sessions of the spool and (optionally) a bucket, read through the local index."""

    def __init__(self, state_dir: Path, spool_dir: Path | None, s3: tuple[Any, str, str] | None
                 = None) -> None:
        self.spool_dir = spool_dir
        self.s3 = s3  # (client, bucket, prefix)
        self.skipped: list[str] = []  # sessions that could not be read, with why
        path = state_dir / INDEX_NAME
        try:
            self.db = self._open(path)
        except (sqlite3.Error, OSError) as exc:
            # No write access to the state directory (an analyst account): search still works,
            # it just reads everything again next time.
            self.skipped.append(f"session index {path} unusable ({exc}); searching without it")
            self.db = self._open(Path(":memory:"))
        self._cache: dict[str, tuple[str, str, bytes | None]] = {
            key: (stamp, summary, content) for key, stamp, summary, content
            in self.db.execute("SELECT key, stamp, summary, content FROM sessions")}
        self._writes: list[tuple[str, str, str, bytes | None]] = []

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(path, isolation_level=None)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != INDEX_VERSION:  # a cache: rebuilt, never migrated
            db.execute("DROP TABLE IF EXISTS sessions")
        db.execute("CREATE TABLE IF NOT EXISTS sessions (key TEXT PRIMARY KEY, stamp TEXT NOT "
                   "NULL, summary TEXT NOT NULL, content BLOB)")
        db.execute(f"PRAGMA user_version = {INDEX_VERSION}")
        return db

    def close(self) -> None:
        """Write what was read to the index and close it."""
        try:
            if self._writes:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)",
                                    self._writes)
                self.db.execute("COMMIT")
        except sqlite3.Error as exc:  # a cache that cannot be written: next search rereads
            self.skipped.append(f"session index not updated ({exc})")
        finally:
            self._writes = []
            self.db.close()

    def _remember(self, key: str, stamp: str, summary: Summary, content: bytes | None) -> None:
        text = json.dumps(summary.as_json(), ensure_ascii=False)
        self._cache[key] = (stamp, text, content)
        self._writes.append((key, stamp, text, content))

    # -- summaries ---------------------------------------------------------------------------
    def summaries(self) -> list[Summary]:
        """Every session, spool first; a session in both is listed once (from the spool)."""
        found: dict[str, Summary] = {}
        for summary in self._spool_summaries():
            found.setdefault(summary.session_id, summary)
        if self.s3 is not None:
            for summary in self._s3_summaries():
                found.setdefault(summary.session_id, summary)
        return sorted(found.values(), key=lambda s: (s.start, s.session_id))

    def _spool_summaries(self) -> Iterator[Summary]:
        if self.spool_dir is None or not self.spool_dir.is_dir():
            return
        with os.scandir(self.spool_dir) as entries:
            folders = sorted(e.path for e in entries
                             if SESSION_DIR.match(e.name) and e.is_dir(follow_symlinks=False))
        for path in folders:
            key = "spool:" + path
            stamp = _spool_stamp(Path(path))
            cached = self._cache.get(key)
            if stamp is not None and cached is not None and cached[0] == stamp:
                yield Summary(**json.loads(cached[1]))
                continue
            try:
                meta = load_json_object(Path(path) / SESSION_FILE)
            except ReplayError as exc:
                self.skipped.append(str(exc))
                continue
            summary = summary_of(meta, "spool", path, Path(path).name)
            if stamp is not None:
                self._remember(key, stamp, summary, None)
            yield summary

    def _s3_summaries(self) -> Iterator[Summary]:
        assert self.s3 is not None
        client, bucket, prefix = self.s3
        search = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        try:
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=search):
                for item in page.get("Contents", []):
                    key = str(item["Key"])
                    if not key.endswith("/" + MANIFEST_FILE):
                        continue
                    folder = key.rpartition("/")[0]
                    where = f"s3://{bucket}/{folder}"
                    stamp = str(item.get("ETag", ""))
                    cached = self._cache.get(where)
                    if cached is not None and cached[0] == stamp:
                        yield Summary(**json.loads(cached[1]))
                        continue
                    raw = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                    try:
                        meta = json.loads(raw)
                    except (ValueError, RecursionError):
                        self.skipped.append(f"{where}/{MANIFEST_FILE}: not valid JSON")
                        continue
                    if not isinstance(meta, dict):
                        continue
                    summary = summary_of(meta, "s3", where, folder.rpartition("/")[2])
                    self._remember(where, stamp, summary, None)
                    yield summary
        except BastionError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("botocore"):
                raise storage_error(exc, f"s3://{bucket}/{search}") from None
            raise

    # -- content -----------------------------------------------------------------------------
    def content(self, summary: Summary) -> Content | None:
        """The searchable content of a session (read once, then from the index)."""
        key = summary.where if summary.source == "s3" else "spool:" + summary.where
        cached = self._cache.get(key)
        if cached is not None and cached[2] is not None:
            content = _unpack(cached[2])
            self.skipped.extend(f"{summary.where}: {p}" for p in content.problems)
            return content
        try:
            content = self._read_content(summary)
        except (BastionError, OSError) as exc:
            self.skipped.append(f"{summary.where}: {exc}")
            return None
        self.skipped.extend(f"{summary.where}: {p}" for p in content.problems)
        if cached is not None and summary.state != "active":  # a live session: no caching
            self._remember(key, cached[0], summary, _pack(content))
        return content

    def _read_content(self, summary: Summary) -> Content:
        if summary.source == "spool":
            return content_of(open_session_folder(Path(summary.where)))
        assert self.s3 is not None
        client, bucket, _ = self.s3
        prefix = summary.where.removeprefix(f"s3://{bucket}/")
        with tempfile.TemporaryDirectory(prefix="bastion-search-") as temp:
            folder = download_s3(client, bucket, prefix, Path(temp))
            return content_of(open_session_folder(folder))
