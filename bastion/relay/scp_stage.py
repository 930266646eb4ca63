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

# OpenSSH's scp reads a control line into char buf[2048]: a longer one is cut after 2047 bytes
# and its rest read as another line, so the watch refuses what the receiver would cut.
MAX_LINE = 2047  # bytes, the newline included
_SHELL_SPECIAL = re.compile(r"[*?\[\]{}~$`\\!]")
_CONTROL = re.compile(rb"([CD])([0-7]{3,5}) ([0-9]{1,20}) ([^\n]*)\Z", re.DOTALL)


# OpenSSH 9.2 scp's getopt string: options before the first operand, as POSIX getopt reads them
# (OpenSSH's own getopt does not permute: "scp -f /x -p" sends "/x" and "-p").
_SCP_OPTIONS = "12346ABCTdfOpqRrstv"
_SCP_OPTIONS_WITH_VALUE = "DFJMPSciloX"
# What a shell does with a command besides splitting words: more commands, redirections,
# substitutions. Where rules apply, an scp or rsync command with them is not judged, but refused.
_SHELL_OPERATORS = re.compile(r"[;&|<>()`$\n\r]|(^|\s)#")
# rsync options whose value names a file on the target: (writes it, else reads it).
_RSYNC_FILE_OPTIONS = {"--log-file": True, "--backup-dir": True, "--temp-dir": True,
                       "--partial-dir": True, "--write-batch": True, "--only-write-batch": True,
                       "--files-from": False, "--exclude-from": False, "--include-from": False,
                       "--read-batch": False, "--compare-dest": False, "--copy-dest": False,
                       "--link-dest": False}
_RSYNC_SHORT_WITH_VALUE = "BefMT@"  # popt takes the rest of the bundle, or the next word


@dataclass(frozen=True)
class ScpCommand:
    """What an exec of ``scp -t``/``scp -f`` asks for."""

    upload: bool  # -t (sink): the user sends files; -f (source): the target does
    paths: tuple[str, ...]  # the target of -t (one); the sources of -f (one or more)
    recursive: bool
    directory: bool  # -d: the path must be a folder

    @property
    def path(self) -> str:
        return self.paths[0]


@dataclass(frozen=True)
class RsyncCommand:
    """What an exec of ``rsync --server`` asks for."""

    upload: bool  # no --sender: the target receives
    paths: tuple[str, ...]
    files: tuple[tuple[str, bool], ...] = ()  # option values naming files: (path, writes)


def transfer_program(command: str) -> str | None:
    """``scp`` or ``rsync`` when the command runs one of them (parsed or not), else None."""
    try:
        argv = shlex.split(command)
    except ValueError:
        argv = command.split()
    name = posixpath.basename(argv[0]) if argv else ""
    return name if name in ("scp", "rsync") else None


def parse_scp(command: str) -> ScpCommand | None:
    """An ``scp -t``/``scp -f`` command line as OpenSSH's scp reads it, or None for anything
    else (other programs, unknown options, several targets for -t)."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if not argv or posixpath.basename(argv[0]) != "scp":
        return None
    flags: set[str] = set()
    i = 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        for j, option in enumerate(arg[1:], 1):
            if option in _SCP_OPTIONS_WITH_VALUE:
                if j == len(arg) - 1:  # the value is the next word
                    if i == len(argv):
                        return None
                    i += 1
                break
            if option not in _SCP_OPTIONS:
                return None
            flags.add(option)
    paths = tuple(argv[i:])
    # OpenSSH's scp sends when -f is given, even with -t; its sink takes exactly one target.
    if not paths or ("f" not in flags and ("t" not in flags or len(paths) != 1)):
        return None
    return ScpCommand(upload="f" not in flags, paths=paths, recursive="r" in flags,
                      directory="d" in flags)


def parse_rsync(command: str) -> RsyncCommand | None:
    """An ``rsync --server`` command line, or None for anything else."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if len(argv) < 2 or posixpath.basename(argv[0]) != "rsync" or "--server" not in argv:
        return None
    # rsync --server [--sender] OPTIONS . PATH...: the paths follow the "." argument; popt
    # reads options wherever they are.
    words: list[str] = []
    files: list[tuple[str, bool]] = []
    rest = iter(argv[1:])
    for arg in rest:
        if arg == "--":
            words.extend(rest)
        elif arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name in _RSYNC_FILE_OPTIONS:
                value = value if eq else next(rest, "")
                files.append((value, _RSYNC_FILE_OPTIONS[name]))
        elif arg.startswith("-") and len(arg) > 1:
            for j, option in enumerate(arg[1:], 1):
                if option in _RSYNC_SHORT_WITH_VALUE:
                    value = arg[j + 1:] or next(rest, "")
                    if option == "T":
                        files.append((value, True))
                    break
        else:
            words.append(arg)
    paths = tuple(words[1:]) if words[:1] == ["."] else ()
    return RsyncCommand(upload="--sender" not in argv, paths=paths,
                        files=tuple(f for f in files if f[0] != "-"))  # "-": the client's list


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

    def start_verdict(self) -> tuple[str, TransferVerdict]:
        """The decision on the command as a whole: each of a download's sources (uploads go
        per file), with the path it is about."""
        if not self.command.upload:
            for path in self.command.paths:
                verdict = self.policy.check(_policy_path(path), read=True)
                if not verdict.allowed:
                    return path, verdict
        return self.command.path, TransferVerdict(True)

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
        if not self.command.upload:
            # A source is sent under its last name: the entry is the source of that name (if
            # none or several sources have it, each is a candidate: all must be allowed).
            bases = [path.rstrip("/") or "/" for path in self.command.paths]
            same = [b for b in bases if posixpath.basename(b) == name] or bases
            return tuple(posixpath.join(posixpath.dirname(b), name) for b in same)
        base = self.command.path.rstrip("/") or "/"
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
        # A NUL ends the name where the receiver (a C string) reads it, not where policy would.
        if match is None or "/" in (name := match.group(4).decode("utf-8", "surrogateescape")) \
                or "\x00" in name or name in ("", ".", ".."):
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
                if len(s.line) >= MAX_LINE:  # its newline would be past the receiver's buffer
                    self._watch.fail("an scp control line is too long")
                pos = start = size
                break
            if len(s.line) + end + 1 - pos > MAX_LINE:
                self._watch.fail("an scp control line is too long")
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
        program = transfer_program(info.command)
        if program is None:
            return None
        policy = TransferPolicy.for_session(self._config, info.rule_names,
                                            info.groups, info.target.name)
        if policy.restricted and _SHELL_OPERATORS.search(info.command):
            return self._unreadable(program, "shell syntax", policy, ctx)
        scp = parse_scp(info.command)
        if scp is not None:
            return self._scp(scp, policy, ctx)
        rsync = parse_rsync(info.command)
        if rsync is not None:
            return self._rsync(rsync, policy, ctx)
        if policy.restricted:  # a transfer the bastion cannot follow is not run under rules
            return self._unreadable(program, "options", policy, ctx)
        return None

    @staticmethod
    def _unreadable(program: str, what: str, policy: TransferPolicy,
                    ctx: StageContext) -> ChannelStages:
        reason = f"the command's {what} cannot be judged"
        ctx.audit(f"{program}.denied", reason=reason, rule=policy.first_rule)
        return _refused(f"{program}: {reason}")

    def _scp(self, command: ScpCommand, policy: TransferPolicy,
             ctx: StageContext) -> ChannelStages:
        log = TransferLog(ctx, "scp")
        watch = ScpWatch(ctx, command, policy, log)
        source, verdict = watch.start_verdict()
        if not verdict.allowed:
            path = shown(source.encode("utf-8", "surrogateescape"))
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
        for path, writes in command.files if verdict.allowed else ():
            # Files an option names (a log, a backup folder, a list to read) are judged as the
            # paths are: written ones as uploads, read ones by the path rules.
            verdict = policy.check(_policy_path(path), write=writes, paths_only=not writes)
            if not verdict.allowed:
                paths.append(shown(path.encode("utf-8", "surrogateescape")))
                break
        mode = "upload" if command.upload else "download"
        if not verdict.allowed:
            ctx.audit("rsync.denied", mode=mode, paths=paths, reason=verdict.reason,
                      rule=verdict.rule)
            return _refused(f"rsync: {verdict.reason}")
        ctx.audit("rsync.start", mode=mode, paths=paths)
        return None
