"""Replay and search of sessions recorded through the bastion (OpenSSH in tmux), following a
live session, and ending one with ``bastion sessions kill``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness.ssh import ssh_base_argv
from harness.tmux import TmuxSession
from harness.wait import wait_until

from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

PROMPT = re.compile(r"[#$] ?$", re.MULTILINE)


def bastion(stack: DemoStack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion", *args, "--config",
                           str(stack.config_path)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **stack.env})


def new_session(stack: DemoStack, before: set[Path]) -> Path:
    found: list[Path] = []

    def appeared() -> bool:
        found[:] = [p for p in stack.spool_dir.glob("*T*Z-*") if p not in before
                    and (p / "session.json").exists()]
        return len(found) == 1
    wait_until(appeared, 20, "the new session's folder")
    return found[0]


def meta(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "session.json").read_text(encoding="utf-8")))


def shell(stack: DemoStack, tmux) -> tuple[TmuxSession, set[Path]]:
    before = set(stack.spool_dir.glob("*T*Z-*"))
    screen = tmux([*ssh_base_argv(stack), "-tt", f"{stack.login}@web01@127.0.0.1"],
                  width=100, height=30)
    screen.wait_for(PROMPT)
    return screen, before


def test_screen_at_a_moment_matches_what_the_user_saw(demo_stack: DemoStack, tmux) -> None:
    user, before = shell(demo_stack, tmux)
    user.type_line("printf 'first-%s\\n' $((6*7))")
    user.wait_for(re.compile(r"^first-42\n.*[#$] ?$", re.MULTILINE))
    seen = user.capture()
    user.type_line("printf 'second-%s\\n' $((7*7))")
    user.wait_for("second-49")
    user.type_line("exit")
    assert user.wait_exit() == 0
    folder = new_session(demo_stack, before)
    wait_until(lambda: (folder / "manifest.json").exists(), 30, "the session to be sealed")

    # The moment of the capture: the output of the first command, before the second is typed.
    cast = folder / "1-shell.cast"
    events = [json.loads(line) for line in cast.read_text(encoding="utf-8").splitlines()[1:]]
    first = next(i for i, e in enumerate(events) if e[1] == "o" and "first-42" in e[2])
    last = first
    while last + 1 < len(events) and "second" not in events[last + 1][2] \
            and "printf" not in events[last + 1][2]:
        last += 1
    moment = events[last][0]

    shown = bastion(demo_stack, "replay", folder.name, "--at", f"{moment:.6f}", "--screen")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == seen.splitlines()

    # The analyst finds the session by what was typed in it (its echo in the output)...
    found = bastion(demo_stack, "sessions", "search", "--output", r"printf 'second-%s",
                    "--target", "web01", "--since", "1h", "--local-only", "--json")
    assert found.returncode == 0, found.stderr
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    assert [r["session_id"] for r in rows] == [folder.name]
    assert rows[0]["user"] and rows[0]["login"] == demo_stack.login
    # ... and lists it with the filters.
    listed = bastion(demo_stack, "sessions", "list", "--target", "web01", "--local-only",
                     "--json")
    assert folder.name in listed.stdout
    assert folder.name not in bastion(demo_stack, "sessions", "list", "--target", "db01",
                                      "--local-only", "--json").stdout


def test_follow_watches_a_live_session(demo_stack: DemoStack, tmux) -> None:
    user, before = shell(demo_stack, tmux)
    folder = new_session(demo_stack, before)
    watcher = tmux([sys.executable, "-m", "bastion", "replay", "--follow", folder.name,
                    "--config", str(demo_stack.config_path)], width=100, height=30)
    watcher.wait_for("LIVE")
    user.type_line("echo live-$((5*5))")
    user.wait_for("live-25")
    watcher.wait_for("live-25", timeout=10)  # flushed within a second, read every 0.25 s
    user.type_line("exit")
    user.wait_exit()
    watcher.wait_for("END (q quits)", timeout=20)
    watcher.send_literal("q")
    assert watcher.wait_exit() == 0


def test_kill_ends_a_live_session_with_the_reason(demo_stack: DemoStack, tmux) -> None:
    user, before = shell(demo_stack, tmux)
    folder = new_session(demo_stack, before)

    def running() -> bool:
        listed = bastion(demo_stack, "sessions", "list", "--running", "--local-only", "--json")
        return folder.name in listed.stdout
    wait_until(running, 20, "the session to be listed as running")

    killed = bastion(demo_stack, "sessions", "kill", folder.name, "--reason", "incident 42")
    assert killed.returncode == 0, killed.stderr
    assert "ended: incident 42" in killed.stdout
    # (history: tmux scrolls the pane to add its "Pane is dead" line once ssh has exited)
    user.wait_for("session ended by", history=True)
    assert "incident 42" in user.capture(history=True), user.capture(history=True)
    assert user.wait_exit() != 0

    wait_until(lambda: meta(folder)["state"] == "killed", 20, "session.json to say killed")
    assert "incident 42" in meta(folder)["end_reason"]
    markers = [json.loads(line)[2] for line in
               (folder / "1-shell.cast").read_text(encoding="utf-8").splitlines()[1:]
               if json.loads(line)[1] == "m"]
    assert any(re.fullmatch(r"killed: incident 42 by \S+", m) for m in markers), markers
    audit = [json.loads(line) for line in
             (demo_stack.state_dir / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    events = {e["event"] for e in audit if e.get("session") == folder.name}
    assert {"session.kill_requested", "session.killed"} <= events
    assert not running()

    again = bastion(demo_stack, "sessions", "kill", folder.name, "--reason", "again")
    assert again.returncode != 0 and "is not running" in again.stderr


def test_replay_and_search_from_s3(demo_stack: DemoStack, tmp_path: Path) -> None:
    before = set(demo_stack.spool_dir.glob("*T*Z-*"))
    result = subprocess.run([*ssh_base_argv(demo_stack), f"{demo_stack.login}@db01@127.0.0.1",
                             "--", "echo from-s3-$((8*8))"], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.stdout == "from-s3-64\n", result.stderr
    folder = new_session(demo_stack, before)
    wait_until(lambda: (folder / "manifest.json").exists(), 30, "the session to be sealed")
    raw = bastion(demo_stack, "replay", folder.name, "--raw", "stdout")
    assert raw.returncode == 0 and raw.stdout == "from-s3-64\n", raw.stderr

    upload = bastion(demo_stack, "upload", timeout=180)
    assert upload.returncode == 0, upload.stdout + upload.stderr
    # Out of the spool (as once keep_days have passed): only the bucket has it now.
    folder.rename(tmp_path / folder.name)

    by_id = bastion(demo_stack, "replay", folder.name, "--transcript")
    assert by_id.returncode == 0, by_id.stderr
    assert "from-s3-64" in by_id.stdout and "echo from-s3" in by_id.stdout
    uri = f"{demo_stack.env['BASTION_S3_URI']}/{folder.name[:4]}/{folder.name[4:6]}/" \
          f"{folder.name[6:8]}/{demo_stack.loaded_config.server.node_id}/{folder.name}"
    by_uri = bastion(demo_stack, "replay", uri, "--transcript")
    assert by_uri.returncode == 0, by_uri.stderr
    assert "from-s3-64" in by_uri.stdout

    found = bastion(demo_stack, "sessions", "search", "--output", "from-s3-64", "--json")
    assert found.returncode == 0, found.stderr
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    assert [(r["session_id"], r["source"]) for r in rows] == [(folder.name, "s3")]
    again = bastion(demo_stack, "sessions", "search", "--output", "from-s3-64", "--json")
    assert again.stdout == found.stdout  # the second search reads the local index
