"""Spool: exclusive lock, refusal when the spool is unusable, crash recovery."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import RecordingError
from bastion.recording import Spool
from bastion.recording.asciicast import close_interrupted

META: dict[str, Any] = {
    "identity": {"issuer": "local", "subject": "bob", "name": "Bob"},
    "client": {"address": "127.0.0.1", "port": 40000, "key_fingerprint": "SHA256:k"},
    "target": {"name": "db01", "address": "127.0.0.1", "port": 2201, "login": "root",
               "host_key_fingerprint": "SHA256:h"},
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def events(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()][1:]


def crashed_session(root: Path, clock: FakeClock) -> tuple[Path, Path]:
    """A session recorded until a crash: events flushed, no finish(), lock released by death."""
    spool = Spool(root, "node-1", clock=clock)
    spool.lock()
    rec = spool.start_session(META)
    writer = rec.open_channel("shell", width=80, height=24, term="xterm", command=None,
                              user="bob", target="db01", login="root")
    writer.output(b"$ id\r\n")
    clock.now += 2.5
    writer.output("uid=0(root) — ok\r\n".encode())
    writer.flush()
    spool.unlock()
    return rec.path, writer.path


def test_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from bastion.recording import Spool;"
         f"s = Spool(Path({str(root)!r}), 'other'); s.lock(); print('locked', flush=True);"
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        spool = Spool(root, "node-1")
        with pytest.raises(RecordingError) as err:
            spool.lock()
        assert str(err.value) == (
            f"spool {root} is in use by another bastion (pid {holder.pid})")
        assert not spool.locked
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        try:
            holder.wait(timeout=10)
        finally:
            if holder.poll() is None:
                os.kill(holder.pid, 9)
                holder.wait()
    spool.lock()  # the holder exited: the lock is free again
    assert (root / ".lock").read_text() == f"{os.getpid()}\n"
    assert oct((root).stat().st_mode & 0o777) == oct(0o750)
    spool.unlock()


def test_unusable_spool_refuses_sessions(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    spool = Spool(not_a_dir / "spool", "node-1")
    with pytest.raises(RecordingError, match=r"^cannot use spool .*: Not a directory$"):
        spool.lock()
    with pytest.raises(RecordingError, match="is not locked by this bastion"):
        spool.start_session(META)


def test_start_session_fails_when_spool_dir_is_gone(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root, "node-1")
    spool.lock()
    # Someone replaces the spool by a regular file under the running server.
    (root / ".lock").unlink()
    (root / ".reserve").unlink()
    root.rmdir()
    root.write_text("oops")
    with pytest.raises(RecordingError, match=r"^cannot record session: cannot create .*"
                                             r"Not a directory$"):
        spool.start_session(META)
    spool.unlock()


def test_recover_closes_a_torn_recording(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    clock = FakeClock()
    session_dir, cast = crashed_session(root, clock)
    with cast.open("ab") as fh:
        fh.write(b'[2.700000, "o", "half a li')  # the crash tore the last line
    mtime = cast.stat().st_mtime

    spool = Spool(root, "node-1")
    spool.lock()
    assert spool.recover() == [session_dir]
    assert events(cast) == [[0.0, "o", "$ id\r\n"], [2.5, "o", "uid=0(root) — ok\r\n"],
                            [2.5, "m", "interrupted"]]
    meta = json.loads((session_dir / "session.json").read_text())
    assert meta["state"] == "interrupted"
    assert meta["end_reason"] == "interrupted"
    assert meta["recordings"] == ["1-shell.cast"]
    assert meta["end"] == dt.datetime.fromtimestamp(mtime, dt.UTC).isoformat(
        timespec="microseconds").replace("+00:00", "Z")
    assert meta["target"]["name"] == "db01"
    # A second start finds nothing left to recover.
    assert spool.recover() == []
    spool.unlock()


def test_recover_keeps_a_complete_line_missing_its_newline(tmp_path: Path) -> None:
    clock = FakeClock()
    session_dir, cast = crashed_session(tmp_path / "spool", clock)
    with cast.open("ab") as fh:
        fh.write(b'[3.000000, "r", "90x30"]')
    spool = Spool(tmp_path / "spool", "node-1")
    spool.lock()
    assert spool.recover() == [session_dir]
    assert events(cast)[-2:] == [[3.0, "r", "90x30"], [3.0, "m", "interrupted"]]
    spool.unlock()


def test_recover_finds_the_last_good_line_behind_a_long_torn_one(tmp_path: Path) -> None:
    clock = FakeClock()
    session_dir, cast = crashed_session(tmp_path / "spool", clock)
    long_text = json.dumps("\x1b[0m" * 100_000)  # escaped: far longer than the tail window
    with cast.open("ab") as fh:
        fh.write(f'[4.000000, "o", {long_text}]\n'.encode())
        fh.write(f'[5.000000, "o", {long_text[:200_000]}'.encode())
    spool = Spool(tmp_path / "spool", "node-1")
    spool.lock()
    assert spool.recover() == [session_dir]
    evs = events(cast)
    assert evs[-2][0] == 4.0 and len(evs[-2][2]) == 400_000
    assert evs[-1] == [4.0, "m", "interrupted"]
    spool.unlock()


def test_recover_gives_a_header_to_an_empty_recording(tmp_path: Path) -> None:
    cast = tmp_path / "1-shell.cast"
    cast.write_bytes(b'{"version": 2, "wid')
    close_interrupted(cast, {"version": 2, "width": 80, "height": 24})
    lines = cast.read_text().splitlines()
    assert json.loads(lines[0]) == {"version": 2, "width": 80, "height": 24}
    assert json.loads(lines[1]) == [0.0, "m", "interrupted"]
    close_interrupted(cast, {"version": 2, "width": 80, "height": 24})  # already closed
    assert len(cast.read_text().splitlines()) == 2


def test_damaged_session_does_not_stop_recovery_of_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "spool"
    clock = FakeClock()
    good_dir, _ = crashed_session(root, clock)
    bad_dir, bad_cast = crashed_session(root, clock)
    (bad_dir / "session.json").write_text('{"state": "act')
    cast_before = bad_cast.read_bytes()
    finished_dir = root / "20260101T000000Z-0123456789ab"
    finished_dir.mkdir()
    (finished_dir / "session.json").write_text('{"state": "closed"}')

    spool = Spool(root, "node-1")
    spool.lock()
    with caplog.at_level(logging.WARNING, logger="bastion.recording"):
        assert spool.recover() == [good_dir]
    assert [p for p, _ in spool.recovery_skipped] == [bad_dir]
    why = spool.recovery_skipped[0][1]
    assert why.startswith(f"cannot recover {bad_dir}: session.json is damaged")
    assert why in caplog.text
    assert bad_cast.read_bytes() == cast_before  # left for a human to look at
    assert json.loads((finished_dir / "session.json").read_text()) == {"state": "closed"}
    spool.unlock()


def test_recover_needs_the_lock(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "node-1")
    with pytest.raises(RecordingError, match="not locked"):
        spool.recover()


def test_finish_later_runs_on_the_worker_casts_before_session_json(tmp_path: Path,
                                                                  monkeypatch) -> None:
    import threading

    spool = Spool(tmp_path / "spool", "node-1")
    spool.lock()
    rec = spool.start_session(META)
    writer = rec.open_channel("exec", width=80, height=24, term=None, command="id",
                              user="bob", target="db01", login="root")
    writer.output(b"uid=0(root)\n")
    order: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        order.append((os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1],
                      threading.current_thread().name))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    done = rec.finish_later("closed", "closed")
    done.result(timeout=10)
    spool.drain()
    names = [name for name, _ in order]
    cast_at = names.index("1-exec.cast")
    assert any(name.startswith(".session.json.") for name in names[cast_at + 1:])
    assert all(thread.startswith("bastion-spool") for _, thread in order)
    meta = json.loads((rec.path / "session.json").read_text())
    assert (meta["state"], meta["recordings"]) == ("closed", ["1-exec.cast"])
    assert events(writer.path)[-1][2] == "uid=0(root)\n"


def test_finish_later_reports_a_failed_cast_fsync(tmp_path: Path, monkeypatch) -> None:
    spool = Spool(tmp_path / "spool", "node-1")
    spool.lock()
    rec = spool.start_session(META)
    rec.open_channel("exec", width=80, height=24, term=None, command="id",
                     user="bob", target="db01", login="root")

    def failing_fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".cast"):
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(RecordingError, match="Input/output error"):
        rec.finish_later("closed", "closed").result(timeout=10)
    spool.drain()
    meta = json.loads((rec.path / "session.json").read_text())
    assert meta["state"] == "closed"
    assert "Input/output error" in meta["recording_errors"][0]
