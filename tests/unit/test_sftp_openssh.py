"""The sftp stages between the real OpenSSH sftp client and sftp-server (no SSH connection).

``sftp -D`` runs tests/harness/sftp_relay.py as its server: the client's packets pass the same
stages the bastion runs, then reach OpenSSH's sftp-server. So the parser is held to the real
protocol, chunking and pipelining of OpenSSH.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RELAY = ROOT / "tests" / "harness" / "sftp_relay.py"

pytestmark = pytest.mark.skipif(not Path("/usr/lib/openssh/sftp-server").exists(),
                                reason="needs OpenSSH's sftp-server (openssh-server)")


def _sftp(work: Path, batch: str, rules: list[dict[str, Any]]
          ) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]],
                     list[dict[str, Any]]]:
    for name in ("audit.jsonl", "ops.jsonl"):
        (work / name).unlink(missing_ok=True)
    (work / "rules.json").write_text(json.dumps(rules), encoding="utf-8")
    (work / "batch").write_text(batch, encoding="utf-8")
    server = shlex.join([sys.executable, str(RELAY), str(work / "rules.json"),
                         str(work / "audit.jsonl"), str(work / "ops.jsonl")])
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    result = subprocess.run(["sftp", "-b", str(work / "batch"), "-D", server], cwd=work,
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    read = [json.loads(line) for line in (work / "audit.jsonl").read_text().splitlines()]
    ops = [json.loads(line) for line in (work / "ops.jsonl").read_text().splitlines()]
    return result, read, ops


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_download_rename_remove_are_audited(tmp_path: Path) -> None:
    (tmp_path / "local.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    result, audit, ops = _sftp(tmp_path, "put local.bin up.bin\nget up.bin down.bin\n"
                               "rename up.bin moved.bin\nmkdir d\nrmdir d\nrm moved.bin\n", [])
    assert result.returncode == 0, result.stderr
    assert _sha(tmp_path / "down.bin") == _sha(tmp_path / "local.bin")
    size = (tmp_path / "local.bin").stat().st_size
    base = str(tmp_path)
    assert [(o["op"], o["path"], o["status"]) for o in ops] == [
        ("write", f"{base}/up.bin", "ok"), ("read", f"{base}/up.bin", "ok"),
        ("rename", f"{base}/up.bin", "ok"), ("mkdir", f"{base}/d", "ok"),
        ("rmdir", f"{base}/d", "ok"), ("remove", f"{base}/moved.bin", "ok")]
    assert ops[0]["bytes_written"] == size and ops[1]["bytes_read"] == size
    assert ops[2]["to"] == f"{base}/moved.bin"
    events = [e["event"] for e in audit]
    assert events[:4] == ["sftp.open", "sftp.close", "sftp.open", "sftp.close"]


def test_denied_upload_and_path_are_refused_and_the_session_goes_on(tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("k")
    (tmp_path / "pub.txt").write_text("public\n")
    rules = [{"groups": ["ops"], "upload": False},
             {"groups": ["ops"], "deny_paths": [f"{tmp_path}/secret/**"]}]
    # "-" before a command: sftp goes on after it fails (the refusal), as a person would.
    result, audit, ops = _sftp(tmp_path, "-put pub.txt copy.txt\n-get secret/key got\n"
                               "-get ../" + tmp_path.name + "/secret/key got2\n"
                               "get pub.txt fetched.txt\n", rules)
    assert result.returncode == 0, result.stderr
    assert "Permission denied" in result.stderr
    assert not (tmp_path / "copy.txt").exists()
    assert not (tmp_path / "got").exists() and not (tmp_path / "got2").exists()
    assert (tmp_path / "fetched.txt").read_text() == "public\n"  # later commands still work
    denied = [(o["op"], o["path"], o["rule"]) for o in ops if o["status"] == "denied"]
    assert denied == [("write", f"{tmp_path}/copy.txt", "transfers[0]"),
                      ("read", f"{tmp_path}/secret/key", "transfers[1]"),
                      ("read", f"{tmp_path}/../{tmp_path.name}/secret/key", "transfers[1]")]
    assert sum(e["event"] == "sftp.denied" for e in audit) == 3


def test_hostile_names_are_recorded_escaped(tmp_path: Path) -> None:
    local = tmp_path / "in"
    local.mkdir()
    hostile = "evil\nname\x1b[31m\x07"
    (local / hostile).write_text("x")
    result, _audit, ops = _sftp(tmp_path, "mkdir up\ncd up\nlcd in\nput *\nput * ../escape\n",
                               [])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "up" / hostile).read_text() == "x"
    raw = (tmp_path / "audit.jsonl").read_bytes() + (tmp_path / "ops.jsonl").read_bytes()
    assert b"\x1b" not in raw and b"\x07" not in raw
    paths = [o["path"] for o in ops if o["op"] == "write"]
    assert paths == [f"{tmp_path}/up/evil\\x0aname\\x1b[31m\\x07", f"{tmp_path}/up/../escape"]
