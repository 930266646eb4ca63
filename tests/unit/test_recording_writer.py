"""asciicast writer: header, events, UTF-8 handling, flushing, fsync, write failures."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import RecordingError
from bastion.recording import CastWriter, SessionRecording, Spool
from bastion.recording import asciicast as asciicast_mod

WALL = 1_790_000_000.25  # a fixed Unix time for session ids and headers


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


META: dict[str, Any] = {
    "identity": {"issuer": "local", "subject": "alice", "name": "Alice", "email": None,
                 "groups": ["ops"], "method": "publickey"},
    "client": {"address": "127.0.0.1", "port": 50000, "key_fingerprint": "SHA256:abc"},
    "target": {"name": "web01", "address": "127.0.0.1", "port": 2200, "login": "deploy",
               "host_key_fingerprint": None},
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def spool(tmp_path: Path, clock: FakeClock) -> Iterator[Spool]:
    sp = Spool(tmp_path / "spool", "node-1", clock=clock, wall=lambda: WALL)
    sp.lock()
    yield sp
    sp.unlock()


def open_shell(rec: SessionRecording, **kw: Any) -> CastWriter:
    args: dict[str, Any] = {"width": 120, "height": 40, "term": "xterm-256color",
                            "command": None, "user": "alice", "target": "web01",
                            "login": "deploy"}
    args.update(kw)
    return rec.open_channel("shell", **args)


def disk_lines(path: Path) -> list[Any]:
    """What a reader of the file sees right now (what reached the OS)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def output_text(path: Path) -> str:
    return "".join(e[2] for e in disk_lines(path)[1:] if e[1] == "o")


def test_header_and_session_metadata(spool: Spool) -> None:
    rec = spool.start_session(META)
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{12}", rec.session_id)
    assert rec.session_id.startswith("20260921T141320Z-")  # UTC date of WALL
    assert rec.path == spool.root / rec.session_id
    assert stat.S_IMODE(rec.path.stat().st_mode) == 0o750

    writer = open_shell(rec)
    assert writer.path == rec.path / "1-shell.cast"
    assert stat.S_IMODE(writer.path.stat().st_mode) == 0o640
    # The header is on disk before any output.
    header = disk_lines(writer.path)[0]
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (120, 40)
    assert header["timestamp"] == int(WALL)
    assert header["term"] == {"type": "xterm-256color"}
    assert header["env"] == {"TERM": "xterm-256color"}
    assert header["bastion"] == {"session_id": rec.session_id, "user": "alice",
                                 "target": "web01", "login": "deploy", "channel": 1,
                                 "kind": "shell"}

    meta = json.loads((rec.path / "session.json").read_text())
    assert meta["schema"] == 2
    assert meta["session_id"] == rec.session_id
    assert meta["node_id"] == "node-1"
    assert meta["state"] == "active"
    assert meta["identity"]["subject"] == "alice"
    assert meta["target"]["login"] == "deploy"
    assert meta["start"] == "2026-09-21T14:13:20.250000Z"
    assert meta["end"] is None and meta["end_reason"] is None
    assert meta["recordings"] == ["1-shell.cast"]  # saved when the channel opened

    exec_writer = rec.open_channel("exec", width=0, height=0, term=None, command="uptime",
                                   user="alice", target="web01", login="deploy")
    assert exec_writer.path.name == "2-exec.cast"
    header = disk_lines(exec_writer.path)[0]
    assert (header["width"], header["height"]) == (80, 24)
    assert header["command"] == "uptime"
    assert "term" not in header
    assert header["bastion"]["channel"] == 2
    rec.finish("closed", "client closed")


def test_utf8_character_split_across_chunks_is_intact(spool: Spool) -> None:
    rec = spool.start_session(META)
    writer = open_shell(rec)
    euro = "€".encode()  # three bytes
    writer.output(b"caf\xc3")
    writer.output(b"\xa9 " + euro[:1])
    writer.output(euro[1:2])
    writer.output(euro[2:] + "日本".encode())
    rec.finish("closed", "client closed")
    assert output_text(writer.path) == "café €日本"
    assert writer.output_bytes == len("café €日本".encode())


def test_invalid_bytes_become_replacement_characters(spool: Spool) -> None:
    rec = spool.start_session(META)
    writer = open_shell(rec)
    writer.output(b"a\xff\xfeb\x1b[31mred\x1b[0m\r\n")
    writer.output(b"tail\xe2\x82")  # an unfinished character when the channel closes
    rec.finish("closed", "client closed")
    # Terminal escapes are recorded as they are; bad bytes become U+FFFD.
    assert output_text(writer.path) == "a\ufffd\ufffdb\x1b[31mred\x1b[0m\r\ntail\ufffd"


def test_resize_and_marker_events_with_relative_times(spool: Spool, clock: FakeClock) -> None:
    rec = spool.start_session(META)
    writer = open_shell(rec)
    clock.now += 0.25
    writer.output(b"$ ")
    clock.now += 1.5
    writer.resize(100, 30)
    clock.now += 0.000001
    writer.marker("command: ls -l")
    rec.finish("closed", "client closed")
    raw = writer.path.read_text().splitlines()
    assert raw[1:] == ['[0.250000, "o", "$ "]', '[1.750000, "r", "100x30"]',
                       '[1.750001, "m", "command: ls -l"]']
    assert writer.bytes_written == writer.path.stat().st_size


def test_idle_output_reaches_disk_within_a_second(spool: Spool, clock: FakeClock) -> None:
    rec = spool.start_session(META)
    writer = open_shell(rec)
    writer.output(b"hello")
    assert output_text(writer.path) == ""  # buffered
    clock.now += 0.4
    spool.flush_due()
    assert output_text(writer.path) == ""  # not yet due
    clock.now += 0.1
    spool.flush_due()  # the periodic task (every 0.5 s) finds it 0.5 s old
    assert output_text(writer.path) == "hello"
    rec.finish("closed", "client closed")


def test_busy_writer_flushes_by_time_and_by_size(spool: Spool, clock: FakeClock) -> None:
    rec = spool.start_session(META)
    writer = open_shell(rec)
    writer.output(b"one ")
    clock.now += 1.0
    writer.output(b"two")  # the oldest buffered byte is 1 s old: written out now
    assert output_text(writer.path) == "one two"
    writer.output(b"x" * asciicast_mod.BUFFER_LIMIT)  # a full buffer goes out at once
    assert output_text(writer.path).endswith("x" * 100)
    rec.finish("closed", "client closed")


def test_flush_loop_flushes_idle_writers(tmp_path: Path) -> None:
    import asyncio

    sp = Spool(tmp_path / "spool", "node-1")
    sp.lock()
    rec = sp.start_session(META)
    writer = open_shell(rec)

    async def scenario() -> None:
        task = asyncio.create_task(sp.flush_loop(interval=0.05))
        writer.output(b"idle output")
        loop = asyncio.get_running_loop()
        # The README: recordings are flushed at least every second (+ a margin for a loaded
        # machine's scheduling, not for the flush policy).
        deadline = loop.time() + 1.5
        while "idle output" not in output_text(writer.path):
            assert loop.time() < deadline, "idle output not on disk within 1 s (+0.5 s margin)"
            await asyncio.sleep(0.02)
        task.cancel()

    asyncio.run(scenario())
    rec.finish("closed", "client closed")
    sp.unlock()


def test_close_fsyncs_and_finish_records_the_end(spool: Spool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rec = spool.start_session(META)
    writer = open_shell(rec)
    writer.output(b"data")
    cast_fd = writer._fd
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    rec.set_field("target.host_key_fingerprint", "SHA256:hostkey")
    rec.note_command(1, 1.0, "ls", "allow")
    rec.finish("closed", "client closed")
    assert synced[0] == cast_fd  # the recording, then session.json and its directory
    assert len(synced) >= 3
    assert writer.closed
    writer.close()  # idempotent
    rec.finish("closed", "again")  # idempotent
    meta = json.loads((rec.path / "session.json").read_text())
    assert meta["state"] == "closed"
    assert meta["end_reason"] == "client closed"
    assert meta["end"].endswith("Z")
    assert meta["recordings"] == ["1-shell.cast"]
    assert meta["target"]["host_key_fingerprint"] == "SHA256:hostkey"
    assert meta["target"]["name"] == "web01"
    assert meta["commands"] == [{"channel": 1, "t": 1.0, "line": "ls", "verdict": "allow",
                                 "rule": None}]
    assert not (rec.path / "session.json.tmp").exists()
    with pytest.raises(RecordingError, match="is closed"):
        writer.output(b"late")
    with pytest.raises(RecordingError, match="is finished"):
        open_shell(rec)


def test_reserved_fields_are_refused(spool: Spool) -> None:
    with pytest.raises(ValueError, match="managed by the spool"):
        spool.start_session({**META, "state": "closed"})
    rec = spool.start_session(META)
    with pytest.raises(ValueError, match="managed by the spool"):
        rec.set_field("recordings", [])
    with pytest.raises(ValueError, match="bad channel kind"):
        rec.open_channel("../x", width=80, height=24, term=None, command=None, user="a",
                         target="t", login="l")
    with pytest.raises(ValueError, match="bad final session state"):
        rec.finish("fine", "x")
    rec.finish("refused", "test")


def test_write_failure_stops_the_recording(spool: Spool, clock: FakeClock) -> None:
    rec = spool.start_session(META)
    failures: list[RecordingError] = []
    rec.on_failure = failures.append
    writer = open_shell(rec)
    # The disk fills up under the open file: writes now fail with ENOSPC.
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, writer._fd)
    os.close(full)
    writer.output(b"lost")
    clock.now += 0.5
    reported = spool.flush_due()
    assert [err for _, err in reported] == failures
    assert str(failures[0]) == (
        f"recording stopped: cannot write {writer.path}: No space left on device")
    with pytest.raises(RecordingError, match="No space left on device"):
        writer.output(b"more")
    with pytest.raises(RecordingError, match="No space left on device"):
        writer.marker("more")
    rec.finish("killed", "recording failed")  # the failure was already reported: no raise
    meta = json.loads((rec.path / "session.json").read_text())
    assert meta["state"] == "killed"
    assert meta["recording_errors"] == [str(failures[0])]


def test_write_failure_at_output_raises(spool: Spool) -> None:
    rec = spool.start_session(META)
    writer = open_shell(rec)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, writer._fd)
    os.close(full)
    with pytest.raises(RecordingError, match=r"^recording stopped: cannot write .*1-shell.cast"):
        writer.output(b"y" * asciicast_mod.BUFFER_LIMIT)
    rec.finish("killed", "recording failed")


def test_failure_at_close_is_raised_by_finish(spool: Spool) -> None:
    rec = spool.start_session(META)
    writer = open_shell(rec)
    writer.output(b"buffered")
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, writer._fd)
    os.close(full)
    with pytest.raises(RecordingError, match="No space left on device"):
        rec.finish("closed", "client closed")
    assert json.loads((rec.path / "session.json").read_text())["state"] == "closed"


def test_header_write_failure_refuses_the_channel(tmp_path: Path) -> None:
    full = os.open("/dev/full", os.O_WRONLY)
    with pytest.raises(RecordingError, match="No space left on device"):
        CastWriter(full, Path("/dev/full"), {"version": 2, "width": 80, "height": 24})
    with pytest.raises(OSError):
        os.fstat(full)  # the writer closed the descriptor it was given


def test_channel_cannot_be_created_when_the_session_dir_is_gone(spool: Spool) -> None:
    rec = spool.start_session(META)
    (rec.path / "session.json").unlink()
    rec.path.rmdir()
    rec.path.write_text("not a directory")
    with pytest.raises(RecordingError, match=r"^cannot record session: cannot create .*1-shell"):
        open_shell(rec)


def test_existing_file_or_symlink_is_never_opened(spool: Spool, tmp_path: Path) -> None:
    rec = spool.start_session(META)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (rec.path / "1-shell.cast").symlink_to(victim)
    with pytest.raises(RecordingError, match="File exists"):
        open_shell(rec)
    assert victim.read_text() == "keep"
    assert open_shell(rec).path.name == "2-shell.cast"
    rec.finish("closed", "test")
