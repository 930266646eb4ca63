"""The sftp subsystem relay's stages: watch every file operation, enforce ``[[transfers]]``.

The channel's bytes go to the target's own ``sftp`` subsystem; these two stages (one per
direction, sharing one ``SftpWatch``) read the packets as they pass. Requests that need a decision
(open, remove, rename, mkdir, ...) are held until their head is complete, then forwarded or,
when policy refuses, dropped and answered with SSH_FX_PERMISSION_DENIED: the session goes on.
Replies pair request ids with handles and paths, so each file is audited once when it closes,
with the bytes read and written (counted from READ/DATA and WRITE headers; data is never copied).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.config.model import Config
from bastion.errors import RecordingError
from bastion.policy.transfers import TransferPolicy, TransferVerdict, normalize_path
from bastion.relay import sftp_protocol as p
from bastion.relay.pipeline import (
    ChannelInfo,
    ChannelKind,
    ChannelStages,
    Stage,
    StageContext,
    Stream,
)
from bastion.relay.transfer_log import JsonlOpsWriter, OpsSink, TransferLog

log = logging.getLogger("bastion.relay")

OPS_LOG_SUFFIX = "sftp.ops.jsonl"  # the shared recording contract's name for a channel's ops
MAX_PENDING = 65536  # outstanding requests one channel may have (OpenSSH keeps 64 or so)
MAX_HANDLES = 4096  # open handles one channel may have

# OPEN flags that create or change the file, whatever the access mode (O_CREAT, O_TRUNC, ...).
_CHANGE_FLAGS = p.FXF_WRITE | p.FXF_APPEND | p.FXF_CREAT | p.FXF_TRUNC | p.FXF_EXCL
# Extensions OpenSSH's client uses that only read metadata: passed on, not audited.
_READ_ONLY_EXTENSIONS = {b"statvfs@openssh.com", b"limits@openssh.com",
                         b"users-groups-by-id@openssh.com", b"check-file-name"}
# The same, on a handle: refused, like any handle operation, on a handle not seen opened.
_HANDLE_EXTENSIONS = {b"fstatvfs@openssh.com", b"fsync@openssh.com", b"check-file-handle"}
# Requests on a handle; with rules in force the handle must be one the watch saw opened, since
# only its open tells what file it is (a handle can be guessed, or its open hidden).
_HANDLE_OPS = {p.CLOSE: "close", p.READ: "read", p.WRITE: "write", p.FSETSTAT: "setstat",
               p.FSTAT: "stat", p.READDIR: "readdir"}
_METADATA = {p.STAT: "stat", p.LSTAT: "stat", p.READLINK: "readlink"}
_UNKNOWN_HANDLE = TransferVerdict(False, "the handle was not opened through the bastion")
_NOT_LOGGED = {"read", "realpath", "stat", "readdir", "readlink", "metadata"}
_TWO_PATH_EXTENSIONS = {b"posix-rename@openssh.com": "rename",
                        b"hardlink@openssh.com": "hardlink"}


@dataclass
class _File:
    """An open handle: what it names and what moved through it."""

    path: str  # shown (safe) form
    norm: str | None  # normalised, for policy
    mode: str  # "read", "write", "read-write" or "list"
    flags: list[str]
    bytes_read: int = 0
    bytes_written: int = 0


@dataclass
class _Request:
    """A request waiting for its reply."""

    op: str
    path: str | None = None  # shown form
    norm: str | None = None  # normalised, for policy
    to: str | None = None  # shown form (rename, symlink)
    handle: bytes | None = None
    size: int = 0  # bytes asked to write
    mode: str = ""
    flags: list[str] | None = None
    home: bool = False  # REALPATH: the answer is the server's start folder ("." asked)


class SftpWatch:
    """One channel's SFTP state: outstanding requests, open handles, the policy and the log."""

    def __init__(self, ctx: StageContext, policy: TransferPolicy, log_: TransferLog,
                 on_finish: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.ctx = ctx
        self._on_finish = on_finish
        self._finished = False
        self.policy = policy
        self.log = log_
        self.home: str | None = None  # the server's start directory (REALPATH "." answer)
        self.pending: dict[int, _Request] = {}
        self.handles: dict[bytes, _File] = {}
        self.input = SftpInputStage(self)
        self.output = SftpOutputStage(self)
        self.failed = False

    def fail(self, reason: str) -> bool:
        """The stream cannot be followed: end the channel (fail closed); drop the packet."""
        if not self.failed:
            self.failed = True
            self.ctx.audit("sftp.error", reason=reason)
            self.ctx.end_channel(f"sftp: {reason}")
        return False

    # -- requests (user -> target) ----------------------------------------------------------
    def request(self, ptype: int, length: int, head: bytes) -> bool:
        """Decide a client packet: True to forward it."""
        if self.failed:
            return False
        if ptype == p.INIT:
            return True
        reader = p.Reader(head)
        try:
            request_id = reader.uint32()
        except p.Malformed:
            return self.fail("a request too short to answer")
        if ptype != p.WRITE and len(head) < length + 4:
            return self.deny(request_id, None, "request", p.Status.FAILURE,
                             "the request is too large for the bastion")
        if len(self.pending) >= MAX_PENDING:
            return self.fail("too many outstanding requests")
        if request_id in self.pending:
            # Its reply would be paired with the wrong request (a hidden handle, a false start
            # folder): the server must never see two requests under one id.
            return self.deny(request_id, None, "request", p.Status.FAILURE,
                             "the request id is already in use")
        try:
            return self._request(ptype, request_id, reader)
        except p.Malformed:
            return self.deny(request_id, None, "request", p.Status.BAD_MESSAGE,
                             "malformed request")

    def _path(self, raw: bytes) -> tuple[str | None, str]:
        """(normalised path for policy, shown path for people)."""
        return normalize_path(p.as_path(raw), self.home), p.shown(raw)

    def _request(self, ptype: int, rid: int, r: p.Reader) -> bool:
        if ptype in _HANDLE_OPS:
            return self._handle_op(ptype, rid, r)
        if ptype == p.OPEN:
            norm, path = self._path(r.cstring())
            pflags = r.uint32()
            # As OpenSSH's server opens it: no READ or WRITE bit is O_RDONLY, and CREAT, TRUNC,
            # APPEND, EXCL change the file whatever the access mode.
            read = bool(pflags & p.FXF_READ) or not pflags & p.FXF_WRITE
            write = bool(pflags & _CHANGE_FLAGS)
            mode = "read-write" if write and read else ("write" if write else "read")
            verdict = self.policy.check(norm, write=write, read=read)
            if not verdict.allowed:
                return self.refuse(rid, mode, path, verdict)
            self.pending[rid] = _Request("open", path, norm, mode=mode,
                                         flags=p.open_flag_names(pflags))
            return True
        if ptype == p.OPENDIR:
            norm, path = self._path(r.cstring())
            verdict = self.policy.check(norm, paths_only=True)
            if not verdict.allowed:
                return self.refuse(rid, "list", path, verdict)
            self.pending[rid] = _Request("open", path, norm, mode="list", flags=[])
            return True
        one_path = {p.REMOVE: "remove", p.MKDIR: "mkdir", p.RMDIR: "rmdir", p.SETSTAT: "setstat"}
        if ptype in one_path:
            return self._write_op(rid, one_path[ptype], r.cstring())
        if ptype == p.RENAME:
            return self._write_op(rid, "rename", r.cstring(), r.cstring())
        if ptype == p.SYMLINK:
            # OpenSSH sends (target, link): its server swapped the spec's order long ago.
            target, link = r.cstring(), r.cstring()
            return self._write_op(rid, "symlink", link, target, relative_second=True)
        if ptype == p.REALPATH:
            # The server takes "" as "."; any other answer ("~" is "<cwd>/~") is not home.
            self.pending[rid] = _Request("realpath", home=r.cstring() in (b".", b""))
            return True
        if ptype == p.EXTENDED:
            return self._extended(rid, r)
        if ptype in _METADATA:  # not policed, but tracked: every id in flight is known
            self.pending[rid] = _Request(_METADATA[ptype])
            return True
        if self.policy.restricted:  # a request type the bastion cannot judge (deny by default)
            return self.deny(rid, None, "request", p.Status.OP_UNSUPPORTED,
                             f"request type {ptype} is not supported")
        return True

    def _handle_op(self, ptype: int, rid: int, r: p.Reader) -> bool:
        op = _HANDLE_OPS[ptype]
        handle = r.string()
        file = self.handles.get(handle)
        if file is None and self.policy.restricted:
            return self.refuse(rid, op, None, _UNKNOWN_HANDLE)
        if ptype == p.WRITE:
            _offset, size = r.uint64(), r.uint32()
            self.pending[rid] = _Request("write", handle=handle, size=size)
            return True
        if ptype == p.FSETSTAT and file is not None:
            verdict = self.policy.check(file.norm, write=True)
            if not verdict.allowed:
                return self.refuse(rid, "setstat", file.path, verdict)
        self.pending[rid] = _Request(op, file.path if file else None, handle=handle)
        return True

    def _write_op(self, rid: int, op: str, first: bytes, second: bytes | None = None, *,
                  relative_second: bool = False) -> bool:
        norm, path = self._path(first)
        to_norm: str | None = None
        to: str | None = None
        if second is not None:
            raw_second = p.as_path(second)
            if relative_second and not raw_second.startswith("/") and norm is not None:
                raw_second = posixpath.join(posixpath.dirname(norm), raw_second)
            to_norm, to = normalize_path(raw_second, self.home), p.shown(second)
        for candidate in (norm, to_norm) if second is not None else (norm,):
            verdict = self.policy.check(candidate, write=True)
            if not verdict.allowed:
                return self.refuse(rid, op, path, verdict, to=to)
        self.pending[rid] = _Request(op, path, to=to)
        return True

    def _extended(self, rid: int, r: p.Reader) -> bool:
        name = r.cstring()  # the server matches the name as a C string too
        if name in _TWO_PATH_EXTENSIONS:
            return self._write_op(rid, _TWO_PATH_EXTENSIONS[name], r.cstring(), r.cstring())
        if name == b"lsetstat@openssh.com":
            return self._write_op(rid, "setstat", r.cstring())
        if name == b"expand-path@openssh.com":
            # OpenSSH expands "~" and "~/" to ".", its start folder; "home-directory" answers
            # the account's home, which need not be where relative paths start.
            self.pending[rid] = _Request("realpath",
                                         home=r.cstring() in (b".", b"", b"~", b"~/"))
            return True
        if name in _READ_ONLY_EXTENSIONS or name == b"home-directory":
            self.pending[rid] = _Request("metadata")
            return True
        if name in _HANDLE_EXTENSIONS:
            if r.string() not in self.handles and self.policy.restricted:
                return self.refuse(rid, "extended", None, _UNKNOWN_HANDLE,
                                   extension=p.shown(name))
            self.pending[rid] = _Request("metadata")
            return True
        if name == b"copy-data":
            # Server-side copy between two handles that policy already allowed when opened.
            read_handle, _, length = r.string(), r.uint64(), r.uint64()
            _, write_handle = r.uint64(), r.string()
            source, dest = self.handles.get(read_handle), self.handles.get(write_handle)
            if (source is None or dest is None) and self.policy.restricted:
                return self.refuse(rid, "copy", None, _UNKNOWN_HANDLE)
            self.pending[rid] = _Request("copy", source.path if source else None,
                                         to=dest.path if dest else None, size=length)
            return True
        shown = p.shown(name[:128])
        if self.policy.restricted:  # an operation we cannot judge: refused where rules apply
            return self.refuse(rid, "extended", None,
                               TransferVerdict(False, f"extension {shown} is not allowed"),
                               extension=shown)
        self.pending[rid] = _Request("extended", shown)
        return True

    def refuse(self, rid: int, op: str, path: str | None, verdict: TransferVerdict,
               **extra: Any) -> bool:
        """Policy said no: log it, answer the user with a permission error, drop the request."""
        self.log.record(op, path, "denied", reason=verdict.reason, rule=verdict.rule, **extra)
        return self.deny(rid, path, op, p.Status.PERMISSION_DENIED,
                         f"bastion: {verdict.reason}")

    def deny(self, rid: int, path: str | None, op: str, code: p.Status, message: str) -> bool:
        """Answer request ``rid`` with ``code`` ourselves; the request is not forwarded."""
        if code != p.Status.PERMISSION_DENIED:
            self.log.record(op, path, "refused", reason=message)
        self.output.inject(p.encode_status(rid, code, message))
        return False

    # -- replies (target -> user) -----------------------------------------------------------
    def reply(self, ptype: int, length: int, head: bytes) -> bool:
        """Read a server packet (always forwarded)."""
        if ptype == p.VERSION:
            version = p.Reader(head).uint32() if len(head) >= 9 else -1
            if version != 3:
                return self.fail(f"the target speaks SFTP version {version}, not 3")
            return True
        if len(head) < 9:
            return True
        r = p.Reader(head)
        request = self.pending.pop(r.uint32(), None)
        if request is None:
            return True
        try:
            self._reply(ptype, request, r)
        except p.Malformed:
            log.debug("malformed sftp reply to %s", request.op)
        return True

    def _reply(self, ptype: int, request: _Request, r: p.Reader) -> None:
        op = request.op
        if ptype == p.DATA and op == "read":
            file = self.handles.get(request.handle or b"")
            if file is not None:
                file.bytes_read += r.uint32()
            return
        if ptype == p.HANDLE and op == "open":
            if len(self.handles) >= MAX_HANDLES:
                self.fail("too many open handles")
                return
            handle = r.string()
            assert request.path is not None
            self.handles[handle] = _File(request.path, request.norm, request.mode,
                                         request.flags or [])
            if request.mode != "list":
                self.log.audit("open", path=request.path, mode=request.mode,
                               flags=request.flags or [])
            return
        if ptype == p.NAME and op == "realpath":
            if self.home is None and request.home:
                r.uint32()  # count
                name = p.as_path(r.string())
                if name.startswith("/"):
                    self.home = normalize_path(name, None)
            return
        if ptype != p.STATUS:
            return
        code = r.uint32()
        status = p.status_name(code)
        if op == "write":
            file = self.handles.get(request.handle or b"")
            if file is not None and code == p.Status.OK:
                file.bytes_written += request.size
        elif op == "close":
            file = self.handles.pop(request.handle or b"", None)
            if file is not None and file.mode != "list":
                self.log.record(file.mode, file.path, status, bytes_read=file.bytes_read,
                                bytes_written=file.bytes_written, flags=file.flags,
                                event="close")
        elif op == "open":  # the open failed (a HANDLE would have answered it)
            self.log.record(request.mode, request.path, status, flags=request.flags,
                            event="open")
        elif op not in _NOT_LOGGED:
            self.log.record(op, request.path, status, to=request.to,
                            bytes_written=request.size if op == "copy" else 0)

    def finish(self) -> None:
        """The channel ended: files still open are logged with what moved through them."""
        if self._finished:
            return
        self._finished = True
        for file in self.handles.values():
            if file.mode != "list":
                self.log.record(file.mode, file.path, "unclosed", bytes_read=file.bytes_read,
                                bytes_written=file.bytes_written, flags=file.flags,
                                event="close")
        self.handles.clear()
        self.pending.clear()
        if self._on_finish is not None:
            self._on_finish(self.log.summary())


class SftpInputStage(Stage):
    """User -> target: frames requests; denied ones are dropped (and answered)."""

    def __init__(self, watch: SftpWatch) -> None:
        self._watch = watch
        self._framer = p.Framer(watch.request, from_client=True)

    def feed(self, data: bytes, stream: Stream) -> None:
        try:
            pieces = self._framer.feed(data)
        except p.ProtocolViolation as exc:
            self._watch.fail(str(exc))
            return
        _emit_pieces(self.emit, pieces)

    def close(self) -> None:
        self._watch.finish()


class SftpOutputStage(Stage):
    """Target -> user: frames replies to learn handles, sizes and results; injects denials."""

    def __init__(self, watch: SftpWatch) -> None:
        self._watch = watch
        self._framer = p.Framer(watch.reply, from_client=False, passive=True)
        self._ended = False

    def feed(self, data: bytes, stream: Stream) -> None:
        if stream != Stream.DATA:
            self.emit(data, stream)
            return
        try:
            pieces = self._framer.feed(data)
        except p.ProtocolViolation as exc:
            self._watch.fail(str(exc))
            return
        _emit_pieces(self.emit, pieces)

    def inject(self, packet: bytes) -> None:
        """Send a whole packet to the user between two of the target's packets."""
        if not self._ended and self._framer.inject(packet):
            self.emit(packet, Stream.DATA)

    def end(self) -> None:
        self._ended = True
        self.emit_end()
        self._watch.finish()  # the server is done: nothing more will be answered


def _emit_pieces(emit: Callable[[bytes, Stream], None], pieces: list[p.Piece]) -> None:
    data = p.join(pieces)  # usually the chunk itself: no copy
    if data is not None:
        emit(data, Stream.DATA)


SummarySink = Callable[[ChannelInfo, dict[str, Any]], None]


def ops_log_path(config: Config, info: ChannelInfo) -> Path:
    """Where a channel's ops log goes: ``<spool>/<session>/<n>-sftp.ops.jsonl``."""
    return config.paths.spool_dir / info.session_id / f"{info.channel}-{OPS_LOG_SUFFIX}"


class SftpStageFactory:
    """Adds the SFTP watch to sftp subsystem channels.

    ``ops_sink_for(info)`` gives the channel's ops log sink; by default a ``JsonlOpsWriter`` at
    ``ops_log_path`` (closed, fsynced, when the channel ends). ``on_summary(info, summary)``
    receives the channel's transfer summary when it ends; by default it is audited as
    ``sftp.summary``.
    """

    def __init__(self, config: Config,
                 ops_sink_for: Callable[[ChannelInfo], OpsSink | None] | None = None,
                 on_summary: SummarySink | None = None) -> None:
        self._config = config
        self._ops_sink_for = ops_sink_for
        self._on_summary = on_summary

    def __call__(self, info: ChannelInfo, ctx: StageContext) -> ChannelStages | None:
        if info.kind != ChannelKind.SFTP:
            return None
        policy = TransferPolicy.for_session(self._config, info.rule_names,
                                            info.groups, info.target.name)
        writer: JsonlOpsWriter | None = None
        if self._ops_sink_for is not None:
            sink = self._ops_sink_for(info)
        else:
            sink = writer = JsonlOpsWriter(ops_log_path(self._config, info))
        on_summary = self._on_summary

        def finished(summary: dict[str, Any]) -> None:
            if writer is not None:
                try:
                    writer.close()
                except RecordingError as exc:
                    ctx.audit("recording.error", error=str(exc))
            if on_summary is not None:
                on_summary(info, summary)
            else:
                ctx.audit("sftp.summary", **{k: v for k, v in summary.items()
                                             if k != "entries"})

        return sftp_stages(ctx, policy, sink, finished)


def sftp_stages(ctx: StageContext, policy: TransferPolicy, sink: OpsSink | None = None,
                on_finish: Callable[[dict[str, Any]], None] | None = None) -> ChannelStages:
    """The two stages of one sftp channel under ``policy``."""
    watch = SftpWatch(ctx, policy, TransferLog(ctx, "sftp", sink), on_finish)
    return ChannelStages(input=[watch.input], output=[watch.output])
