"""Evidence as read from where it is stored: one ``SessionEvidence`` per session folder.

``LocalSource`` reads a session folder, a spool or a download (``.gz`` files, as uploaded, are
decompressed on the fly); the S3 reader is ``bastion.storage.reader.S3Source``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bastion.errors import VerificationFailed
from bastion.recording.layout import (
    COMPRESSED_SUFFIX,
    MANIFEST_FILE,
    SESSION_FILE,
    SIGNATURE_FILE,
    is_recording_name,
)

_CHUNK = 1 << 20


@dataclass
class SessionEvidence:
    """One session's stored evidence, however it was read."""

    where: str  # shown to people: a path or an s3:// URL of the session folder
    folder: str  # the session folder's name (should be the session id)
    node_folder: str | None  # the node part of the key layout, when the layout has one
    manifest_raw: bytes | None
    signature_raw: bytes | None
    open_file: Callable[[str], Iterable[bytes]]  # a session file's content; FileNotFoundError
    stored_names: frozenset[str]  # recording files present (uncompressed names)
    problems: list[str] = field(default_factory=list)  # found while reading (versions)


class Source(Protocol):
    """Where evidence is read from."""

    description: str

    def sessions(self) -> Iterator[SessionEvidence]:
        """Every session folder in scope."""
        ...


def stored_name(name: str) -> str | None:
    """The session file a stored object or file name holds (``1-exec.stdout.gz`` ->
    ``1-exec.stdout``), or None if it is none of a session's files."""
    plain = name.removesuffix(COMPRESSED_SUFFIX)
    if is_recording_name(plain) or plain == SESSION_FILE:
        return plain
    return None


def gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress a gzip stream chunk by chunk; VerificationFailed if it is truncated."""
    inflater = zlib.decompressobj(wbits=31)
    for chunk in chunks:
        out = inflater.decompress(chunk)
        if out:
            yield out
    tail = inflater.flush()
    if tail:
        yield tail
    if not inflater.eof:
        raise VerificationFailed("compressed file is truncated")


def file_chunks(path: Path) -> Iterator[bytes]:
    """A file's content in 1 MiB chunks."""
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


class LocalSource:
    """Session folders on disk: one folder, or every folder below a path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = str(path)

    def _folders(self) -> list[Path]:
        if not self.path.is_dir():
            raise VerificationFailed(f"{self.path}: no such folder")
        folders = set()
        for item in self.path.rglob("*"):
            if item.is_file() and (item.name in (MANIFEST_FILE, SIGNATURE_FILE)
                                   or stored_name(item.name) is not None):
                folders.add(item.parent)
        return sorted(folders)

    def sessions(self) -> Iterator[SessionEvidence]:
        """Every folder holding a manifest, a signature, session metadata or a recording."""
        for folder in self._folders():
            def read(name: str, folder: Path = folder) -> bytes | None:
                try:
                    return (folder / name).read_bytes()
                except FileNotFoundError:
                    return None

            def open_file(name: str, folder: Path = folder) -> Iterable[bytes]:
                plain = folder / name
                if plain.is_file():
                    return file_chunks(plain)
                packed = folder / (name + COMPRESSED_SUFFIX)
                if packed.is_file():
                    return gunzip(file_chunks(packed))
                raise FileNotFoundError(name)

            names = frozenset(
                n for p in folder.iterdir()
                if (n := stored_name(p.name)) is not None and n != SESSION_FILE)
            yield SessionEvidence(
                where=str(folder), folder=folder.name, node_folder=None,
                manifest_raw=read(MANIFEST_FILE), signature_raw=read(SIGNATURE_FILE),
                open_file=open_file, stored_names=names)
