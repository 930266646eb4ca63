"""Evidence as read from where it is stored: one ``SessionEvidence`` per session folder.

``LocalSource`` reads a session folder, a spool or a download (``.gz`` files, as uploaded, are
decompressed on the fly); the S3 reader is ``bastion.storage.reader.S3Source``.

Evidence is untrusted input: only regular files are ever opened (a FIFO planted as manifest.json
would block the reader for ever), a file that cannot be read is that session's failure, and a
``.gz`` is decompressed a bounded piece at a time and must hold exactly one gzip member.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from bastion.errors import VerificationFailed
from bastion.recording.layout import (
    COMPRESSED_SUFFIX,
    MANIFEST_FILE,
    SESSION_FILE,
    SIGNATURE_FILE,
    Part,
    is_recording_name,
)

_CHUNK = 1 << 20
# Named like a recording although the format defines no such file (``1-sftp.cast``,
# ``1-foo.cast``): never replayed, and reported by verify as a file the manifest does not list.
_RECORDING_LIKE = re.compile(r"[0-9]+-[^/]*\.(?:"
                             + "|".join(re.escape(p.value) for p in Part) + r")\Z")


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
    unreadable: dict[str, str] = field(default_factory=dict)  # manifest/sig name -> why


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
    if is_recording_name(plain) or plain == SESSION_FILE or _RECORDING_LIKE.match(plain):
        return plain
    return None


def gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress a gzip stream, at most 1 MiB of output at a time (a reader that stops early
    never inflates a bomb); VerificationFailed if it is truncated or anything follows its one
    member (a second member or trailing bytes would be content no hash covered)."""
    inflater = zlib.decompressobj(wbits=31)
    ended = False
    for chunk in chunks:
        if ended:
            if chunk:
                raise VerificationFailed("compressed file has data after its end")
            continue
        data = chunk
        while True:
            out = inflater.decompress(data, _CHUNK)
            if out:
                yield out
            ended = inflater.eof
            data = inflater.unconsumed_tail
            # a full piece may leave output inside zlib with no input left: ask again
            if ended or (not data and len(out) < _CHUNK):
                break
        if ended and inflater.unused_data:
            raise VerificationFailed("compressed file has data after its end")
    if not ended:
        raise VerificationFailed("compressed file is truncated")


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading, without blocking; OSError for anything else (a FIFO,
    a device, a folder), checked on the opened file so nothing can be swapped in between."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int = -1) -> bytes:
    """Up to ``limit`` bytes (all if negative) of a regular file (OSError if it is none)."""
    with open_regular(path) as fh:
        return fh.read(limit)


def file_chunks(path: Path) -> Iterator[bytes]:
    """A regular file's content in 1 MiB chunks."""
    with open_regular(path) as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def both_copies(plain: Iterable[bytes], packed: Iterable[bytes], name: str) -> Iterator[bytes]:
    """The plain copy's content; VerificationFailed at its end unless the ``.gz`` beside it
    (``packed``, decompressed) holds the same bytes: either copy could be what a reader or an
    upload takes. The packed copy is read no further than the plain one's length plus a piece."""
    digest, size = hashlib.sha256(), 0
    for chunk in plain:
        digest.update(chunk)
        size += len(chunk)
        yield chunk
    other, other_size = hashlib.sha256(), 0
    for chunk in packed:
        other.update(chunk)
        other_size += len(chunk)
        if other_size > size:
            break
    if (other_size, other.digest()) != (size, digest.digest()):
        raise VerificationFailed(f"{name}{COMPRESSED_SUFFIX} differs from {name}")


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
            # A manifest of any type counts (a folder or FIFO in its place is that session's
            # failure, not a session overlooked).
            if item.name in (MANIFEST_FILE, SIGNATURE_FILE) \
                    or (item.is_file() and stored_name(item.name) is not None):
                folders.add(item.parent)
        return sorted(folders)

    def sessions(self) -> Iterator[SessionEvidence]:
        """Every folder holding a manifest, a signature, session metadata or a recording."""
        for folder in self._folders():
            unreadable: dict[str, str] = {}

            def read(name: str, folder: Path = folder,
                     unreadable: dict[str, str] = unreadable) -> bytes | None:
                try:
                    return read_regular(folder / name)
                except FileNotFoundError:
                    return None
                except OSError as exc:
                    unreadable[name] = f"{name} is unreadable: {exc.strerror or exc}"
                    return None

            def open_file(name: str, folder: Path = folder) -> Iterable[bytes]:
                plain = folder / name
                packed = folder / (name + COMPRESSED_SUFFIX)
                if _present(plain) and _present(packed):
                    return both_copies(file_chunks(plain), gunzip(file_chunks(packed)), name)
                if _present(plain):
                    return file_chunks(plain)
                if _present(packed):
                    return gunzip(file_chunks(packed))
                raise FileNotFoundError(name)

            names = frozenset(
                n for p in folder.iterdir()
                if (n := stored_name(p.name)) is not None and n != SESSION_FILE)
            yield SessionEvidence(
                where=str(folder), folder=folder.name, node_folder=None,
                manifest_raw=read(MANIFEST_FILE), signature_raw=read(SIGNATURE_FILE),
                open_file=open_file, stored_names=names, unreadable=unreadable)


def _present(path: Path) -> bool:
    """Whether something (of whatever type: opening it says what is wrong) is at ``path``."""
    return path.exists() or path.is_symlink()
