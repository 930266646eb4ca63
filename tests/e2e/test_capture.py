"""Everything that crosses the bastion is on record, byte-exact (real OpenSSH client and sshd):
exec stdin, binary output both ways, keystrokes typed with echo off, and a crash mid-transfer."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.ssh import bastion_destination, run_ssh, ssh_base_argv
from harness.tmux import TmuxSession
from harness.wait import wait_for_session_end, wait_until

from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

PROMPT = re.compile(r"[#$] ?$", re.MULTILINE)


def _session_with(stack: DemoStack, needle: str) -> Path:
    found = [p.parent for p in stack.spool_dir.glob("*/session.json")
             if any(needle in (c.get("command") or "")
                    for c in json.loads(p.read_text()).get("channels", []))]
    assert len(found) == 1, found
    return found[0]


def _sealed(session: Path) -> dict[str, object]:
    wait_until(lambda: (session / "manifest.sig").exists(), 30, f"{session.name} to be sealed")
    manifest: dict[str, object] = json.loads((session / "manifest.json").read_text())
    return manifest


def _verify(stack: DemoStack, session: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion", "verify", "--public-key",
         f"{stack.signing_key_path}.pub", str(session)],
        capture_output=True, text=True, timeout=120, check=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_script_piped_to_bash_is_recorded_byte_for_byte(demo_stack: DemoStack,
                                                       tmp_path: Path) -> None:
    proof = tmp_path / "proof"
    script = (f"touch {proof}\n"
              "echo visible\n"
              "printf 'bin\\001\\377ary\\n' >&2\n").encode()
    result = subprocess.run(
        [*ssh_base_argv(demo_stack), bastion_destination(demo_stack, "web01"), "--",
         "bash -s # piped-script"], input=script, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert proof.exists() and result.stdout == b"visible\n"
    session = _session_with(demo_stack, "piped-script")
    wait_for_session_end(session)
    assert (session / "1-exec.stdin").read_bytes() == script
    assert (session / "1-exec.stdout").read_bytes() == b"visible\n"
    assert (session / "1-exec.stderr").read_bytes() == b"bin\x01\xffary\n"


def test_keystrokes_typed_with_echo_off_are_recorded(demo_stack: DemoStack, tmux) -> None:
    before = set(demo_stack.spool_dir.glob("*/1-shell.cast"))
    screen: TmuxSession = tmux([*ssh_base_argv(demo_stack), "-tt",
                                bastion_destination(demo_stack, "web01")])
    screen.wait_for(PROMPT)
    screen.type_line("stty -echo")
    screen.wait_for(PROMPT)
    screen.type_line("touch /tmp/hidden-$$; echo hidden-ran")
    screen.wait_for("hidden-ran")
    assert "touch /tmp/hidden" not in screen.capture()  # the terminal never showed it
    screen.type_line("exit 0")
    assert screen.wait_exit() == 0
    [cast] = set(demo_stack.spool_dir.glob("*/1-shell.cast")) - before
    wait_for_session_end(cast.parent)
    events = [json.loads(line) for line in cast.read_text().splitlines()[1:]]
    typed = "".join(e[2] for e in events if e[1] == "i")
    assert "touch /tmp/hidden-$$; echo hidden-ran\r" in typed
    assert "exit: 0" in [e[2] for e in events if e[1] == "m"]


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[DemoStack]:
    with DemoStack(tmp_path / "stack", with_idp=False, with_s3=True) as stack:
        yield stack


def test_50mb_up_and_down_hash_to_the_record_and_verify(private_stack: DemoStack,
                                                        tmp_path: Path) -> None:
    # Its own stack: the big recorded files are removed at the end, which would leave the
    # shared demo stack's sessions incomplete for later tests (upload, replay).
    demo_stack = private_stack
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(50 * 1024 * 1024))
    expected = _sha256(payload)
    remote = tmp_path / "uploaded.bin"
    with payload.open("rb") as data:
        up = subprocess.run([*ssh_base_argv(demo_stack), bastion_destination(demo_stack, "web01"),
                             "--", f"cat > {remote}"], stdin=data, capture_output=True,
                            timeout=300, check=False)
    assert up.returncode == 0, up.stderr
    assert _sha256(remote) == expected
    down = subprocess.run([*ssh_base_argv(demo_stack), bastion_destination(demo_stack, "web01"),
                           "--", f"cat {remote}"], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=300,
                          check=False)
    assert down.returncode == 0 and hashlib.sha256(down.stdout).hexdigest() == expected
    del down
    up_session = _session_with(demo_stack, f"cat > {remote}")
    down_session = _session_with(demo_stack, f"cat {remote}")
    for session, stream in ((up_session, "1-exec.stdin"), (down_session, "1-exec.stdout")):
        manifest = _sealed(session)
        assert _sha256(session / stream) == expected
        files = {f["name"]: f for f in manifest["files"]}  # type: ignore[attr-defined]
        assert files[stream]["sha256"] == expected
        assert files[stream]["size"] == payload.stat().st_size
        verdict = _verify(demo_stack, session)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    # One flipped byte in a recorded stream and the evidence no longer verifies.
    stream = down_session / "1-exec.stdout"
    with stream.open("r+b") as f:
        f.seek(12345)
        byte = f.read(1)
        f.seek(12345)
        f.write(bytes([byte[0] ^ 0x01]))
    verdict = _verify(demo_stack, down_session)
    assert verdict.returncode == 1
    assert "1-exec.stdout" in verdict.stdout + verdict.stderr
    for path in (payload, remote, up_session / "1-exec.stdin", stream):
        path.unlink()  # keep 200 MB out of what pytest retains


def test_sigkill_mid_transfer_closes_streams_and_seals_interrupted(private_stack: DemoStack,
                                                                  tmp_path: Path) -> None:
    stack = private_stack
    client = subprocess.Popen(
        [*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--",
         "head -c 4000000 /dev/urandom; sleep 30 # mid-transfer"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert client.stdout is not None
        received = b""
        while len(received) < 4000000:
            # (os.read: a buffered read(65536) would wait for the rest of 64 KiB, i.e. for
            # the end of the session, and the kill would come after it)
            chunk = os.read(client.stdout.fileno(), 65536)
            assert chunk, "the transfer ended early"
            received += chunk
        session = _session_with(stack, "mid-transfer")
        wait_until(lambda: (session / "1-exec.stdout").stat().st_size >= 4000000, 10,
                   "the output to reach the recording")
        assert stack.bastion is not None
        stack.bastion.signal(signal.SIGKILL)
        client.wait(timeout=30)
    finally:
        client.kill()
    stack.bastion.stop()
    stack.start_bastion()  # recovery and sealing run at start-up
    meta = json.loads((session / "session.json").read_text())
    assert meta["state"] == "interrupted"
    # Every byte the client got is in the record, in order, and the timing accounts for it.
    assert (session / "1-exec.stdout").read_bytes() == received[:4000000]
    timing = (session / "1-exec.timing").read_text().splitlines()
    assert sum(int(line.split()[2]) for line in timing if line.startswith("O ")) == 4000000
    _sealed(session)
    verdict = _verify(stack, session)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    ok = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--", "echo ok"])
    assert ok.stdout == "ok\n"
