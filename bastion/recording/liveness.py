"""Which session folders are being recorded right now, across the processes of one node.

The process recording a session holds an exclusive flock on the session's folder from its
creation until session.json says it ended. The kernel drops the lock when that process dies, so
a folder whose lock can be taken is not being recorded by anyone: recovery may close it. This is
what lets the supervisor of ``bastion serve --workers N`` recover the sessions of a worker that
died while the other workers keep recording theirs in the same spool.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def hold_liveness(folder: Path) -> int:
    """Lock ``folder`` as being recorded by this process; the descriptor to release later.

    Blocks only while a recovery pass looks at the brand-new folder (a moment)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        raise
    return fd


def release_liveness(fd: int) -> None:
    """The session ended on disk: let recovery (and nobody else) touch the folder."""
    os.close(fd)


@contextlib.contextmanager
def session_liveness(folder: Path, *, wait: bool) -> Iterator[bool]:
    """Hold ``folder``'s lock for the block; yields False (and holds nothing) when another
    process is recording it and ``wait`` is False."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
