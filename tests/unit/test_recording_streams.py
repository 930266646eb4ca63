"""The recorder API: layout names, CastWriter input/exit, StreamWriter byte-exact streams, and
session.json's channels and commands."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import RecordingError
from bastion.recording import CastWriter, ChannelKind, SessionRecording, Spool, StreamWriter, layout
from bastion.recording.layout import Part

WALL = 1_790_000_000.25
META: dict[str, Any] = {"identity": {"subject": "alice"}, "client": {},
                        "target": {"name": "web01"}}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def spool(tmp_path: Path, clock: FakeClock) -> Iterator[Spool]:
    sp = Spool(tmp_path / "spool", "node-1", clock=clock, wall=lambda: WALL)
    sp.lock()
    yield sp
    sp.unlock()


def open_exec(rec: SessionRecording, *, pty: bool, command: str = "bash") -> Any:
    return rec.open_channel(ChannelKind.EXEC, pty=pty, width=80, height=24,
                            term="xterm" if pty else None, command=command, user="alice",
                            target="web01", login="deploy")


def timing(path: Path) -> list[tuple[str, str, int]]:
    return [(code, delay, int(size)) for code, delay, size in
            (line.split(" ") for line in path.read_text().splitlines())]


# -- layout -----------------------------------------------------------------------------------

def test_layout_builds_and_parses_every_name() -> None:
    assert layout.recording_name(1, ChannelKind.SHELL, Part.CAST) == "1-shell.cast"
    assert layout.recording_name(12, ChannelKind.EXEC, Part.STDIN) == "12-exec.stdin"
    assert layout.recording_name(3, ChannelKind.SFTP, Part.OPS) == "3-sftp.ops.jsonl"
    for name in ("1-shell.cast", "2-exec.cast", "2-exec.stdout", "4-exec.timing",
                 "5-sftp.stdin", "5-sftp.ops.jsonl", "9-shell.stderr"):
        parsed = layout.parse_recording_name(name)
        assert parsed is not None and str(parsed) == name
    for name in ("1-x11.cast", "0-shell.cast", "01-shell.cast", "1-sftp.cast", "1-exec.ops.jsonl",
                 "1-shell.cast.gz", "../1-shell.cast", "1-shell.json", "session.json",
                 "1-Shell.cast", "1234567-shell.cast"):
        assert layout.parse_recording_name(name) is None, name
    assert layout.is_session_id("20260921T141320Z-0123456789ab")
    assert not layout.is_session_id("20260921T141320Z-0123456789AB")
    assert layout.session_date("20260921T141320Z-0123456789ab") == "2026/09/21"
    assert layout.SessionState.DAMAGED in layout.FINAL_STATES
    assert layout.SessionState.ACTIVE not in layout.FINAL_STATES


def test_a_recording_the_sealer_does_not_know_cannot_be_written(spool: Spool) -> None:
    with pytest.raises(ValueError, match=r"no \.cast recording"):
        layout.recording_name(1, ChannelKind.SFTP, Part.CAST)
    with pytest.raises(ValueError, match="unknown recording kind"):
        layout.recording_name(1, "x11", Part.CAST)  # type: ignore[arg-type]
    rec = spool.start_session(META)
    with pytest.raises(ValueError, match="bad channel kind"):
        rec.open_channel("x11", pty=True, width=80, height=24, term=None, command=None,
                         user="a", target="t", login="l")
    with pytest.raises(ValueError, match="never recorded as a terminal"):
        rec.open_channel(ChannelKind.SFTP, pty=True, width=80, height=24, term=None,
                         command=None, user="a", target="t", login="l")
    assert [p.name for p in rec.path.iterdir()] == ["session.json"]
    rec.finish("closed", "test")


# -- CastWriter: input, stderr, exit --------------------------------------------------------

def test_cast_records_input_stderr_and_exit(spool: Spool, clock: FakeClock) -> None:
    rec = spool.start_session(META)
    writer = open_exec(rec, pty=True, command="sh")
    assert isinstance(writer, CastWriter) and writer.path.name == "1-exec.cast"
    writer.input(b"touch /tmp/hidden\r")
    clock.now += 0.5
    writer.input(b"caf\xc3")  # a character split across reads
    writer.input(b"\xa9\r")
    writer.output(b"out\r\n")
    writer.stderr(b"err\r\n")
    clock.now += 1
    writer.exited(3, None)
    rec.finish("closed", "done")
    events = [json.loads(line) for line in writer.path.read_text().splitlines()[1:]]
    assert events == [[0.0, "i", "touch /tmp/hidden\r"], [0.5, "i", "caf"],
                      [0.5, "i", "é\r"], [0.5, "o", "out\r\n"], [0.5, "o", "err\r\n"],
                      [1.5, "m", "exit: 3"]]
    assert writer.input_bytes == 24
    channel = json.loads((rec.path / "session.json").read_text())["channels"][0]
    assert channel == {"number": 1, "kind": "exec", "pty": True, "command": "sh",
                       "files": ["1-exec.cast"], "opened": "2026-09-21T14:13:20.250000Z",
                       "closed": "2026-09-21T14:13:21.750000Z", "exit_status": 3,
                       "exit_signal": None}


def test_cast_exit_by_signal_and_torn_input_at_close(spool: Spool) -> None:
    rec = spool.start_session(META)
    writer = open_exec(rec, pty=True)
    writer.input(b"\xe2\x82")  # never completed: written as U+FFFD at close
    writer.exited(None, "TERM")
    rec.finish("closed", "done")
    events = [json.loads(line) for line in writer.path.read_text().splitlines()[1:]]
    assert [e[1:] for e in events] == [["m", "exit: signal TERM"], ["i", "\ufffd"]]
    channel = json.loads((rec.path / "session.json").read_text())["channels"][0]
    assert (channel["exit_status"], channel["exit_signal"]) == (None, "TERM")


# -- StreamWriter ---------------------------------------------------------------------------

def test_streams_are_byte_exact_with_timing(spool: Spool, clock: FakeClock) -> None:
    rec = spool.start_session(META)
    writer = open_exec(rec, pty=False, command="cat > f")
    assert isinstance(writer, StreamWriter)
    names = ["1-exec.stdin", "1-exec.stdout", "1-exec.stderr", "1-exec.timing"]
    assert [p.name for p in writer.files] == names
    binary = bytes(range(256)) * 3
    big = os.urandom(200_000)  # bigger than the buffer: written straight through
    writer.input(binary)
    clock.now += 0.25
    writer.output(b"\xff\xfe not utf-8 \x00")
    clock.now += 0.0000014
    writer.stderr(b"warning\n")
    writer.input(big)
    writer.input(b"")  # nothing crossed: nothing recorded
    clock.now += 2
    writer.marker("killed: test by ops")
    writer.exited(0, None)
    rec.finish("closed", "done")
    assert (rec.path / "1-exec.stdin").read_bytes() == binary + big
    assert (rec.path / "1-exec.stdout").read_bytes() == b"\xff\xfe not utf-8 \x00"
    assert (rec.path / "1-exec.stderr").read_bytes() == b"warning\n"
    assert timing(rec.path / "1-exec.timing") == [
        ("I", "0.000000", 768), ("O", "0.250000", 14), ("E", "0.000001", 8),
        ("I", "0.000000", 200_000)]
    assert writer.input_bytes == 768 + 200_000 and writer.output_bytes == 22
    meta = json.loads((rec.path / "session.json").read_text())
    assert meta["recordings"] == names
    assert meta["channels"] == [{
        "number": 1, "kind": "exec", "pty": False, "command": "cat > f", "files": names,
        "opened": "2026-09-21T14:13:20.250000Z", "closed": "2026-09-21T14:13:22.500001Z",
        "exit_status": 0, "exit_signal": None,
        "markers": [{"t": 2.250001, "label": "killed: test by ops"},
                    {"t": 2.250001, "label": "exit: 0"}]}]
    with pytest.raises(RecordingError, match="is closed"):
        writer.input(b"late")


def test_timing_delays_sum_without_drift(spool: Spool, clock: FakeClock) -> None:
    rec = spool.start_session(META)
    writer = open_exec(rec, pty=False)
    for _ in range(1000):
        clock.now += 0.0003333
        writer.output(b"x")
    rec.finish("closed", "done")
    total_us = sum(int(d.replace(".", "")) for _, d, _ in timing(rec.path / "1-exec.timing"))
    assert abs(total_us - 333_300) <= 1


def test_streams_flush_by_size_and_age(spool: Spool, clock: FakeClock) -> None:
    rec = spool.start_session(META)
    writer = open_exec(rec, pty=False)
    stdout = rec.path / "1-exec.stdout"
    writer.output(b"a" * 1000)
    assert stdout.stat().st_size == 0  # buffered
    writer.output(b"b" * 70_000)  # the buffer passes 64 KiB: written
    assert stdout.stat().st_size == 71_000
    assert (rec.path / "1-exec.timing").stat().st_size == 0  # timing may lag its streams
    writer.stderr(b"e")
    spool.flush_due(max_age=0.5)
    assert (rec.path / "1-exec.stderr").stat().st_size == 0  # younger than max_age
    clock.now += 0.6
    spool.flush_due(max_age=0.5)
    assert (rec.path / "1-exec.stderr").read_bytes() == b"e"
    assert len(timing(rec.path / "1-exec.timing")) == 3
    rec.finish("closed", "done")


def test_stream_write_failure_stops_the_writer(spool: Spool, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    rec = spool.start_session(META)
    writer = open_exec(rec, pty=False)

    def full(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(RecordingError, match="No space left"):
        writer.output(b"x" * 100_000)
    with pytest.raises(RecordingError, match="No space left"):
        writer.input(b"more")
    monkeypatch.undo()
    rec.finish("closed", "done")  # the failure was reported once, when it happened
    meta = json.loads((rec.path / "session.json").read_text())
    assert "No space left" in meta["recording_errors"][0]


def test_sftp_channel_gets_streams(spool: Spool) -> None:
    rec = spool.start_session(META)
    writer = rec.open_channel(ChannelKind.SFTP, pty=False, width=0, height=0, term=None,
                              command=None, user="a", target="t", login="l")
    writer.input(b"\x00\x00\x00\x05\x01\x00\x00\x00\x03")
    rec.finish("closed", "done")
    assert (rec.path / "1-sftp.stdin").read_bytes() == b"\x00\x00\x00\x05\x01\x00\x00\x00\x03"
    digest = hashlib.sha256((rec.path / "1-sftp.stdin").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(b"\x00\x00\x00\x05\x01\x00\x00\x00\x03").hexdigest()


# -- session.json: commands, saving ---------------------------------------------------------

def test_note_command_and_dirty_session_is_saved_by_flush_due(spool: Spool,
                                                              clock: FakeClock) -> None:
    rec = spool.start_session(META)
    open_exec(rec, pty=True)
    clock.now += 4
    rec.note_command(1, None, "rm -rf /tmp/x", "deny", "no-rm")
    rec.note_command(1, 1.5, "ls", layout.CommandVerdict.ALLOW)
    with pytest.raises(ValueError):
        rec.note_command(1, None, "ls", "maybe")
    with pytest.raises(ValueError, match="no channel 2"):
        rec.note_command(2, None, "ls", "allow")
    with pytest.raises(ValueError, match="managed by the spool"):
        rec.append_field("commands", {})
    spool.flush_due()
    spool.drain()  # the save runs on the spool's worker
    meta = json.loads((rec.path / "session.json").read_text())
    assert meta["commands"] == [
        {"channel": 1, "t": 4.0, "line": "rm -rf /tmp/x", "verdict": "deny", "rule": "no-rm"},
        {"channel": 1, "t": 1.5, "line": "ls", "verdict": "allow", "rule": None}]
    rec.finish("closed", "done")
