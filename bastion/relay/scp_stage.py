"""Legacy scp (``scp -O``: an exec of ``scp -t PATH`` or ``scp -f PATH``) and rsync, watched.

The scp protocol is control lines (``C<mode> <size> <name>``, ``D...``, ``E``, ``T...``) each
followed by the file's bytes and a status byte, with one-byte acknowledgements the other way. The
side that sends files (the user for ``-t``, the target for ``-f``) is parsed: control lines are
read, file contents are counted and passed on as slices, never collected.

Policy (``[[transfers]]``): an upload (``-t``) whose file or folder is refused is not forwarded;
the user gets scp's warning ``\\x01scp: ...: permission denied`` for it, which makes the OpenSSH
client skip that file and go on. A download (``-f``) is decided on its command path before any
byte moves; a refused file met later (inside ``-r``) ends the channel, since its bytes are on
their way. Paths are taken as the remote shell would leave them; a path with shell patterns or a
relative path cannot be decided and is refused wherever path rules apply.

``rsync --server`` is decided as a whole (upload or download, its paths) and audited; its
protocol is not parsed.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field

from bastion.config.model import Config
from bastion.policy.transfers import TransferPolicy, TransferVerdict, normalize_path
from bastion.relay.pipeline import (
    ChannelInfo,
    ChannelKind,
    ChannelStages,
    Stage,
    StageContext,
    Stream,
)
from bastion.relay.sftp_protocol import shown
from bastion.relay.transfer_log import TransferLog

MAX_LINE = 8192  # an scp control line (mode, size, name) is never longer
_SHELL_SPECIAL = re.compile(r"[*?\[\]{}~$`\\!]")
_CONTROL = re.compile(rb"([CD])([0-7]{3,5}) ([0-9]{1,20}) ([^\n]*)\Z", re.DOTALL)


@dataclass(frozen=True)
class ScpCommand:
    """What an exec of ``scp -t``/``scp -f`` asks for."""

    upload: bool  # -t (sink): the user sends files; -f (source): the target does
    path: str
    recursive: bool
    directory: bool  # -d: the path must be a folder


@dataclass(frozen=True)
class RsyncCommand:
    """What an exec of ``rsync --server`` asks for."""

    upload: bool  # no --sender: the target receives
    paths: tuple[str, ...]


def parse_scp(command: str) -> ScpCommand | None:
    """An ``scp -t``/``scp -f`` command line, or None for anything else."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if not argv or posixpath.basename(argv[0]) != "scp":
        return None
    flags: set[str] = set()
    paths: list[str] = []
    rest = iter(argv[1:])
    for arg in rest:
        if arg == "--":
            paths.extend(rest)
        elif arg.startswith("-") and len(arg) > 1 and not paths:
            flags.update(arg[1:])
        else:
            paths.append(arg)
    if ("t" in flags) == ("f" in flags) or len(paths) != 1:
        return None
    return ScpCommand(upload="t" in flags, path=paths[0], recursive="r" in flags,
                      directory="d" in flags)


def parse_rsync(command: str) -> RsyncCommand | None:
    """An ``rsync --server`` command line, or None for anything else."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if len(argv) < 2 or posixpath.basename(argv[0]) != "rsync" or "--server" not in argv:
        return None
    # rsync --server [--sender] OPTIONS . PATH...: the paths follow the "." argument.
    paths = tuple(argv[argv.index(".") + 1:]) if "." in argv else ()
    return RsyncCommand(upload="--sender" not in argv, paths=paths)


def _policy_path(path: str) -> str | None:
    """A command path as policy sees it; None when only the remote shell could tell."""
    if _SHELL_SPECIAL.search(path):
        return None
    return normalize_path(path, None)


@dataclass
class _Sending:
    """Parser state of the side that sends files; one per channel."""

    dirs: list[tuple[str, ...]] = field(default_factory=list)  # candidate paths per level
    line: bytearray = field(default_factory=bytearray)
    data_left: int = 0
    status_due: bool = False  # the byte after a file's data
    file: tuple[str, int] | None = None  # (shown path, size)


class ScpWatch:
    """One scp channel: parser of the sending side, policy, log, the acknowledgement side."""

    def __init__(self, ctx: StageContext, command: ScpCommand, policy: TransferPolicy,
                 log: TransferLog) -> None:
        self.ctx = ctx
        self.command = command
        self.policy = policy
        self.log = log
        self.sending = _Sending()
        self.ack = AckStage(self)
        self.failed = False
        sender = SenderStage(self)
        self.input: Stage = sender if command.upload else self.ack
        self.output: Stage = self.ack if command.upload else sender

    def start_verdict(self) -> TransferVerdict:
        """The decision on the command as a whole: a download's path (uploads go per file)."""
        if self.command.upload:
            return TransferVerdict(True)
        return self.policy.check(_policy_path(self.command.path), read=True)

    def fail(self, reason: str) -> None:
        """End the channel (fail closed)."""
        if not self.failed:
            self.failed = True
            self.ctx.audit("scp.error", reason=reason)
            self.ctx.end_channel(f"scp: {reason}")

    def _candidates(self, name: str) -> tuple[str, ...]:
        """Where an entry named ``name`` lands (or comes from), as the remote scp decides.

        An upload's top entry goes to the command path itself, or inside it when that is an
        existing folder (only the target knows): both are candidates, both must be allowed.
        """
        if self.sending.dirs:
            return tuple(posixpath.join(parent, name) for parent in self.sending.dirs[-1])
        base = self.command.path.rstrip("/") or "/"
        if not self.command.upload:
            return (posixpath.join(posixpath.dirname(base), name),)
        if self.command.directory:
            return (posixpath.join(base, name),)
        return (base, posixpath.join(base, name))

    def control(self, line: bytes) -> bool:
        """A control line from the sending side: True to pass it on."""
        kind = line[:1]
        if kind == b"E":
            if self.sending.dirs:
                self.sending.dirs.pop()
            return True
        if kind in (b"T", b"\x00"):
            return True
        if kind in (b"\x01", b"\x02"):  # the sender reports an error
            self.log.audit("error", message=shown(line[1:200]))
            return True
        match = _CONTROL.match(line)
        if match is None or "/" in (name := match.group(4).decode("utf-8", "surrogateescape")) \
                or name in ("", ".", ".."):
            self.fail("an scp control line the bastion cannot read")
            return False
        candidates = self._candidates(name)
        # A path ending in "/" is a folder: the entry goes inside (else the target decides).
        best = candidates[-1] if self.command.path.endswith("/") else candidates[0]
        display = shown(best.encode("utf-8", "surrogateescape"))
        upload = self.command.upload
        verdict = TransferVerdict(True)
        for candidate in candidates:
            verdict = self.policy.check(_policy_path(candidate), write=upload, read=not upload)
            if not verdict.allowed:
                break
        if match.group(1) == b"D":
            if not verdict.allowed:
                return self._refuse("mkdir" if upload else "read", display, verdict)
            self.sending.dirs.append(candidates)
            if upload:
                self.log.record("mkdir", display, "ok", event="mkdir")
            return True
        if not verdict.allowed:
            return self._refuse("write" if upload else "read", display, verdict)
        size = int(match.group(3))
        self.sending.file = (display, size)
        self.sending.data_left = size
        self.sending.status_due = True
        self.log.audit("open", path=display, mode="write" if upload else "read", size=size,
                       name=shown(name.encode("utf-8", "surrogateescape")))
        return True

    def _refuse(self, op: str, path: str, verdict: TransferVerdict) -> bool:
        self.log.record(op, path, "denied", reason=verdict.reason, rule=verdict.rule)
        if not self.command.upload:
            self.fail(f"{path}: {verdict.reason}")  # its bytes are already on their way
            return False
        self.ack.inject(f"\x01scp: {path}: permission denied ({verdict.reason})\n".encode())
        return False

    def file_done(self, status: int) -> None:
        """The status byte after a file's data."""
        file = self.sending.file
        self.sending.file = None
        if file is None:
            return
        display, size = file
        upload = self.command.upload
        self.log.record("write" if upload else "read", display,
                        "ok" if status == 0 else "error", event="close",
                        bytes_written=size if upload else 0, bytes_read=0 if upload else size)


class SenderStage(Stage):
    """The direction that carries files: control lines held until decided, data counted."""

    def __init__(self, watch: ScpWatch) -> None:
        self._watch = watch

    def feed(self, data: bytes, stream: Stream) -> None:
        if stream != Stream.DATA:
            self.emit(data, stream)
            return
        s = self._watch.sending
        out: list[bytes] = []
        pos, size, start = 0, len(data), 0
        while pos < size and not self._watch.failed:
            if s.data_left:
                n = min(s.data_left, size - pos)
                pos += n
                s.data_left -= n
                continue
            if s.status_due:
                s.status_due = False
                self._watch.file_done(data[pos])
                if data[pos] == 0:
                    pos += 1
                continue  # else an error message line follows: read as a control line
            if pos > start:
                out.append(data[start:pos])
            end = data.find(b"\n", pos)
            if end < 0:
                s.line += data[pos:]
                if len(s.line) > MAX_LINE:
                    self._watch.fail("an scp control line is too long")
                pos = start = size
                break
            s.line += data[pos:end + 1]
            pos = start = end + 1
            line, s.line = bytes(s.line), bytearray()
            if self._watch.control(line[:-1]):
                out.append(line)
        if self._watch.failed:
            return
        if pos > start:
            out.append(data[start:pos] if start or pos < size else data)
        if out:
            self.emit(out[0] if len(out) == 1 else b"".join(out), Stream.DATA)


class AckStage(Stage):
    """The acknowledging direction: passed on; denials are injected between its messages."""

    def __init__(self, watch: ScpWatch) -> None:
        self._watch = watch
        self._in_line = False  # inside a \\x01/\\x02 message (up to its newline)
        self._queued: list[bytes] = []

    def feed(self, data: bytes, stream: Stream) -> None:
        if stream != Stream.DATA:
            self.emit(data, stream)
            return
        if not self._in_line and not self._queued:
            self._track(data)
            self.emit(data, stream)
            return
        self._track(data)  # rare: a message split across chunks with an injection waiting
        self.emit(data, stream)
        if not self._in_line and self._queued:
            for message in self._queued:
                self.emit(message, Stream.DATA)
            self._queued.clear()

    def _track(self, data: bytes) -> None:
        # Only the state at the end of the chunk matters: is a message still open?
        last_nl = data.rfind(b"\n")
        tail = data[last_nl + 1:] if last_nl >= 0 else data
        if last_nl < 0 and self._in_line:
            return
        self._in_line = bool(re.search(rb"[\x01\x02][^\n]*\Z", tail))

    def inject(self, message: bytes) -> None:
        """Send an scp message to the user's side between two of the target's messages."""
        if self._in_line:
            self._queued.append(message)
        else:
            self.emit(message, Stream.DATA)


class _Refused(Stage):
    """A refused transfer command: nothing passes either way; its first byte ends the channel.

    The command has started on the target (the relay opens it before data flows), but no byte
    of it reaches the user and none of the user's reaches it.
    """

    def __init__(self, shared: list[bool], reason: str) -> None:
        self._ended = shared  # one flag for both directions
        self._reason = reason

    def feed(self, data: bytes, stream: Stream) -> None:
        if not self._ended[0]:
            self._ended[0] = True
            self.ctx.end_channel(self._reason)


def _refused(reason: str) -> ChannelStages:
    shared = [False]
    return ChannelStages(input=[_Refused(shared, reason)], output=[_Refused(shared, reason)])


class ExecTransferFactory:
    """Adds the scp watch to ``scp -t/-f`` execs and decides ``rsync --server`` execs."""

    def __init__(self, config: Config) -> None:
        self._config = config

    def __call__(self, info: ChannelInfo, ctx: StageContext) -> ChannelStages | None:
        if info.kind != ChannelKind.EXEC or info.pty or info.command is None:
            return None
        policy = TransferPolicy.for_session(self._config, (info.user, info.email or ""),
                                            info.groups, info.target.name)
        scp = parse_scp(info.command)
        if scp is not None:
            return self._scp(scp, policy, ctx)
        rsync = parse_rsync(info.command)
        if rsync is not None:
            return self._rsync(rsync, policy, ctx)
        return None

    def _scp(self, command: ScpCommand, policy: TransferPolicy,
             ctx: StageContext) -> ChannelStages:
        log = TransferLog(ctx, "scp")
        watch = ScpWatch(ctx, command, policy, log)
        verdict = watch.start_verdict()
        if not verdict.allowed:
            path = shown(command.path.encode("utf-8", "surrogateescape"))
            log.record("read", path, "denied", reason=verdict.reason, rule=verdict.rule)
            return _refused(f"scp: {path}: {verdict.reason}")
        return ChannelStages(input=[watch.input], output=[watch.output])

    def _rsync(self, command: RsyncCommand, policy: TransferPolicy,
               ctx: StageContext) -> ChannelStages | None:
        paths = [shown(p.encode("utf-8", "surrogateescape")) for p in command.paths]
        verdict = TransferVerdict(True)
        for path in command.paths or (".",):
            verdict = policy.check(_policy_path(path), write=command.upload,
                                   read=not command.upload)
            if not verdict.allowed:
                break
        mode = "upload" if command.upload else "download"
        if not verdict.allowed:
            ctx.audit("rsync.denied", mode=mode, paths=paths, reason=verdict.reason,
                      rule=verdict.rule)
            return _refused(f"rsync: {verdict.reason}")
        ctx.audit("rsync.start", mode=mode, paths=paths)
        return None
