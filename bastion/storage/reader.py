"""Evidence read from a bucket laid out by ``bastion upload`` (see keys.py), for verify.

Every object's versions are listed: the first-written version is the one read, and any newer
version or delete marker is reported as a problem (tampering) in the session's evidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from bastion.errors import StorageError
from bastion.evidence.sources import SessionEvidence, both_copies, gunzip, stored_name
from bastion.recording.layout import MANIFEST_FILE, SESSION_FILE, SIGNATURE_FILE
from bastion.storage.keys import object_name, split_key

_CHUNK = 1 << 20
MAX_LISTED = 1_000_000  # object versions and delete markers under one prefix
MAX_PAGES = 2_000  # a page holds up to 1,000 entries; a store may send fewer


def listing_entries(page: Any, field: str, where: str) -> list[dict[str, Any]]:
    """The entries of one page of a listing (``Contents``, ``Versions``, ``DeleteMarkers``);
    StorageError if the store sent anything else."""
    items = page.get(field, []) if isinstance(page, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise StorageError(f"{where}: the store sent a malformed listing ({field})")
    return items


def listing_key(item: dict[str, Any], where: str) -> str:
    """The key of a listing entry; StorageError if it has none."""
    key = item.get("Key")
    if not isinstance(key, str) or not key:
        raise StorageError(f"{where}: the store sent a malformed listing (an entry without "
                           "a key)")
    return key


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
        # A store that says "more" for ever (a new marker every page) must not keep verify
        # listing for ever: past MAX_LISTED entries or pages, give up.
        seen = 0
        once: set[tuple[str, str]] = set()
        for pages, page in enumerate(paginator.paginate(Bucket=self.bucket, Prefix=prefix), 1):
            markers = listing_entries(page, "DeleteMarkers", self.description)
            versions = listing_entries(page, "Versions", self.description)
            seen += len(markers) + len(versions)
            if pages > MAX_PAGES or seen > MAX_LISTED:
                raise StorageError(f"{self.description}: the listing does not end (over "
                                   f"{MAX_LISTED} entries or {MAX_PAGES} pages); verify a "
                                   "narrower prefix")
            for item in markers + versions:
                # Each version is listed once; one seen again means the store restarted the
                # listing (it would never end, and counts would be wrong).
                listed = (listing_key(item, self.description), str(item.get("VersionId")))
                if listed in once:
                    raise StorageError(f"{self.description}: the store listed {listed[0]!r} "
                                       f"version {listed[1]!r} twice; the listing is broken")
                once.add(listed)
            for marker in markers:
                if marker.get("IsLatest") is not False:  # unsaid: assume it hides the key
                    keys.setdefault(listing_key(marker, self.description),
                                    _KeyVersions()).deleted = True
            for version in versions:
                entry = keys.setdefault(listing_key(version, self.description), _KeyVersions())
                entry.first = str(version.get("VersionId") or "null")
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
                # As on disk (sources.LocalSource): a plain copy is what a reader may take, so
                # beside a .gz it must hold the same bytes.
                plain, packed = files.get(name), files.get(object_name(name))
                if plain is not None and plain.first is not None:
                    chunks = self._get(f"{folder}/{name}", plain.first)
                    if packed is None or packed.first is None:
                        return chunks
                    other = gunzip(self._get(f"{folder}/{object_name(name)}", packed.first))
                    return both_copies(chunks, other, name)
                if packed is None or packed.first is None:
                    raise FileNotFoundError(name)
                return gunzip(self._get(f"{folder}/{object_name(name)}", packed.first))

            # Every recording-like object counts, plain or packed: one the manifest does not
            # list is reported (a tampered folder must not pass by sitting beside the .gz).
            names = frozenset(n for f in files
                              if (n := stored_name(f)) is not None and n != SESSION_FILE)
            yield SessionEvidence(
                where=f"s3://{self.bucket}/{folder}", folder=folder.rpartition("/")[2],
                node_folder=nodes[folder],
                manifest_raw=fetch(MANIFEST_FILE), signature_raw=fetch(SIGNATURE_FILE),
                open_file=open_file, stored_names=names, problems=problems)
