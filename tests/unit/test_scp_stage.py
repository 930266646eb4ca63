"""Legacy scp and rsync commands: parsing, and the real OpenSSH scp -O through the scp stages.

``scp -O -S tests/harness/scp_relay.py`` makes scp run its remote half (``scp -t``/``scp -f``)
locally behind the same stages the bastion adds to such an exec channel.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bastion.relay.scp_stage import ScpCommand, parse_rsync, parse_scp

ROOT = Path(__file__).resolve().parents[2]
RELAY = ROOT / "tests" / "harness" / "scp_relay.py"


def test_scp_commands_are_recognised() -> None:
    assert parse_scp("scp -t -- /srv/x") == ScpCommand(True, ("/srv/x",), False, False)
    assert parse_scp("scp -r -d -t /srv") == ScpCommand(True, ("/srv",), True, True)
    assert parse_scp("scp -pf '/a b/c'") == ScpCommand(False, ("/a b/c",), False, False)
    assert parse_scp("/usr/bin/scp -f x") == ScpCommand(False, ("x",), False, False)
    # As OpenSSH's scp: -f wins over -t, options end at the first operand.
    assert parse_scp("scp -t -f x") == ScpCommand(False, ("x",), False, False)
    assert parse_scp("scp -f /a /b -p") == ScpCommand(False, ("/a", "/b", "-p"), False, False)
    for other in ("scp", "scp -t", "ls -t x", "scp -t a b", "scp -t 'x", "scp -Z -f x",
                  "scp -f -l"):
        assert parse_scp(other) is None


def test_rsync_server_commands_are_recognised() -> None:
    up = parse_rsync("rsync --server -vlogDtpre.iLsfxCIvu . /srv/dest")
    assert up is not None and up.upload and up.paths == ("/srv/dest",)
    down = parse_rsync("rsync --server --sender -vlogDtpre.iLsfxCIvu . /srv/a /srv/b")
    assert down is not None and not down.upload and down.paths == ("/srv/a", "/srv/b")
    assert parse_rsync("rsync -av x y") is None


def _scp(work: Path, rules: list[dict[str, Any]], *args: str
         ) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    (work / "rules.json").write_text(json.dumps(rules), encoding="utf-8")
    audit = work / "audit.jsonl"
    audit.unlink(missing_ok=True)
    wrapper = work / "fake-ssh"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {RELAY} \"$@\"\n", encoding="utf-8")
    wrapper.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}",
           "SCP_RELAY_RULES": str(work / "rules.json"), "SCP_RELAY_AUDIT": str(audit)}
    result = subprocess.run(["scp", "-O", "-S", str(wrapper), *args], cwd=work, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    events = [json.loads(line) for line in audit.read_text().splitlines()] \
        if audit.exists() else []
    return result, events


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_download_and_recursive_copy_are_audited_per_file(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(os.urandom(1_000_003))
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "one.txt").write_text("1")
    (tree / "sub" / "two.txt").write_text("22")
    remote = tmp_path / "remote"
    remote.mkdir()
    result, up = _scp(tmp_path, [], "a.bin", f"host:{remote}/a.bin")
    assert result.returncode == 0, result.stderr
    assert _sha(remote / "a.bin") == _sha(tmp_path / "a.bin")
    result, down = _scp(tmp_path, [], f"host:{remote}/a.bin", "back.bin")
    assert result.returncode == 0, result.stderr
    assert _sha(tmp_path / "back.bin") == _sha(tmp_path / "a.bin")
    result, tree_events = _scp(tmp_path, [], "-r", "tree", f"host:{remote}/")
    assert result.returncode == 0, result.stderr
    assert (remote / "tree" / "sub" / "two.txt").read_text() == "22"
    closes = [(e["op"], e["path"], e["bytes_written"] + e["bytes_read"])
              for e in up + down + tree_events if e["event"] == "scp.close"]
    assert closes == [("write", f"{remote}/a.bin", 1_000_003),
                      ("read", f"{remote}/a.bin", 1_000_003),
                      ("write", f"{remote}/tree/one.txt", 1),
                      ("write", f"{remote}/tree/sub/two.txt", 2)] or closes == [
                      ("write", f"{remote}/a.bin", 1_000_003),
                      ("read", f"{remote}/a.bin", 1_000_003),
                      ("write", f"{remote}/tree/sub/two.txt", 2),
                      ("write", f"{remote}/tree/one.txt", 1)]


def test_a_denied_file_is_skipped_and_the_others_go_through(tmp_path: Path) -> None:
    for name in ("ok1.txt", "secret.key", "ok2.txt"):
        (tmp_path / name).write_text(name)
    remote = tmp_path / "remote"
    remote.mkdir()
    rules = [{"groups": ["ops"], "deny_paths": ["**/*.key"]}]
    result, events = _scp(tmp_path, rules, "ok1.txt", "secret.key", "ok2.txt",
                          f"host:{remote}/")
    assert result.returncode != 0  # scp reports the skipped file
    assert "permission denied" in result.stderr
    assert sorted(p.name for p in remote.iterdir()) == ["ok1.txt", "ok2.txt"]
    [denied] = [e for e in events if e["event"] == "scp.denied"]
    assert denied["path"] == f"{remote}/secret.key" and denied["rule"] == "transfers[0]"


def test_a_denied_download_moves_no_byte(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "data.txt").write_text("data")
    rules = [{"groups": ["ops"], "download": False}]
    result, events = _scp(tmp_path, rules, f"host:{remote}/data.txt", "got.txt")
    assert result.returncode != 0
    assert not (tmp_path / "got.txt").exists()
    assert [e["event"] for e in events] == ["scp.denied"]


def test_hostile_names_are_escaped(tmp_path: Path) -> None:
    hostile = "bad\nname\x1b[1m"
    (tmp_path / hostile).write_text("h")
    remote = tmp_path / "remote"
    remote.mkdir()
    result, events = _scp(tmp_path, [], hostile, f"host:{remote}/")
    assert result.returncode == 0, result.stderr
    # OpenSSH's scp sends such a name vis(3)-encoded (backslash, caret), and so it lands.
    encoded = "bad\\^Jname\\^[[1m"
    assert (remote / encoded).read_text() == "h"
    raw = (tmp_path / "audit.jsonl").read_bytes()
    assert b"\x1b" not in raw and b"bad\nname" not in raw
    [close] = [e for e in events if e["event"] == "scp.close"]
    assert close["path"] == f"{remote}/{encoded}"



class _Ctx:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.ended: str | None = None

    def audit(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})

    def end_channel(self, reason: str) -> None:
        self.ended = reason


def _watch(command: str, rules: list[dict[str, Any]]) -> tuple[Any, _Ctx, list[bytes],
                                                                list[bytes]]:
    from bastion.config.model import TransferRule
    from bastion.policy.transfers import TransferPolicy
    from bastion.relay.scp_stage import ScpWatch
    from bastion.relay.transfer_log import TransferLog

    ctx = _Ctx()
    parsed = parse_scp(command)
    assert parsed is not None
    policy = TransferPolicy([(i, TransferRule(**{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in r.items()}))
                             for i, r in enumerate(rules)])
    watch = ScpWatch(ctx, parsed, policy, TransferLog(ctx, "scp"))  # type: ignore[arg-type]
    sent: list[bytes] = []
    back: list[bytes] = []
    watch.input.emit = lambda d, s: sent.append(d)
    watch.output.emit = lambda d, s: back.append(d)
    watch.input.ctx = watch.output.ctx = ctx  # type: ignore[assignment]
    return watch, ctx, sent, back


@pytest.mark.parametrize("chunk", [1, 2, 5, 1000])
def test_raw_stream_chunked_any_way_passes_whole_and_escapes_names(chunk: int) -> None:
    from bastion.relay.pipeline import Stream

    stream = (b"T1 0 1 0\nC0644 3 a\x1bb\n\x01\x02\x03\x00D0755 0 d\nC0600 2 x\nhi\x00E\n")
    watch, ctx, sent, _back = _watch("scp -r -d -t /dst", [])
    for i in range(0, len(stream), chunk):
        watch.input.feed(stream[i:i + chunk], Stream.DATA)
    assert b"".join(sent) == stream
    closes = [(e["path"], e["bytes_written"]) for e in ctx.events if e["event"] == "scp.close"]
    assert closes == [("/dst/a\\x1bb", 3), ("/dst/d/x", 2)]


def test_raw_denied_upload_is_dropped_and_answered() -> None:
    from bastion.relay.pipeline import Stream

    watch, ctx, sent, back = _watch("scp -d -t /dst", [{"groups": ["x"], "upload": False,
                                                        "users": ["alice"]}])
    watch.input.feed(b"C0644 3 f\n", Stream.DATA)
    assert sent == [] and back[0].startswith(b"\x01scp: /dst/f: permission denied")
    assert ctx.ended is None
