"""Transfer-policy bypasses an outside probe found against OpenSSH 9.2's sftp-server and scp:
each is refused (or fails closed) here."""

from __future__ import annotations

import asyncio
import struct
import types
from typing import Any

import asyncssh
import pytest
from test_sftp_protocol import _Ctx, _open
from test_sftp_protocol import _packet as _pkt
from test_sftp_protocol import _string as _s

from bastion.config.model import Target, TransferRule
from bastion.policy.transfers import ForwardGrant, TransferPolicy
from bastion.relay import forwarding
from bastion.relay import sftp_protocol as p
from bastion.relay.pipeline import ChannelKind, Pipeline, Stream
from bastion.relay.scp_stage import ExecTransferFactory, ScpWatch, parse_rsync, parse_scp
from bastion.relay.sftp_stage import sftp_stages
from bastion.relay.transfer_log import TransferLog


def _one_path(ptype: int, rid: int, path: bytes) -> bytes:
    return _pkt(ptype, struct.pack(">I", rid) + _s(path))


def _name(rid: int, name: bytes) -> bytes:
    return _pkt(p.NAME, struct.pack(">II", rid, 1) + _s(name) + _s(name) + struct.pack(">I", 0))


def _handle(rid: int, handle: bytes) -> bytes:
    return _pkt(p.HANDLE, struct.pack(">I", rid) + _s(handle))


def _fsetstat(rid: int, handle: bytes) -> bytes:
    return _pkt(p.FSETSTAT, struct.pack(">I", rid) + _s(handle) + struct.pack(">II", 1, 0))


class _Sftp:
    def __init__(self, **rule: Any) -> None:
        policy = TransferPolicy([(0, TransferRule(groups=("ops",), **rule))])
        self.ctx = _Ctx()
        self.to_target: list[bytes] = []
        self.to_user: list[bytes] = []
        stages = sftp_stages(self.ctx, policy, lambda e: None)  # type: ignore[arg-type]
        self.pipe = Pipeline.build(
            [lambda i, c: stages], self.ctx.info, self.ctx,  # type: ignore[arg-type]
            to_target=lambda d, s: self.to_target.append(bytes(d)), target_end=lambda: None,
            record_input=lambda d, s: None, record_output=lambda d, s: None,
            to_user=lambda d, s: self.to_user.append(bytes(d)), user_end=lambda: None)

    def forwarded(self, data: bytes) -> bool:
        before = len(self.to_target)
        self.pipe.input.feed(data, Stream.DATA)
        return b"".join(self.to_target[before:]) == data

    def answer(self, data: bytes) -> None:
        self.pipe.output.feed(data, Stream.DATA)


@pytest.mark.parametrize("pflags", [0, p.FXF_APPEND, p.FXF_CREAT, p.FXF_EXCL, p.FXF_TRUNC])
def test_open_without_read_bit_is_a_read_as_openssh_opens_it(pflags: int) -> None:
    # OpenSSH's flags_from_portable starts from O_RDONLY: no READ/WRITE bit still reads.
    assert not _Sftp(download=False).forwarded(_open(1, b"/etc/shadow", pflags))
    if pflags:  # CREAT, TRUNC, APPEND, EXCL change the file: an upload too
        assert not _Sftp(upload=False).forwarded(_open(1, b"/srv/x", pflags))
    assert _Sftp(upload=False).forwarded(_open(1, b"/srv/x", p.FXF_READ))


@pytest.mark.parametrize("rule,packet", [
    ({"deny_paths": ("**/*.pem",)}, _open(1, b"/srv/key.pem\x00", p.FXF_WRITE | p.FXF_CREAT)),
    ({"deny_paths": ("**/*.pem",)}, _one_path(p.REMOVE, 1, b"/srv/key.pem\x00")),
    ({"allow_paths": ("/srv/www/**",)}, _one_path(p.OPENDIR, 1, b"/srv/www/..\x00")),
    ({"allow_paths": ("/srv/www/**",)}, _open(1, b"/srv/www/ok\x00/../../x", p.FXF_READ)),
])
def test_a_trailing_nul_is_stripped_as_the_server_does_and_others_refused(
        rule: dict[str, Any], packet: bytes) -> None:
    sftp = _Sftp(**rule)
    assert not sftp.forwarded(packet)
    assert sftp.forwarded(_one_path(p.OPENDIR, 2, b"/srv/www/\x00"))  # one NUL is fine


def test_start_folder_comes_only_from_the_answer_to_dot() -> None:
    sftp = _Sftp(deny_paths=("/home/alice/.ssh/**",))
    assert sftp.forwarded(_one_path(p.REALPATH, 1, b"~"))
    sftp.answer(_name(1, b"/home/alice/~"))  # what sftp-server answers to "~"
    assert not sftp.forwarded(_open(2, b".ssh/authorized_keys", p.FXF_WRITE))  # unresolved
    assert sftp.forwarded(_one_path(p.REALPATH, 3, b"."))
    sftp.answer(_name(3, b"/home/alice"))
    assert not sftp.forwarded(_open(4, b".ssh/authorized_keys", p.FXF_WRITE))
    assert sftp.forwarded(_open(5, b"notes.txt", p.FXF_WRITE))


def test_a_request_id_already_in_flight_is_refused() -> None:
    sftp = _Sftp(deny_paths=("/home/alice/.ssh/**",))
    assert sftp.forwarded(_one_path(p.REALPATH, 7, b"/tmp"))
    assert not sftp.forwarded(_one_path(p.REALPATH, 7, b"."))
    sftp.answer(_name(7, b"/tmp"))
    assert not sftp.forwarded(_open(8, b".ssh/authorized_keys", p.FXF_WRITE))
    # A metadata request cannot hide an open's reply either (STAT, then OPEN, one id).
    sftp = _Sftp(upload=False)
    assert sftp.forwarded(_one_path(p.STAT, 3, b"/"))
    assert not sftp.forwarded(_open(3, b"/srv/data.db", p.FXF_READ))


def test_fsetstat_on_a_hidden_or_unknown_handle_is_refused() -> None:
    sftp = _Sftp(upload=False)
    assert sftp.forwarded(_open(3, b"/srv/data.db", p.FXF_READ))
    assert not sftp.forwarded(_one_path(p.REALPATH, 3, b"/"))  # would hide the handle
    sftp.answer(_handle(3, b"H1"))
    assert not sftp.forwarded(_fsetstat(4, b"H1"))  # known, and uploads are off
    assert not sftp.forwarded(_fsetstat(5, b"H2"))  # never opened through the bastion
    read = _pkt(p.READ, struct.pack(">I", 6) + _s(b"H2") + struct.pack(">QI", 0, 10))
    assert not sftp.forwarded(read)
    assert sftp.forwarded(_pkt(p.READ, struct.pack(">I", 7) + _s(b"H1")
                               + struct.pack(">QI", 0, 10)))


def _scp_watch(command: str, **rule: Any) -> tuple[ScpWatch, _Ctx, list[bytes]]:
    ctx = _Ctx(ChannelKind.EXEC, command)
    parsed = parse_scp(command)
    assert parsed is not None
    watch = ScpWatch(ctx, parsed,  # type: ignore[arg-type]
                     TransferPolicy([(0, TransferRule(groups=("ops",), **rule))]),
                     TransferLog(ctx, "scp"))  # type: ignore[arg-type]
    sent: list[bytes] = []
    watch.input.emit = lambda d, s: sent.append(bytes(d))  # type: ignore[method-assign]
    watch.ack.emit = lambda d, s: None  # type: ignore[method-assign]
    return watch, ctx, sent


def test_scp_names_with_a_nul_are_refused() -> None:
    watch, ctx, sent = _scp_watch("scp -t -d /up", deny_paths=("**/*.pem",))
    watch.input.feed(b"C0644 4 key.pem\x00\n", Stream.DATA)
    assert sent == [] and ctx.ended is not None


@pytest.mark.parametrize("chunk", [1, 100, 5000])
def test_scp_control_lines_longer_than_the_sinks_buffer_are_refused(chunk: int) -> None:
    # OpenSSH's sink cuts at 2047 bytes and reads the rest as a new line ("D... private").
    line = b"D0755 0 " + b"A" * 2039 + b"D0755 0 private\n"
    watch, ctx, sent = _scp_watch("scp -r -t -d /up", deny_paths=("/up/private/**",))
    for i in range(0, len(line), chunk):
        watch.input.feed(line[i:i + chunk], Stream.DATA)
    assert sent == [] and ctx.ended is not None
    longest = b"C0644 1 " + b"n" * (2047 - 9) + b"\n"  # 2047 bytes with its newline: whole
    watch, ctx, sent = _scp_watch("scp -t -d /up")
    watch.input.feed(longest, Stream.DATA)
    assert b"".join(sent) == longest and ctx.ended is None


def _exec(command: str, **rule: Any) -> tuple[Any, _Ctx]:
    from pathlib import Path

    from bastion.config.model import Config, PathsConfig, ServerConfig, VaultConfig
    config = Config(source=Path("t.toml"), server=ServerConfig(),
                    paths=PathsConfig(Path("s"), Path("r"), None),
                    vault=VaultConfig(path=Path("v"), key_file=Path("k")),
                    transfers=(TransferRule(groups=("ops",), **rule),),
                    targets=(Target(name="web01", host="h"),))
    ctx = _Ctx(ChannelKind.EXEC, command)
    return ExecTransferFactory(config)(ctx.info, ctx), ctx  # type: ignore[arg-type]


@pytest.mark.parametrize("command", ["scp -f /etc/shadow /etc/hosts", "scp -f /srv/ok -p",
                                     "scp -f /srv/ok /etc/shadow", "scp -Z -f /srv/ok",
                                     "scp -f /srv/ok; scp -f /etc/shadow",
                                     "scp -f '/srv/ok' -o x;scp${IFS}-f${IFS}/etc/shadow"])
def test_scp_commands_are_judged_whole_or_refused(command: str) -> None:
    stages, ctx = _exec(command, allow_paths=("/srv/**",))
    assert stages is not None and type(stages.input[0]).__name__ == "_Refused"
    assert ctx.events and ctx.events[0]["event"] == "scp.denied"
    stages, ctx = _exec("scp -f /srv/a /srv/b", allow_paths=("/srv/**",))
    assert stages is not None and type(stages.input[0]).__name__ != "_Refused"


@pytest.mark.parametrize("option", ["--log-file=/etc/cron.d/x", "--backup-dir=/root",
                                    "--temp-dir /etc", "-T/etc", "--partial-dir=/etc",
                                    "--link-dest=/etc", "--files-from=/etc/shadow",
                                    "--exclude-from=/etc/shadow", "--write-batch=/etc/x"])
def test_rsync_options_that_name_files_meet_the_path_rules(option: str) -> None:
    command = f"rsync --server --sender {option} -vlogDtpre.iLsfxC . /srv/www/"
    assert parse_rsync(command) is not None
    stages, ctx = _exec(command, allow_paths=("/srv/www/**",))
    assert stages is not None and ctx.events[0]["event"] == "rsync.denied"
    stages, ctx = _exec("rsync --server --sender --files-from=- -vlogDtpre.iLsfxC . /srv/www/",
                        allow_paths=("/srv/www/**",))
    assert stages is None and ctx.events[0]["event"] == "rsync.start"


class _Session:
    refusal = None
    request = types.SimpleNamespace(target="web01")
    recording = None
    client = types.SimpleNamespace(conn_id="c")
    identity = types.SimpleNamespace(name="alice", rule_names=("alice",), groups=("ops",))

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.services = types.SimpleNamespace(
            config=None, audit=types.SimpleNamespace(
                emit=lambda e, **f: self.events.append((e, f))))

    async def connect(self, request: Any) -> None:
        return None


@pytest.mark.parametrize("host,port", [("127.0.0.1", 70000), ("a" * 70 + ".x", 5432),
                                       ("a\x00b", 5432), ("db", 0)])
def test_a_destination_the_resolver_cannot_take_is_a_refused_forward(
        host: str, port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    grant = ForwardGrant("forwarding[0]", "bastion")
    monkeypatch.setattr(forwarding, "forward_grant", lambda *a: grant)
    session = _Session()
    with pytest.raises(asyncssh.ChannelOpenError):
        forwarding.local_forward(session, host, port, "o", 1)  # type: ignore[arg-type]
    assert [e for e, _ in session.events] == ["channel.refused"]
    # And if such a destination reaches the open, it fails as a forward, audited.
    session = _Session()
    forward = forwarding.Forward(session, "d", "o:1", grant)  # type: ignore[arg-type]
    with pytest.raises(asyncssh.ChannelOpenError):
        asyncio.run(forwarding._open(forward, host, port))
    assert [e for e, _ in session.events] == ["forward.failed"]
