"""Interactive shells through the bastion: OpenSSH in tmux, replayed with asciinema."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from harness.ssh import ssh_base_argv
from harness.tmux import TmuxSession
from harness.wait import wait_for_session_end

from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

PROMPT = re.compile(r"[#$] ?$", re.MULTILINE)


def _new_shell_cast(stack: DemoStack, before: set[Path]) -> Path:
    casts = set(stack.spool_dir.glob("*/*-shell.cast")) - before
    assert len(casts) == 1, f"expected one new shell recording, found {sorted(casts)}"
    return casts.pop()


def test_interactive_shell_type_resize_exit_and_replay(demo_stack: DemoStack, tmux) -> None:
    before = set(demo_stack.spool_dir.glob("*/*-shell.cast"))
    argv = [*ssh_base_argv(demo_stack), "-tt", f"{demo_stack.login}@web01@127.0.0.1"]
    screen: TmuxSession = tmux(argv, width=100, height=30)
    screen.wait_for(PROMPT)
    screen.type_line("echo typed-$((6*7))")
    screen.wait_for("typed-42")
    screen.type_line("stty size")
    screen.wait_for("30 100")
    screen.resize(120, 40)
    screen.type_line("stty size; echo resized-ok")
    screen.wait_for(re.compile(r"40 120\s+resized-ok"))
    screen.type_line("exit 0")
    assert screen.wait_exit() == 0

    cast = _new_shell_cast(demo_stack, before)
    session = wait_for_session_end(cast.parent)
    assert session["state"] == "closed"
    lines = cast.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    assert (header["width"], header["height"]) == (100, 30)
    assert header["term"]["type"].startswith(("xterm", "tmux", "screen"))
    events = [json.loads(line) for line in lines[1:]]
    assert [e[2] for e in events if e[1] == "r"] == ["120x40"]
    times = [e[0] for e in events]
    assert times == sorted(times)

    # The recording replays to what was on the screen (asciinema 2.4 reads it).
    replay = subprocess.run(["asciinema", "cat", str(cast)], capture_output=True, text=True,
                            timeout=60, check=True)
    assert "typed-42" in replay.stdout
    assert "resized-ok" in replay.stdout


def test_signal_and_window_change_reach_the_target(demo_stack: DemoStack, tmux) -> None:
    argv = [*ssh_base_argv(demo_stack), "-tt", f"{demo_stack.login}@db01@127.0.0.1"]
    screen: TmuxSession = tmux(argv, width=90, height=25)
    screen.wait_for(PROMPT)
    screen.type_line("trap 'echo got-winch' WINCH; sleep 30")
    screen.resize(95, 26)
    screen.wait_for("got-winch")
    screen.send_keys("C-c")
    screen.type_line("echo after-interrupt")
    screen.wait_for("after-interrupt")
    screen.type_line("exit 3")
    assert screen.wait_exit() == 3


def test_menu_when_no_target_given(demo_stack: DemoStack, tmux) -> None:
    argv = [*ssh_base_argv(demo_stack), "-tt", "alice@127.0.0.1"]
    screen: TmuxSession = tmux(argv, width=100, height=30)
    screen.wait_for("Choose a number")
    entries = dict(re.findall(r"^\s*(\d+)\) (\S+)$", screen.capture(), re.MULTILINE))
    assert set(entries.values()) == {"web01", "db01"}, entries
    chosen = entries["2"]
    screen.send_literal("2")
    screen.send_keys("Enter")
    screen.wait_for(PROMPT)
    # The shell runs on the chosen target: the sshd it reached listens on that target's port
    # (both demo targets are sshd on 127.0.0.1, told apart only by their ports).
    screen.type_line('echo "port=${SSH_CONNECTION##* }"')
    screen.wait_for(re.compile(r"^port=\d+", re.MULTILINE))
    shown = re.findall(r"^port=(\d+)", screen.capture(), re.MULTILINE)
    assert shown == [str(demo_stack.targets[chosen].port)], (chosen, shown)
    screen.type_line("exit")
    assert screen.wait_exit() == 0


def test_menu_quit_leaves_cleanly(demo_stack: DemoStack, tmux) -> None:
    argv = [*ssh_base_argv(demo_stack), "-tt", "alice@127.0.0.1"]
    screen: TmuxSession = tmux(argv, width=100, height=30)
    screen.wait_for("Choose a number")
    screen.send_literal("q")
    assert screen.wait_exit() == 0
