"""The test harness itself: real OpenSSH sshd targets, reached with the real ssh client."""

from __future__ import annotations

import re

import pytest
from harness.ssh import run_ssh
from harness.targets import SshdTargets
from harness.tmux import TmuxFactory

pytestmark = pytest.mark.e2e


def test_ssh_exec_reaches_each_target(sshd_targets: SshdTargets) -> None:
    for name in sshd_targets.names:
        result = run_ssh(sshd_targets.ssh_argv(name, "echo", "hello"))
        assert result.returncode == 0, result.stderr
        assert result.stdout == "hello\n"


def test_unknown_key_is_refused(sshd_targets: SshdTargets) -> None:
    argv = sshd_targets.ssh_argv("web01", "true")
    argv[argv.index("-i") + 1] = "/dev/null"
    result = run_ssh(argv)
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_interactive_shell_in_tmux(sshd_targets: SshdTargets, tmux: TmuxFactory) -> None:
    screen = tmux(sshd_targets.ssh_argv("web01", tty=True), width=90, height=25)
    screen.wait_for(re.compile(r"[#$] ?$", re.MULTILINE))
    screen.type_line("echo $((6*7))")
    screen.wait_for(re.compile(r"^42$", re.MULTILINE))

    screen.resize(120, 40)
    assert screen.size() == (120, 40)
    screen.type_line("stty size")
    screen.wait_for(re.compile(r"^40 120$", re.MULTILINE))

    screen.type_line("exit 3")
    assert screen.wait_exit() == 3


def test_tmux_reports_exit_status_and_signal(tmux: TmuxFactory) -> None:
    assert tmux(["sh", "-c", "echo done; exit 5"]).wait_exit() == 5
    killed = tmux(["sh", "-c", "echo bye; kill -KILL $$"])
    assert killed.wait_exit() == 128 + 9
    # The output stays readable after the program ended (tmux's "Pane is dead" line may
    # have scrolled it into the history).
    killed.wait_for("bye", history=True)
