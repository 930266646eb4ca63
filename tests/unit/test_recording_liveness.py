"""Liveness locks: recovery in one process of a node leaves alone the sessions another process
of the node is recording, and recovers them once that process is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from test_recording_spool import META

from bastion.recording import Spool

RECORDER = """
import sys
from pathlib import Path
from bastion.recording import Spool
spool = Spool(Path(sys.argv[1]), "node-1")
spool.adopt_lock(int(sys.argv[2]))
rec = spool.start_session({meta!r})
writer = rec.open_channel("shell", width=80, height=24, term="xterm", command=None,
                          user="bob", target="db01", login="root")
writer.output(b"$ id\\r\\n")
writer.flush()
print(rec.path, flush=True)
sys.stdin.read()  # recording until killed
"""


def state(folder: Path) -> str:
    return str(json.loads((folder / "session.json").read_text())["state"])


def test_recovery_skips_a_session_another_process_records_until_it_dies(tmp_path: Path,
                                                                        ) -> None:
    root = tmp_path / "spool"
    supervisor = Spool(root, "node-1")
    supervisor.lock()
    # A worker of the node: it shares the spool lock (an inherited descriptor) and records.
    worker = subprocess.Popen(
        [sys.executable, "-c", RECORDER.format(meta=META), str(root),
         str(supervisor.lock_fd)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        pass_fds=(supervisor.lock_fd,))
    try:
        assert worker.stdout is not None
        folder = Path(worker.stdout.readline().strip())
        assert supervisor.recover() == []  # alive: not touched
        assert state(folder) == "active"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        assert supervisor.recover() == [folder]  # its process is gone: recovered
        assert state(folder) == "interrupted"
    finally:
        worker.kill()
        worker.wait(timeout=30)
        supervisor.unlock()


def test_a_finished_session_releases_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root, "node-1")
    spool.lock()
    rec = spool.start_session(META)
    other = Spool(root, "node-1")
    other.adopt_lock(spool.lock_fd)
    assert other.recover() == []
    rec.finish("closed", "done")
    assert other.recover() == []  # ended on disk: nothing to recover, and not skipped
    assert other.recovery_skipped == []
    assert state(rec.path) == "closed"
    spool.unlock()
