"""A long exec command is stored once in a cast header (it was in the title, the asciicast
``command`` and bastion's own fields: three copies of an attacker-sized string)."""

from __future__ import annotations

import json
from pathlib import Path

from bastion.recording import Spool

META = {"identity": {"issuer": "local", "subject": "a", "name": "a", "email": None,
                     "groups": [], "method": "publickey"},
        "client": {"address": "127.0.0.1", "port": 1, "key_fingerprint": None},
        "target": {"name": "web01", "address": "127.0.0.1", "port": 22, "login": "deploy",
                   "host_key_fingerprint": None}}


def test_a_long_exec_command_is_stored_once_in_the_header(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "node-1")
    spool.lock()
    try:
        recording = spool.start_session(META)
        command = "echo " + "x" * 100_000 + " END"
        writer = recording.open_channel("exec", width=80, height=24, term="xterm",
                                        command=command, user="a", target="web01",
                                        login="deploy", pty=True)
        recording.finish("closed", "done")
        first_line = writer.path.read_text(encoding="utf-8").splitlines()[0]
    finally:
        spool.unlock()
    header = json.loads(first_line)
    assert header["command"] == command  # the asciicast field, in full, once
    assert first_line.count(command) == 1
    assert len(first_line) < len(command) + 1000
    assert header["title"].startswith("a -> deploy@web01: echo xxx")
