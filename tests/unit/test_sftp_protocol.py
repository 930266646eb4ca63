"""The SFTP framer, decoders and the transfer policy, without any process."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from bastion.config.model import Target, TransferRule
from bastion.policy.transfers import TransferPolicy, glob_regex, normalize_path
from bastion.relay import sftp_protocol as p
from bastion.relay.pipeline import ChannelInfo, ChannelKind, Pipeline, Stream
from bastion.relay.sftp_stage import sftp_stages


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _packet(ptype: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, ptype) + body


def _open(rid: int, path: bytes, pflags: int) -> bytes:
    return _packet(p.OPEN, struct.pack(">I", rid) + _string(path) + struct.pack(">II", pflags, 0))


def _write(rid: int, handle: bytes, data: bytes) -> bytes:
    return _packet(p.WRITE, struct.pack(">I", rid) + _string(handle) + struct.pack(">Q", 0)
                   + _string(data))


def _status(rid: int, code: int) -> bytes:
    return _packet(p.STATUS, struct.pack(">II", rid, code) + _string(b"") + _string(b""))


def _handle(rid: int, handle: bytes) -> bytes:
    return _packet(p.HANDLE, struct.pack(">I", rid) + _string(handle))


def _split_feed(framer: p.Framer, data: bytes, size: int) -> bytes:
    out = []
    for i in range(0, len(data), size):
        out.extend(framer.feed(data[i:i + size]))
    return b"".join(out)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1000, 100000])
def test_framer_passes_every_byte_whatever_the_chunking(chunk: int) -> None:
    stream = (_open(1, b"/tmp/a", p.FXF_READ) + _write(2, b"h1", b"x" * 5000)
              + _packet(p.CLOSE, struct.pack(">I", 3) + _string(b"h1")))
    seen: list[tuple[int, int]] = []

    def decide(ptype: int, length: int, head: bytes) -> bool:
        seen.append((ptype, len(head)))
        return True

    assert _split_feed(p.Framer(decide, from_client=True), stream, chunk) == stream
    # WRITE's head stops before its data: the 5000 bytes are never collected.
    assert seen == [(p.OPEN, 4 + 1 + 4 + 10 + 8), (p.WRITE, 13 + 2 + 12),
                    (p.CLOSE, 4 + 1 + 4 + 6)]


@pytest.mark.parametrize("chunk", [1, 2, 13, 4096, 100000])
def test_passive_framer_passes_chunks_whole_and_reads_every_head(chunk: int) -> None:
    stream = b"".join(_packet(p.DATA, struct.pack(">I", i) + _string(b"d" * (i * 7)))
                      + _status(i, 1) for i in range(1, 40))
    seen: list[tuple[int, bytes]] = []
    framer = p.Framer(lambda t, n, h: bool(seen.append((t, h[5:9]))) or True,
                      from_client=False, passive=True)
    out = []
    for i in range(0, len(stream), chunk):
        piece = stream[i:i + chunk]
        got = framer.feed(piece)
        assert got == [piece]  # whole, untouched
        out.extend(got)
    assert b"".join(out) == stream
    assert seen == [(t, struct.pack(">I", i)) for i in range(1, 40) for t in (p.DATA, p.STATUS)]


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_framer_drops_refused_packets_whole(chunk: int) -> None:
    keep1, drop, keep2 = (_open(1, b"/a", p.FXF_READ), _write(2, b"h", b"y" * 3000),
                          _open(3, b"/b", p.FXF_READ))
    framer = p.Framer(lambda t, n, h: t != p.WRITE, from_client=True)
    assert _split_feed(framer, keep1 + drop + keep2, chunk) == keep1 + keep2


@pytest.mark.parametrize("passive", [False, True])
def test_framer_injects_only_between_packets(passive: bool) -> None:
    framer = p.Framer(lambda t, n, h: True, from_client=False, passive=passive)
    data = _packet(p.DATA, struct.pack(">I", 9) + _string(b"z" * 100))
    first = b"".join(framer.feed(data[:40]))
    assert not framer.inject(b"INJECTED")  # mid-packet: queued
    rest = b"".join(framer.feed(data[40:]))
    assert first + rest == data + b"INJECTED"
    assert framer.inject(b"NOW")  # at a boundary: may go at once


def test_framer_refuses_absurd_lengths() -> None:
    framer = p.Framer(lambda t, n, h: True, from_client=True)
    with pytest.raises(p.ProtocolViolation):
        framer.feed(struct.pack(">IB", p.MAX_PACKET + 1, p.WRITE))


@pytest.mark.parametrize(("path", "home", "expected"), [
    ("/a/b/../c", None, "/a/c"),
    ("//etc///passwd", None, "/etc/passwd"),
    ("../../../../etc/shadow", "/home/u", "/etc/shadow"),
    ("x/./y", "/home/u", "/home/u/x/y"),
    ("x", None, None),
    ("/..", None, "/"),
])
def test_paths_are_normalised_before_policy(path: str, home: str | None,
                                            expected: str | None) -> None:
    assert normalize_path(path, home) == expected


def test_globs() -> None:
    assert glob_regex("/srv/**").fullmatch("/srv")
    assert glob_regex("/srv/**").fullmatch("/srv/a/b")
    assert not glob_regex("/srv/**").fullmatch("/srvx")
    assert glob_regex("/home/*/.ssh/**").fullmatch("/home/bob/.ssh/authorized_keys")
    assert not glob_regex("/home/*/.ssh").fullmatch("/home/a/b/.ssh")
    assert glob_regex("**/.env").fullmatch("/x/y/.env")
    assert not glob_regex("/a.b").fullmatch("/axb")


def test_policy_rules_only_restrict() -> None:
    assert TransferPolicy([]).check(None, write=True, read=True).allowed
    policy = TransferPolicy([(0, TransferRule(groups=("x",), upload=False)),
                             (1, TransferRule(groups=("x",), deny_paths=("/etc/**",))),
                             (2, TransferRule(groups=("x",), allow_paths=("/srv/**", "/etc/**")))])
    assert not policy.check("/srv/a", write=True).allowed
    assert policy.check("/srv/a", read=True).allowed
    verdict = policy.check("/etc/passwd", read=True)
    assert (verdict.allowed, verdict.rule) == (False, "transfers[1]")
    assert not policy.check("/home/a", read=True).allowed
    assert not policy.check(None, read=True).allowed  # unknown path, path rules: refused


def test_shown_names_are_safe() -> None:
    assert p.shown(b"a\nb\x1b[31mc\x9b\xff") == "a\\x0ab\\x1b[31mc\\x9b\\xff"
    assert p.shown("café".encode()) == "café"


class _Ctx:
    """A StageContext of an sftp channel (or, given a command, of an exec)."""

    def __init__(self, kind: ChannelKind = ChannelKind.SFTP, command: str | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.ended: str | None = None
        self.info = ChannelInfo(kind=kind, pty=False, term=None, width=0, height=0,
                                command=command, subsystem="sftp" if command is None else None,
                                session_id="s", channel=1, user="alice", identity_key="k",
                                groups=("ops",), target=Target(name="web01", host="h"),
                                login="alice")

    def audit(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})

    def end_channel(self, reason: str) -> None:
        self.ended = reason

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def _pipeline(policy: TransferPolicy) -> tuple[Pipeline, _Ctx, list[bytes], list[bytes],
                                               list[dict[str, Any]]]:
    ctx = _Ctx()
    to_target: list[bytes] = []
    to_user: list[bytes] = []
    ops: list[dict[str, Any]] = []
    stages = sftp_stages(ctx, policy, ops.append)  # type: ignore[arg-type]
    pipeline = Pipeline.build(
        [lambda i, c: stages], ctx.info, ctx,  # type: ignore[arg-type]
        to_target=lambda d, s: to_target.append(d), target_end=lambda: None,
        record_input=lambda d, s: None, record_output=lambda d, s: None,
        to_user=lambda d, s: to_user.append(d), user_end=lambda: None)
    return pipeline, ctx, to_target, to_user, ops


def test_denied_open_is_answered_and_not_forwarded() -> None:
    policy = TransferPolicy([(0, TransferRule(groups=("ops",), upload=False))])
    pipeline, ctx, to_target, to_user, ops = _pipeline(policy)
    allowed = _open(1, b"/r", p.FXF_READ)
    denied = _open(2, b"/w\n\x1b[2J", p.FXF_WRITE | p.FXF_CREAT)
    pipeline.input.feed(allowed + denied, Stream.DATA)
    assert b"".join(to_target) == allowed
    reply = b"".join(to_user)
    _length, ptype, rid, code = struct.unpack_from(">IBII", reply)
    assert (ptype, rid, code) == (p.STATUS, 2, p.Status.PERMISSION_DENIED)
    [entry] = ops
    assert entry["status"] == "denied" and entry["path"] == "/w\\x0a\\x1b[2J"
    assert entry["rule"] == "transfers[0]"
    line = json.dumps(ctx.events)
    assert "\x1b" not in line and "\\n" not in line.replace("\\\\", "")


def test_bytes_are_counted_from_headers_and_closed_files_logged() -> None:
    pipeline, ctx, _to_target, _to_user, ops = _pipeline(TransferPolicy([]))
    pipeline.input.feed(_open(1, b"/up", p.FXF_WRITE | p.FXF_CREAT), Stream.DATA)
    pipeline.output.feed(_handle(1, b"H"), Stream.DATA)
    pipeline.input.feed(_write(2, b"H", b"a" * 1000) + _write(3, b"H", b"b" * 24),
                        Stream.DATA)
    pipeline.output.feed(_status(2, 0) + _status(3, 0), Stream.DATA)
    pipeline.input.feed(_packet(p.CLOSE, struct.pack(">I", 4) + _string(b"H")), Stream.DATA)
    pipeline.output.feed(_status(4, 0), Stream.DATA)
    [entry] = ops
    assert (entry["op"], entry["path"], entry["bytes_written"], entry["status"]) == (
        "write", "/up", 1024, "ok")
    assert [e["event"] for e in ctx.events] == ["sftp.open", "sftp.close"]


def test_a_request_at_the_relay_limit_is_refused_not_buffered() -> None:
    pipeline, _ctx, to_target, to_user, _ops = _pipeline(TransferPolicy([]))
    huge = _open(7, b"/" + b"a" * (p.MAX_HEAD + 10), p.FXF_READ)
    pipeline.input.feed(huge, Stream.DATA)
    assert to_target == []
    assert struct.unpack_from(">IBII", b"".join(to_user))[2:] == (7, p.Status.FAILURE)


def test_stages_hold_no_file_data_while_hundreds_of_mib_pass() -> None:
    """Uploads and downloads through both stages: memory held stays at packet heads."""
    import tracemalloc

    pipeline, _ctx, to_target, to_user, ops = _pipeline(TransferPolicy([]))
    block = b"\xab" * 32768
    pipeline.input.feed(_open(1, b"/up", p.FXF_WRITE | p.FXF_CREAT | p.FXF_READ), Stream.DATA)
    pipeline.output.feed(_handle(1, b"H"), Stream.DATA)
    writes = b"".join(_write(rid, b"H", block) for rid in range(2, 66))  # 64 in flight
    statuses = b"".join(_status(rid, 0) for rid in range(2, 66))
    datas = b"".join(_packet(p.DATA, struct.pack(">I", rid) + _string(block))
                     for rid in range(2, 66))
    reads = b"".join(_packet(p.READ, struct.pack(">I", rid) + _string(b"H")
                             + struct.pack(">QI", 0, 32768)) for rid in range(2, 66))
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    for _ in range(100):  # 100 x 64 x 32 KiB = 200 MiB each way, in odd-sized chunks
        for i in range(0, len(writes), 50_001):
            pipeline.input.feed(writes[i:i + 50_001], Stream.DATA)
            to_target.clear()  # the sink forgets what it was given, as a socket would
        pipeline.output.feed(statuses, Stream.DATA)
        pipeline.input.feed(reads, Stream.DATA)
        for i in range(0, len(datas), 70_003):
            pipeline.output.feed(datas[i:i + 70_003], Stream.DATA)
            to_user.clear()
        to_target.clear()
        to_user.clear()
    held = tracemalloc.get_traced_memory()[0] - baseline
    tracemalloc.stop()
    assert held < 256 * 1024, f"the stages hold {held} bytes after 400 MiB"
    pipeline.input.feed(_packet(p.CLOSE, struct.pack(">I", 99) + _string(b"H")), Stream.DATA)
    pipeline.output.feed(_status(99, 0), Stream.DATA)
    [entry] = ops
    assert entry["bytes_written"] == entry["bytes_read"] == 100 * 64 * 32768
