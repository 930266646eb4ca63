"""``bastion replay`` driven in a real terminal (tmux): pause, step, seek, next/previous command,
speed, quit with the terminal restored; a tampered recording refused, or played marked unverified.

The recording is written by the real spool writer (with command markers, which the relay adds
once the command catcher lands) on a controlled clock, and sealed by the real sealer.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness.evidence import make_sealer
from harness.tmux import TmuxSession

from bastion.recording.spool import Spool

pytestmark = pytest.mark.e2e

NODE = "replay-test"


def record(root: Path) -> tuple[Path, Path]:
    """A sealed session with three commands over 22 s; returns (session folder, config)."""
    now = [0.0]
    spool = Spool(root / "spool", NODE, clock=lambda: now[0])
    spool.lock()
    try:
        recording = spool.start_session({
            "identity": {"name": "alice"}, "client": {},
            "target": {"name": "web01", "login": "deploy"}})
        writer = recording.open_channel("shell", width=80, height=20, term="xterm",
                                        command=None, user="alice", target="web01",
                                        login="deploy")
        script: list[tuple[float, str, str]] = [
            (0.5, "o", "$ "),
            (1.0, "m", "command: echo one"), (1.0, "o", "echo one\r\none-out\r\n$ "),
            (5.0, "m", "command: sleep 10"), (5.0, "o", "sleep 10\r\n"),
            (15.0, "o", "\x1b]52;c;cm0gLXJmIH4=\x07\x1b]0;owned\x07done-sleeping\r\n$ "),
            (20.0, "m", "command: echo three"), (20.0, "o", "echo three\r\nthree-out\r\n$ "),
            (22.0, "o", "logout\r\n")]
        for t, code, data in script:
            now[0] = t
            if code == "o":
                writer.output(data.encode())
            else:
                writer.marker(data)
        recording.finish("closed", "client closed")
    finally:
        spool.unlock()
    # Keystrokes as the relay records them ([t, "i", text]), placed in time order before sealing.
    cast = recording.path / "1-shell.cast"
    header, *lines = cast.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    events += [[0.9, "i", "echo one\r"], [4.9, "i", "sleep 10\r"], [19.9, "i", "echo three\r"]]
    events.sort(key=lambda e: e[0])
    cast.write_text("\n".join([header, *(json.dumps(e) for e in events)]) + "\n",
                    encoding="utf-8")
    sealer, public_key = make_sealer(root, NODE)
    sealer.seal(recording.path)
    config = root / "bastion.toml"
    config.write_text(f"""
[paths]
state_dir = "{root / 'state'}"
spool_dir = "{root / 'spool'}"

[server]
node_id = "{NODE}"

[vault]
key_env = "BASTION_TEST_VAULT_KEY"

[evidence]
public_keys = ["{public_key}"]
""", encoding="utf-8")
    return recording.path, config


def replay_in_tmux(tmux, config: Path, *args: str) -> TmuxSession:
    """Run bastion replay in a tmux pane; after it, the exit status and the tty modes."""
    command = shlex.join([sys.executable, "-m", "bastion", "replay", "--config", str(config),
                          *args])
    script = f'{command}; echo "replay-exit=$?"; stty -a'
    return tmux(["sh", "-c", script], width=100, height=24)


def status(screen: TmuxSession) -> str:
    return screen.capture().splitlines()[-1]


def test_keys_pause_step_seek_commands_speed_quit(tmp_path: Path, tmux) -> None:
    folder, config = record(tmp_path)
    screen = replay_in_tmux(tmux, config, folder.name, "--paused")
    screen.wait_for("PAUSED")
    assert "00:00/00:22" in status(screen)

    for _ in range(3):  # a step is one moment: "$ ", the keys, the command and its output
        screen.send_literal(".")
    screen.wait_for("00:01/00:22")
    assert "one-out" in screen.capture()
    assert "$ echo one" in status(screen)

    screen.send_keys("Right")  # 1 s + 10 s
    screen.wait_for("00:11/00:22")
    assert "sleep 10" in screen.capture() and "done-sleeping" not in screen.capture()
    assert "$ sleep 10" in status(screen)

    screen.send_literal("n")
    screen.wait_for("00:20/00:22")
    assert "three-out" in screen.capture() and "$ echo three" in status(screen)

    screen.send_literal("p")
    screen.wait_for("00:05/00:22")
    assert "three-out" not in screen.capture() and "$ sleep 10" in status(screen)

    screen.send_keys("Left")
    screen.wait_for("00:00/00:22")
    screen.send_literal("+")
    screen.wait_for("| x2 |")

    screen.send_literal("nnn")  # commands at 1, 5 and 20 s
    screen.wait_for("00:20/00:22")
    screen.send_literal(" ")  # play the last two seconds (one at x2)
    screen.wait_for("END (q quits)", timeout=20)
    assert "logout" in screen.capture()
    # Nothing of the OSC 52 / title attack reached the terminal as text or otherwise.
    assert "cm0gLXJmIH4" not in screen.capture() and "owned" not in screen.capture()

    screen.send_literal("q")
    screen.wait_for("replay-exit=0", history=True)
    modes = screen.capture(history=True)
    assert " icanon" in modes and " echo " in modes and "-icanon" not in modes, modes


def test_input_line_shows_the_keystrokes(tmp_path: Path, tmux) -> None:
    folder, config = record(tmp_path)
    screen = replay_in_tmux(tmux, config, folder.name, "--paused", "--input", "--at", "6")
    screen.wait_for("keys: echo one^Msleep 10^M")
    screen.send_literal("n")
    screen.wait_for("keys: echo one^Msleep 10^Mecho three^M")
    screen.send_literal("q")
    screen.wait_for("replay-exit=0", history=True)


def test_ctrl_c_and_sigterm_restore_the_terminal(tmp_path: Path, tmux) -> None:
    folder, config = record(tmp_path)
    screen = replay_in_tmux(tmux, config, folder.name)
    screen.wait_for("playing")
    screen.send_keys("C-c")
    screen.wait_for("replay-exit=0", history=True)
    assert "-icanon" not in screen.capture(history=True)

    other = replay_in_tmux(tmux, config, folder.name, "--paused")
    other.wait_for("PAUSED")
    # The pane runs sh; its one child is the replay this test started.
    pids = subprocess.run(["pgrep", "-P", str(other.pane_pid)], capture_output=True, text=True,
                          check=False).stdout.split()
    assert len(pids) == 1, pids
    os.kill(int(pids[0]), signal.SIGTERM)
    other.wait_for("replay-exit=", history=True)
    assert "-icanon" not in other.capture(history=True)


def test_tampered_session_refused_unless_no_verify(tmp_path: Path, tmux) -> None:
    folder, config = record(tmp_path)
    cast = folder / "1-shell.cast"
    cast.write_bytes(cast.read_bytes().replace(b"three-out", b"THREE-OUT"))

    refused = subprocess.run([sys.executable, "-m", "bastion", "replay", folder.name,
                              "--config", str(config), "--screen", "--at", "21"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.startswith("bastion: ") and "does not verify" in refused.stderr
    assert "1-shell.cast was altered" in refused.stderr

    allowed = subprocess.run([sys.executable, "-m", "bastion", "replay", folder.name,
                              "--config", str(config), "--screen", "--at", "21",
                              "--no-verify"], capture_output=True, text=True, timeout=60)
    assert allowed.returncode == 0, allowed.stderr
    assert "THREE-OUT" in allowed.stdout
    assert "bastion: warning: NOT VERIFIED" in allowed.stderr

    screen = replay_in_tmux(tmux, config, folder.name, "--no-verify", "--paused")
    screen.wait_for("NOT VERIFIED")
    screen.send_literal("q")
    screen.wait_for("replay-exit=0", history=True)

    audit = [json.loads(line) for line in
             (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    views = [e for e in audit if e["event"] == "replay.view"]
    assert [(e["session"], e["verified"]) for e in views] == [(folder.name, False)] * 2
    assert views[0]["who"]
    refusals = [e for e in audit if e["event"] == "replay.refused"]
    assert len(refusals) == 1 and "altered" in refusals[0]["reason"]


def test_screen_transcript_export_are_sanitized(tmp_path: Path) -> None:
    folder, config = record(tmp_path)
    base = [sys.executable, "-m", "bastion", "replay", folder.name, "--config", str(config)]
    shown = subprocess.run([*base, "--at", "0:16", "--screen"], capture_output=True, text=True,
                           timeout=60, check=True)
    assert shown.stdout.splitlines() == ["$ echo one", "one-out", "$ sleep 10", "done-sleeping",
                                         "$"]
    text = subprocess.run([*base, "--transcript"], capture_output=True, text=True, timeout=60,
                          check=True).stdout
    assert "[00:05] $ sleep 10" in text and "done-sleeping" in text
    assert "\x1b" not in text and "\x07" not in text
    out = tmp_path / "export.cast"
    subprocess.run([*base, "--export", str(out)], capture_output=True, text=True, timeout=60,
                   check=True)
    exported = out.read_text(encoding="utf-8")
    assert "52;c" not in exported and "owned" not in exported
    cat = subprocess.run(["asciinema", "cat", str(out)], capture_output=True, text=True,
                         timeout=60, check=True)
    assert "done-sleeping" in cat.stdout and "three-out" in cat.stdout
    audit = [json.loads(line) for line in
             (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert [e["mode"] for e in audit if e["event"] == "replay.view"] == [
        "screen", "transcript", "export"]


def test_search_by_command_marker_then_replay_the_moment(tmp_path: Path) -> None:
    folder, config = record(tmp_path)
    found = subprocess.run([sys.executable, "-m", "bastion", "sessions", "search", "--command",
                            r"^sleep \d+$", "--target", "web01", "--since", "1h", "--config",
                            str(config), "--json"], capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    assert [(r["session_id"], r["match"]["at"], r["match"]["replay_at"]) for r in rows] == [
        (folder.name, "00:05", "00:06")]
    shown = subprocess.run([sys.executable, "-m", "bastion", "replay", rows[0]["session_id"],
                            "--at", rows[0]["match"]["replay_at"], "--screen", "--config",
                            str(config)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1] == "$ sleep 10"
    none = subprocess.run([sys.executable, "-m", "bastion", "sessions", "search", "--command",
                           "sleep", "--user", "mallory", "--config", str(config), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert none.returncode == 0 and none.stdout == ""
    bad = subprocess.run([sys.executable, "-m", "bastion", "sessions", "search", "--command",
                          "(unclosed", "--config", str(config)], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("bastion: bad regular expression")
