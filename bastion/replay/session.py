"""One recorded session folder as replay sees it: metadata, channels, commands and streams.

Reads both layouts: the current one (``session.json`` with ``channels`` and ``commands``; pty
channels as asciicast, exec channels as byte-exact ``.stdin/.stdout/.stderr`` streams with a
``.timing`` file) and the first one (only ``recordings``, every channel an asciicast, commands as
``command: `` markers). A folder downloaded from S3 has no session.json: its manifest carries the
same metadata. Every file name comes from data and is checked against the layout's patterns
before it is opened; in a sealed folder only the files the signed manifest covers are opened
(the unsigned session.json never chooses what is played).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bastion.errors import ReplayError
from bastion.evidence.sources import read_regular
from bastion.recording.layout import (
    MANIFEST_FILE,
    SESSION_FILE,
    Part,
    is_event_time,
    parse_recording_name,
)
from bastion.replay.cast import COMMAND_PREFIX, Cast, read_cast

STREAMS = ("stdin", "stdout", "stderr")
MAX_META = 64 * 1024 * 1024


@dataclass(frozen=True)
class Channel:
    """One channel of a session."""

    number: int
    kind: str  # shell, exec, sftp...
    pty: bool
    command: str | None
    files: tuple[str, ...]
    exit_status: int | None = None
    exit_signal: str | None = None
    markers: tuple[tuple[float, str], ...] = ()  # (t, label) of a channel without a cast

    @property
    def cast_name(self) -> str | None:
        """The asciicast file of this channel, if it has one."""
        return next((f for f in self.files if f.endswith(".cast")), None)

    def stream_name(self, stream: str) -> str | None:
        """The byte-exact stream file (stdin, stdout, stderr), if recorded so."""
        return next((f for f in self.files if f.endswith("." + stream)), None)

    def describe(self) -> str:
        """``1 shell`` / ``2 exec: uptime``."""
        text = f"{self.number} {self.kind}"
        return f"{text}: {self.command}" if self.command is not None else text


@dataclass(frozen=True)
class Command:
    """A command line read on a channel, at ``t`` seconds after the channel opened."""

    channel: int
    t: float
    line: str
    verdict: str | None = None


@dataclass
class SessionFolder:
    """A session's folder on disk (spool, or downloaded from S3)."""

    path: Path
    meta: dict[str, Any]
    channels: list[Channel] = field(default_factory=list)
    covered: frozenset[str] | None = None  # sealed: the files its signed manifest lists

    @property
    def session_id(self) -> str:
        """The session id (from its metadata, else the folder name)."""
        value = self.meta.get("session_id")
        return value if isinstance(value, str) else self.path.name

    def field(self, *keys: str) -> str:
        """A nested metadata string field ('' when absent or not a string)."""
        node: Any = self.meta
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, str) else ""

    def channel(self, number: int | None) -> Channel:
        """The channel asked for; by default the first with a pty, else the first."""
        if not self.channels:
            raise ReplayError(f"{self.path}: the session has no recorded channel")
        if number is None:
            return next((c for c in self.channels if c.pty), self.channels[0])
        for chan in self.channels:
            if chan.number == number:
                return chan
        numbers = ", ".join(str(c.number) for c in self.channels)
        raise ReplayError(f"{self.session_id} has no channel {number} (channels: {numbers})")

    def file(self, name: str) -> Path:
        """The path of a recording file named by the metadata (name checked)."""
        if parse_recording_name(name) is None:
            raise ReplayError(f"{self.path}: recording name {name[:64]!r} is not a bastion "
                              "recording name")
        if self.covered is not None and name not in self.covered:
            raise ReplayError(f"{self.path}: {name} is not covered by the signed manifest; "
                              "not replayed")
        return self.path / name

    def read_cast(self, chan: Channel) -> Cast:
        """The channel's asciicast."""
        name = chan.cast_name
        if name is None:
            raise ReplayError(f"channel {chan.number} of {self.session_id} has no asciicast")
        return read_cast(self.file(name))

    def read_stream(self, chan: Channel, stream: str) -> bytes | None:
        """The exact bytes of a byte-exact stream; None if not recorded that way."""
        name = chan.stream_name(stream)
        if name is None:
            return None
        try:
            return self.file(name).read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise ReplayError(f"{self.file(name)}: cannot read: {exc.strerror}") from None

    def commands(self, chan: Channel, cast: Cast | None = None) -> list[Command]:
        """Commands of a channel: from metadata, else from ``command: `` markers."""
        found = [c for c in metadata_commands(self.meta) if c.channel == chan.number]
        if not found:
            markers = cast.markers() if cast is not None else list(chan.markers)
            found = [Command(chan.number, t, label[len(COMMAND_PREFIX):])
                     for t, label in markers if label.startswith(COMMAND_PREFIX)]
        return sorted(found, key=lambda c: c.t)


def metadata_commands(meta: dict[str, Any]) -> list[Command]:
    """The ``commands`` list of session.json or a manifest, malformed entries skipped."""
    out = []
    entries = meta.get("commands")
    for item in entries if isinstance(entries, list) else []:
        if not isinstance(item, dict):
            continue
        chan, t, line = item.get("channel"), item.get("t"), item.get("line")
        if isinstance(chan, int) and is_event_time(t) and isinstance(line, str):
            verdict = item.get("verdict")
            out.append(Command(chan, float(t), line, verdict if isinstance(verdict, str)
                               else None))
    return out


def load_json_object(path: Path) -> dict[str, Any]:
    """A JSON object file (ReplayError if missing, unreadable or not an object)."""
    try:
        raw = read_regular(path, MAX_META + 1)
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_META:
        raise ReplayError(f"{path}: larger than {MAX_META} bytes; not session metadata")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise ReplayError(f"{path}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise ReplayError(f"{path}: not a JSON object")
    return doc


def _channels_from_meta(meta: dict[str, Any]) -> list[Channel] | None:
    entries = meta.get("channels")
    if not isinstance(entries, list):
        return None
    channels = []
    for item in entries:
        if not isinstance(item, dict) or not isinstance(item.get("number"), int):
            continue
        files = item.get("files")
        names = tuple(f for f in files if isinstance(f, str)) if isinstance(files, list) else ()
        command = item.get("command")
        status, signal = item.get("exit_status"), item.get("exit_signal")
        marks = item.get("markers")
        markers = tuple(
            (float(m["t"]), m["label"]) for m in (marks if isinstance(marks, list) else [])
            if isinstance(m, dict) and isinstance(m.get("label"), str)
            and is_event_time(m.get("t")))
        channels.append(Channel(
            number=item["number"], kind=str(item.get("kind") or "shell")[:16],
            pty=item.get("pty") is True, command=command if isinstance(command, str) else None,
            files=names, exit_status=status if isinstance(status, int) else None,
            exit_signal=signal if isinstance(signal, str) else None, markers=markers))
    return sorted(channels, key=lambda c: c.number)


def _listed_names(meta: dict[str, Any], key: str) -> list[str]:
    """The file names of a metadata list of names or of ``{"name": ...}`` entries."""
    names: list[str] = []
    listed = meta.get(key)
    for item in listed if isinstance(listed, list) else []:
        name = item.get("name") if isinstance(item, dict) else item
        if isinstance(name, str):
            names.append(name)
    return names


def _channels_from_recordings(folder: Path, meta: dict[str, Any],
                              sealed: bool) -> list[Channel]:
    names = _listed_names(meta, "recordings")
    if not names and not sealed:  # no metadata list: what is in the folder (never if signed)
        names = sorted(p.name for p in folder.glob("*.cast"))
    channels = []
    for name in names:
        parsed = parse_recording_name(name)
        if parsed is None or parsed.part is not Part.CAST:
            continue
        header = _cast_header(folder / name)
        term = header.get("term")
        command = header.get("command")
        channels.append(Channel(number=parsed.number, kind=parsed.kind.value,
                                pty=isinstance(term, dict) and bool(term.get("type")),
                                command=command if isinstance(command, str) else None,
                                files=(name,)))
    return sorted(channels, key=lambda c: c.number)


def _cast_header(path: Path) -> dict[str, Any]:
    try:
        line = read_regular(path, 1 << 20).partition(b"\n")[0]
        header = json.loads(line)
    except (OSError, ValueError, RecursionError):
        return {}
    return header if isinstance(header, dict) else {}


def open_session_folder(path: Path) -> SessionFolder:
    """Read a session folder's metadata and channel list (ReplayError if it is none)."""
    if not path.is_dir():
        raise ReplayError(f"{path}: no such session folder")
    # A sealed session's metadata and file list come from its signed manifest only: the unsigned
    # session.json beside it may have been rewritten to point at a forged file.
    if (path / MANIFEST_FILE).exists() or (path / MANIFEST_FILE).is_symlink():
        meta = load_json_object(path / MANIFEST_FILE)
        covered = frozenset(_listed_names(meta, "files") + _listed_names(meta, "recordings"))
        channels = _channels_from_meta(meta)
        if channels is None:  # schema 1: the signed recordings list
            channels = _channels_from_recordings(path, meta, sealed=True)
        channels = [replace(c, files=tuple(f for f in c.files if f in covered))
                    for c in channels]
        return SessionFolder(path=path, meta=meta, channels=channels, covered=covered)
    if not (path / SESSION_FILE).exists():
        raise ReplayError(f"{path}: not a session folder (no session.json or manifest.json)")
    meta = load_json_object(path / SESSION_FILE)
    channels = _channels_from_meta(meta)
    if channels is None:
        channels = _channels_from_recordings(path, meta, sealed=False)
    return SessionFolder(path=path, meta=meta, channels=channels)
