"""File transfers through the bastion with OpenSSH's sftp and scp and with rsync, to real sshd.

One stack for the module, with ``[[transfers]]`` rules: on db01 the demo user may not upload; on
web01 nothing under a ``forbidden`` folder may be touched. Every transfer is checked by checksum,
and the audit log and the channel's ops log must name each file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from harness.ssh import BATCH_OPTIONS
from harness.wait import wait_until

from bastion.audit import read_events
from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e


class TransferStack(DemoStack):
    """The demo stack plus transfer rules."""

    def setup_access(self) -> None:
        super().setup_access()
        self.merge_config({"transfers": [
            {"users": ["demo"], "targets": ["db01"], "upload": False},
            {"groups": ["ops"], "targets": ["web01"], "deny_paths": ["**/forbidden/**"]},
        ]})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    with TransferStack(tmp_path_factory.mktemp("transfers"), with_idp=False,
                       with_s3=False) as started:
        yield started


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A folder on the targets (the same machine) that transfers write to."""
    folder = tmp_path / "remote"
    folder.mkdir()
    return folder


def _ssh_opts(stack: DemoStack) -> list[str]:
    return ["-F", str(stack.ssh_config_path), *BATCH_OPTIONS]


def _host(stack: DemoStack, target: str) -> str:
    return f"{stack.login}@{target}@{stack.bastion_host}"


def _run(argv: Sequence[str], cwd: Path | None = None, stdin: str | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)


def sftp(stack: DemoStack, target: str, batch: str, cwd: Path
         ) -> subprocess.CompletedProcess[str]:
    """Run an sftp batch (``-b -``) through the bastion."""
    return _run(["sftp", *_ssh_opts(stack), "-P", str(stack.bastion_port), "-b", "-",
                 _host(stack, target)], cwd=cwd, stdin=batch)


def scp(stack: DemoStack, *args: str, legacy: bool = False) -> subprocess.CompletedProcess[str]:
    """Run scp through the bastion (``legacy``: the old protocol, ``scp -O``)."""
    return _run(["scp", *_ssh_opts(stack), "-P", str(stack.bastion_port),
                 *(["-O"] if legacy else []), *args])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _audit(stack: DemoStack) -> list[dict[str, Any]]:
    return read_events(stack.state_dir / "audit.jsonl")


def _ops(stack: DemoStack) -> list[dict[str, Any]]:
    entries = []
    for log in sorted(stack.spool_dir.glob("*/*-sftp.ops.jsonl")):
        entries += [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    return entries


def _wait_for_event(stack: DemoStack, event: str, **fields: Any) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [e for e in _audit(stack) if e["event"] == event
                    and all(e.get(k) == v for k, v in fields.items())]
        return bool(found)

    wait_until(seen, 30, f"audit event {event} {fields}")
    return found[-1]


def test_sftp_upload_and_download_are_byte_identical_and_audited(
        stack: DemoStack, tmp_path: Path, remote: Path) -> None:
    (tmp_path / "up.bin").write_bytes(os.urandom(2 * 1024 * 1024 + 3))
    result = sftp(stack, "web01", f"put up.bin {remote}/a.bin\nget {remote}/a.bin down.bin\n"
                  f"rename {remote}/a.bin {remote}/b.bin\nrm {remote}/b.bin\n", tmp_path)
    assert result.returncode == 0, result.stderr
    assert _sha(tmp_path / "down.bin") == _sha(tmp_path / "up.bin")
    size = (tmp_path / "up.bin").stat().st_size
    up = _wait_for_event(stack, "sftp.close", path=f"{remote}/a.bin", op="write")
    assert up["bytes_written"] == size and up["status"] == "ok" and up["target"] == "web01"
    down = _wait_for_event(stack, "sftp.close", path=f"{remote}/a.bin", op="read")
    assert down["bytes_read"] == size
    _wait_for_event(stack, "sftp.rename", path=f"{remote}/a.bin", to=f"{remote}/b.bin")
    _wait_for_event(stack, "sftp.remove", path=f"{remote}/b.bin")
    ops = [(o["op"], o["path"]) for o in _ops(stack)]
    for entry in [("write", f"{remote}/a.bin"), ("read", f"{remote}/a.bin"),
                  ("rename", f"{remote}/a.bin"), ("remove", f"{remote}/b.bin")]:
        assert entry in ops


def test_scp_sftp_mode_and_legacy_mode_both_work(stack: DemoStack, tmp_path: Path,
                                                 remote: Path) -> None:
    (tmp_path / "f.txt").write_bytes(os.urandom(300_000))
    dest = f"{_host(stack, 'web01')}:{remote}"
    for legacy, name in ((False, "sftp-mode.txt"), (True, "legacy.txt")):
        result = scp(stack, str(tmp_path / "f.txt"), f"{dest}/{name}", legacy=legacy)
        assert result.returncode == 0, result.stderr
        assert _sha(remote / name) == _sha(tmp_path / "f.txt")
        back = tmp_path / f"back-{name}"
        result = scp(stack, f"{dest}/{name}", str(back), legacy=legacy)
        assert result.returncode == 0, result.stderr
        assert _sha(back) == _sha(tmp_path / "f.txt")
    _wait_for_event(stack, "sftp.close", path=f"{remote}/sftp-mode.txt", op="write")
    _wait_for_event(stack, "scp.close", path=f"{remote}/legacy.txt", op="write",
                    bytes_written=300_000)
    _wait_for_event(stack, "scp.close", path=f"{remote}/legacy.txt", op="read",
                    bytes_read=300_000)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_over_the_bastion(stack: DemoStack, tmp_path: Path, remote: Path) -> None:
    (tmp_path / "r.bin").write_bytes(os.urandom(500_000))
    rsh = f"ssh -F {stack.ssh_config_path} -p {stack.bastion_port} -o BatchMode=yes"
    result = _run(["rsync", "-e", rsh, str(tmp_path / "r.bin"),
                   f"{_host(stack, 'web01')}:{remote}/r.bin"])
    assert result.returncode == 0, result.stderr
    assert _sha(remote / "r.bin") == _sha(tmp_path / "r.bin")
    result = _run(["rsync", "-e", rsh, f"{_host(stack, 'web01')}:{remote}/r.bin",
                   str(tmp_path / "r-back.bin")])
    assert result.returncode == 0, result.stderr
    assert _sha(tmp_path / "r-back.bin") == _sha(tmp_path / "r.bin")
    event = _wait_for_event(stack, "channel.exit", exit_status=0)
    assert event["target"] == "web01"


def test_denied_upload_and_denied_path_leave_the_session_working(
        stack: DemoStack, tmp_path: Path, remote: Path) -> None:
    (tmp_path / "x.txt").write_text("payload\n")
    (remote / "forbidden").mkdir()
    (remote / "other").mkdir()  # so that the server could resolve other/.. (sftp stats first)
    (remote / "forbidden" / "secret").write_text("secret\n")
    (remote / "open.txt").write_text("open\n")
    # db01: no uploads. "-" lets the batch go on after a failed command, as a person would.
    result = sftp(stack, "db01", f"-put x.txt {remote}/x.txt\nget {remote}/open.txt o1\n",
                  tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Permission denied" in result.stderr
    assert not (remote / "x.txt").exists()
    assert (tmp_path / "o1").read_text() == "open\n"
    # web01: nothing under forbidden/, however the path is spelled.
    result = sftp(stack, "web01", f"-get {remote}/forbidden/secret s1\n"
                  f"-get {remote}/./other/../forbidden//secret s2\n"
                  f"-put x.txt {remote}/forbidden/new\nget {remote}/open.txt o2\n", tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()
    assert not (remote / "forbidden" / "new").exists()
    assert (tmp_path / "o2").read_text() == "open\n"
    denied = _wait_for_event(stack, "sftp.denied", path=f"{remote}/x.txt")
    assert denied["target"] == "db01" and denied["rule"] == "transfers[0]"
    _wait_for_event(stack, "sftp.denied", path=f"{remote}/./other/../forbidden//secret",
                    rule="transfers[1]")
    # Legacy scp is held to the same rules.
    result = scp(stack, str(tmp_path / "x.txt"), f"{_host(stack, 'db01')}:{remote}/y.txt",
                 legacy=True)
    assert result.returncode != 0
    assert not (remote / "y.txt").exists()
    _wait_for_event(stack, "scp.denied", path=f"{remote}/y.txt")
    # So is rsync: an upload to db01 is refused before a byte moves.
    if shutil.which("rsync") is not None:
        rsh = f"ssh -F {stack.ssh_config_path} -p {stack.bastion_port} -o BatchMode=yes"
        result = _run(["rsync", "-e", rsh, str(tmp_path / "x.txt"),
                       f"{_host(stack, 'db01')}:{remote}/r.txt"])
        assert result.returncode != 0
        assert "uploads are not allowed" in result.stderr
        assert not (remote / "r.txt").exists()
        _wait_for_event(stack, "rsync.denied", target="db01", mode="upload")


def test_hostile_file_names_are_recorded_escaped(stack: DemoStack, tmp_path: Path,
                                                  remote: Path) -> None:
    local = tmp_path / "in"
    local.mkdir()
    hostile = "ok\nsession.end {\x1b]0;pwned\x07\x1b[2J"
    (local / hostile).write_text("x")
    result = sftp(stack, "web01", f"lcd {local}\nput * {remote}/\nput * {remote}/sub/../../esc\n",
                  tmp_path)
    assert (remote / hostile).read_text() == "x", result.stderr
    # The second put fails on the target (no sub/), but its path is on record as sent.
    shown = f"{remote}/ok\\x0asession.end {{\\x1b]0;pwned\\x07\\x1b[2J"
    _wait_for_event(stack, "sftp.close", path=shown, op="write")
    _wait_for_event(stack, "sftp.open", path=f"{remote}/sub/../../esc")
    raw = (stack.state_dir / "audit.jsonl").read_bytes()
    for log in stack.spool_dir.glob("*/*-sftp.ops.jsonl"):
        raw += log.read_bytes()
    assert b"\x1b" not in raw and b"\x07" not in raw
    assert b"\nsession.end {" not in raw


def test_sealed_manifest_hashes_the_ops_log_naming_each_file(demo_stack: DemoStack,
                                                            tmp_path: Path) -> None:
    """On the full demo (signing key configured) the sftp session is sealed; its manifest lists
    the ops log, whose entries name each file, with the hash of exactly those bytes."""
    from bastion.evidence.manifest import parse_manifest

    remote = tmp_path / "sealed"
    remote.mkdir()
    (tmp_path / "one.txt").write_text("1")
    (tmp_path / "two.txt").write_text("22")
    result = sftp(demo_stack, "web01", f"put one.txt {remote}/one.txt\n"
                  f"put two.txt {remote}/two.txt\n", tmp_path)
    assert result.returncode == 0, result.stderr
    sealed: list[Path] = []

    def manifest_written() -> bool:
        sealed[:] = [log.parent for log in demo_stack.spool_dir.glob("*/1-sftp.ops.jsonl")
                     if str(remote) in log.read_text(encoding="utf-8")
                     and (log.parent / "manifest.json").exists()]
        return bool(sealed)

    wait_until(manifest_written, 60, "the sftp session sealed")
    folder = sealed[0]
    manifest = parse_manifest((folder / "manifest.json").read_bytes())
    entries = {entry.name: entry for entry in manifest.recordings}
    ops = entries["1-sftp.ops.jsonl"]
    data = (folder / "1-sftp.ops.jsonl").read_bytes()
    assert ops.sha256 == hashlib.sha256(data).hexdigest() and ops.size == len(data)
    named = [json.loads(line)["path"] for line in data.decode().splitlines()]
    assert named == [f"{remote}/one.txt", f"{remote}/two.txt"]
    assert {"1-sftp.stdin", "1-sftp.stdout"} <= set(entries)
