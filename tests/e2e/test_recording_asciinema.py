"""Real players read bastion's recordings: asciinema 2.4 the casts (finished, crash-recovered,
with input events), util-linux scriptreplay the exec streams."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bastion.recording import Spool

pytestmark = pytest.mark.e2e


def asciinema_cat(path: Path) -> str:
    exe = shutil.which("asciinema")
    assert exe is not None, "asciinema CLI not installed"
    # A new session has no controlling terminal, so asciinema does not switch one to raw mode.
    done = subprocess.run([exe, "cat", str(path)], capture_output=True, timeout=60,
                          start_new_session=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode("utf-8")


def test_asciinema_cat_prints_recorded_output(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "node-1")
    spool.lock()
    meta = {"identity": {"subject": "alice"}, "client": {}, "target": {"name": "web01"}}
    rec = spool.start_session(meta)
    writer = rec.open_channel("shell", width=80, height=24, term="xterm-256color", command=None,
                              user="alice", target="web01", login="deploy")
    writer.output(b"deploy@web01:~$ echo caf\xc3")
    writer.output(b"\xa9\r\n")
    writer.resize(100, 30)
    writer.marker("command: echo café")
    writer.output("café\r\n\x1b[1mbold\x1b[0m\r\n".encode())
    rec.finish("closed", "client closed")
    assert asciinema_cat(writer.path) == (
        "deploy@web01:~$ echo café\r\ncafé\r\n\x1b[1mbold\x1b[0m\r\n")

    # A recording closed by crash recovery stays readable too.
    crashed = spool.start_session(meta)
    writer = crashed.open_channel("exec", width=0, height=0, term=None, command="uptime",
                                  user="alice", target="web01", login="deploy")
    writer.output(b" 03:00:00 up 1 day\n")
    writer.flush()
    with writer.path.open("ab") as fh:
        fh.write(b'[9.0, "o", "torn')
    spool.unlock()
    survivor = Spool(tmp_path / "spool", "node-1")
    survivor.lock()
    assert survivor.recover() == [crashed.path]
    assert asciinema_cat(writer.path) == " 03:00:00 up 1 day\n"
    survivor.unlock()


def test_asciinema_cat_plays_a_cast_with_input_events(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "node-1")
    spool.lock()
    rec = spool.start_session({"identity": {}, "client": {}, "target": {"name": "web01"}})
    writer = rec.open_channel("exec", pty=True, width=80, height=24, term="xterm",
                              command="bash", user="alice", target="web01", login="deploy")
    writer.output(b"$ ")
    writer.input(b"stty -echo\r")  # typed, not echoed: only in the "i" events
    writer.input(b"touch /tmp/hidden\r")
    writer.output(b"\r\n$ ")
    writer.exited(0, None)
    rec.finish("closed", "client closed")
    spool.unlock()
    lines = writer.path.read_text(encoding="utf-8").splitlines()
    assert lines[3].endswith('"i", "touch /tmp/hidden\\r"]')
    assert asciinema_cat(writer.path) == "$ \r\n$ "


def test_scriptreplay_plays_an_exec_stream_as_documented(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "node-1")
    spool.lock()
    rec = spool.start_session({"identity": {}, "client": {}, "target": {"name": "web01"}})
    writer = rec.open_channel("exec", pty=False, width=0, height=0, term=None,
                              command="sh", user="alice", target="web01", login="deploy")
    writer.input(b"ls\n")
    writer.output(b"line one\n")
    writer.stderr(b"warning\n")
    writer.output(b"\x00\xffbinary\n")
    rec.finish("closed", "client closed")
    spool.unlock()
    # The README's command: scriptreplay skips a log's first line (script's header).
    done = subprocess.run(
        ["bash", "-c", "(echo; cat 1-exec.stdout) > \"$OUT\"; "
                       "scriptreplay -T 1-exec.timing -O \"$OUT\" -d 1000"],
        cwd=rec.path, env={"OUT": str(tmp_path / "out"), "PATH": "/usr/bin:/bin"},
        capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"line one\n\x00\xffbinary\n\n"  # scriptreplay ends with a newline
