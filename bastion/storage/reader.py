"""Evidence read from a bucket laid out by ``bastion upload`` (see keys.py), for verify.

Every object's versions are listed: the first-written version is the one read, and any newer
version or delete marker is reported as a problem (tampering) in the session's evidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from bastion.evidence.sources import SessionEvidence, gunzip, stored_name
from bastion.recording.layout import MANIFEST_FILE, SESSION_FILE, SIGNATURE_FILE
from bastion.storage.keys import object_name, split_key

_CHUNK = 1 << 20


@dataclass
class _KeyVersions:
    first: str | None = None  # version id of the first-written version ("null" if unversioned)
    count: int = 0
    deleted: bool = False  # the latest entry is a delete marker


class S3Source:
    """A bucket prefix laid out by ``bastion upload`` (``.../<node>/<session>/<file>``)."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.description = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _list(self) -> dict[str, _KeyVersions]:
        keys: dict[str, _KeyVersions] = {}
        prefix = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_object_versions")
        # S3 lists the versions of a key newest first, so the last one seen is the first written.
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            latest_markers = {m["Key"] for m in page.get("DeleteMarkers", []) if m["IsLatest"]}
            for key in latest_markers:
                keys.setdefault(key, _KeyVersions()).deleted = True
            for version in page.get("Versions", []):
                entry = keys.setdefault(version["Key"], _KeyVersions())
                entry.first = version.get("VersionId") or "null"
                entry.count += 1
        return keys

    def _get(self, key: str, version: str | None) -> Iterator[bytes]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version and version != "null":
            args["VersionId"] = version
        body = self.client.get_object(**args)["Body"]
        try:
            while chunk := body.read(_CHUNK):
                yield chunk
        finally:
            body.close()

    def relisted(self, seen: set[str]) -> Iterator[SessionEvidence]:
        """List the bucket again; only session folders not in ``seen`` (their ``where``)."""
        return self._sessions(seen)

    def sessions(self) -> Iterator[SessionEvidence]:
        """Every session folder under the prefix, read at its first-written versions."""
        return self._sessions(set())

    def _sessions(self, skip: set[str]) -> Iterator[SessionEvidence]:
        folders: dict[str, dict[str, _KeyVersions]] = {}
        nodes: dict[str, str | None] = {}
        for key, versions in self._list().items():
            folder, node, name = split_key(key)
            if name in (MANIFEST_FILE, SIGNATURE_FILE) or stored_name(name) is not None:
                folders.setdefault(folder, {})[name] = versions
                nodes[folder] = node
        for folder, files in sorted(folders.items()):
            if f"s3://{self.bucket}/{folder}" in skip:
                continue
            problems = []
            for name, versions in sorted(files.items()):
                if versions.deleted:
                    problems.append(f"{name} was deleted (a delete marker hides it)")
                if versions.count > 1:
                    problems.append(f"{name} has {versions.count} versions: it was overwritten "
                                    "after upload (the first-written version was verified)")

            def fetch(name: str, folder: str = folder,
                      files: dict[str, _KeyVersions] = files) -> bytes | None:
                entry = files.get(name)
                if entry is None or entry.first is None:
                    return None
                return b"".join(self._get(f"{folder}/{name}", entry.first))

            def open_file(name: str, folder: str = folder,
                          files: dict[str, _KeyVersions] = files) -> Iterable[bytes]:
                stored = object_name(name)
                entry = files.get(stored)
                if entry is None or entry.first is None:
                    raise FileNotFoundError(name)
                return gunzip(self._get(f"{folder}/{stored}", entry.first))

            names = frozenset(n for f in files
                              if (n := stored_name(f)) is not None and n != SESSION_FILE
                              and f == object_name(n))
            yield SessionEvidence(
                where=f"s3://{self.bucket}/{folder}", folder=folder.rpartition("/")[2],
                node_folder=nodes[folder],
                manifest_raw=fetch(MANIFEST_FILE), signature_raw=fetch(SIGNATURE_FILE),
                open_file=open_file, stored_names=names, problems=problems)
