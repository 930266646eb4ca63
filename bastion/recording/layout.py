"""The recording format's one owner: file names, channel kinds, session states, schema, ids.

Every module that writes, seals, uploads or verifies a session folder takes its names from here,
so a file the sealer would not know cannot be written in the first place (``recording_name``
refuses it), and a name a verifier meets is parsed by the same rules that made it.

A session folder ``<spool>/<session_id>/`` holds::

    session.json                 metadata (schema SESSION_SCHEMA), rewritten atomically
    <n>-shell.cast <n>-exec.cast asciicast v2 of a channel with a pty (n = 1, 2, ...)
    <n>-<kind>.stdin .stdout .stderr
                                 a channel without a pty: the bytes that crossed, nothing else
    <n>-<kind>.timing            one line per chunk of those streams (``I|O|E <delay> <nbytes>``)
    <n>-sftp.ops.jsonl           sftp channels: one JSON object per file operation
    manifest.json manifest.sig   once sealed
    uploaded.json                once every object is verified in S3

and the spool itself holds ``.lock`` (flock'd by the running server).
"""

from __future__ import annotations

import enum
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import TypeGuard

SESSION_SCHEMA = 2  # session.json with ``channels`` (and every recording file in ``recordings``)
SESSION_SCHEMAS = frozenset({1, 2})  # what sealing accepts: 1 = sessions of the previous release

SESSION_FILE = "session.json"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
UPLOADED_FILE = "uploaded.json"
LOCK_FILE = ".lock"
# Space held back in the spool so that a session whose recording failed on a full disk can
# still be finished (final session.json) and sealed (manifest, signature): released then.
RESERVE_FILE = ".reserve"
RESERVE_BYTES = 256 * 1024
COMPRESSED_SUFFIX = ".gz"  # a session file as uploaded (gzip), and as a download holds it

SESSION_ID_RE = re.compile(r"(\d{8}T\d{6}Z)-[0-9a-f]{12}\Z")
_MAX_CHANNEL = 999_999  # six digits: more channels than any session opens


class ChannelKind(enum.Enum):
    """What a session channel carries; chosen when the channel starts."""

    SHELL = "shell"  # an interactive shell (with or without a pty)
    EXEC = "exec"  # one command
    SFTP = "sftp"  # the sftp subsystem


class Part(enum.Enum):
    """One file of a channel's recording; the value is the file name's suffix."""

    CAST = "cast"  # asciicast v2 (pty channels)
    STDIN = "stdin"  # byte-exact streams (channels without a pty)
    STDOUT = "stdout"
    STDERR = "stderr"
    TIMING = "timing"
    OPS = "ops.jsonl"  # sftp file operations


STREAM_PARTS = (Part.STDIN, Part.STDOUT, Part.STDERR)  # in the order of TIMING_CODES
TIMING_CODES = {Part.STDIN: b"I", Part.STDOUT: b"O", Part.STDERR: b"E"}

# Which files a channel of each kind may have: a recording kind outside this table is never
# written (recording_name raises) and never accepted by the sealer or verify (parse refuses).
_ALLOWED: dict[ChannelKind, frozenset[Part]] = {
    ChannelKind.SHELL: frozenset({Part.CAST, *STREAM_PARTS, Part.TIMING}),
    ChannelKind.EXEC: frozenset({Part.CAST, *STREAM_PARTS, Part.TIMING}),
    ChannelKind.SFTP: frozenset({*STREAM_PARTS, Part.TIMING, Part.OPS}),
}

_NAME_RE = re.compile(r"([1-9][0-9]{0,5})-([a-z]{1,16})\.([a-z]{1,8}(?:\.jsonl)?)\Z")


class SessionState(enum.Enum):
    """Where a session is in its life, as session.json and the manifest say."""

    ACTIVE = "active"  # being recorded now (or the server crashed: recovery decides)
    CLOSED = "closed"  # ended normally
    INTERRUPTED = "interrupted"  # the server stopped without closing it; recovered
    REFUSED = "refused"  # the target could not be reached or the session was refused
    KILLED = "killed"  # ended by an operator or a policy
    DAMAGED = "damaged"  # recovered, but a recording held invalid records (noted in the file)

    @property
    def final(self) -> bool:
        """Whether a session in this state is finished (may be sealed)."""
        return self is not SessionState.ACTIVE


FINAL_STATES = frozenset(s for s in SessionState if s.final)


class CommandVerdict(enum.Enum):
    """What happened to a command line read on a channel (session.json ``commands``)."""

    ALLOW = "allow"
    WARN = "warn"
    DENY = "deny"
    APPROVE = "approve"  # held for approval
    APPROVED = "approved"
    REFUSED = "refused"  # approval refused or timed out
    UNRESOLVED = "unresolved"  # the session ended while it was held


@dataclass(frozen=True)
class RecordingName:
    """A parsed recording file name: ``<number>-<kind>.<part>``."""

    number: int
    kind: ChannelKind
    part: Part

    def __str__(self) -> str:
        return f"{self.number}-{self.kind.value}.{self.part.value}"


def recording_name(number: int, kind: ChannelKind, part: Part) -> str:
    """The file name of one part of channel ``number``'s recording; ValueError if the format
    does not know that combination (so nothing unknown is ever written)."""
    if not isinstance(kind, ChannelKind) or not isinstance(part, Part):
        raise ValueError(f"unknown recording kind {kind!r}.{part!r}")
    if part not in _ALLOWED[kind]:
        raise ValueError(f"a {kind.value} channel has no .{part.value} recording")
    if isinstance(number, bool) or not 1 <= number <= _MAX_CHANNEL:
        raise ValueError(f"bad channel number {number!r}")
    return f"{number}-{kind.value}.{part.value}"


def parse_recording_name(name: str) -> RecordingName | None:
    """The parts of a recording file name, or None if it is not one the format defines."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    try:
        kind, part = ChannelKind(m.group(2)), Part(m.group(3))
    except ValueError:
        return None
    if part not in _ALLOWED[kind]:
        return None
    return RecordingName(int(m.group(1)), kind, part)


def is_recording_name(name: str) -> bool:
    """Whether ``name`` is a recording file the format defines."""
    return parse_recording_name(name) is not None


def channel_parts(kind: ChannelKind, pty: bool) -> tuple[Part, ...]:
    """The files a new channel is recorded in: a cast with a pty, streams and timing without."""
    if pty:
        if Part.CAST not in _ALLOWED[kind]:
            raise ValueError(f"a {kind.value} channel is never recorded as a terminal")
        return (Part.CAST,)
    return (*STREAM_PARTS, Part.TIMING)


def new_session_id(unix_time: float) -> str:
    """``YYYYMMDDTHHMMSSZ-`` (UTC start) plus 12 random lowercase hex digits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(unix_time)) + "-" + secrets.token_hex(6)


def is_session_id(text: str) -> bool:
    """Whether ``text`` is a session id."""
    return SESSION_ID_RE.match(text) is not None


def session_date(session_id: str) -> str | None:
    """The UTC start date of a session as ``YYYY/MM/DD``, or None if it is not a session id."""
    m = SESSION_ID_RE.match(session_id)
    if m is None:
        return None
    stamp = m.group(1)
    return f"{stamp[0:4]}/{stamp[4:6]}/{stamp[6:8]}"


def is_event_time(t: object) -> TypeGuard[int | float]:
    """Whether ``t`` is an event time (casts, markers, session.json): a finite number >= 0
    (not a bool, nor an integer too large to be a float: ``1e400`` spelled out in digits;
    NaN would not even be valid JSON when written back)."""
    if isinstance(t, bool) or not isinstance(t, int | float):
        return False
    try:
        value = float(t)
    except OverflowError:
        return False
    return math.isfinite(value) and value >= 0
