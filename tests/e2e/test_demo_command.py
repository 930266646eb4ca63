"""``bastion demo``: starts a working stack, prints commands that work, stops everything."""

from __future__ import annotations

import re
import shlex
import signal
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from harness.ssh import BATCH_OPTIONS, run_ssh
from harness.tmux import TmuxFactory

from bastion.demo.procs import ManagedProcess, port_open

pytestmark = pytest.mark.e2e


@dataclass
class RunningDemo:
    process: ManagedProcess
    workdir: Path
    env: dict[str, str]

    def ports(self) -> list[int]:
        """The bastion's, the targets', the identity provider's and the S3 store's ports."""
        config = tomllib.loads((self.workdir / "bastion.toml").read_text(encoding="utf-8"))
        services = [urlsplit(self.env[name]).port for name in ("IDP_ISSUER", "S3_ENDPOINT")]
        assert all(services), services
        return [config["server"]["port"], *(t["port"] for t in config["targets"]),
                *(p for p in services if p is not None)]


def _read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition("=")
        (env[name],) = shlex.split(value)
    return env


@pytest.fixture(scope="module")
def running_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    workdir = tmp_path_factory.mktemp("demo-cli") / "work"
    process = ManagedProcess(
        "bastion demo", [sys.executable, "-m", "bastion", "demo", "--port", "0",
                         "--workdir", str(workdir)],
        log_path=workdir.parent / "demo.log")
    with process:
        process.wait_for_log("Press Ctrl-C to stop.", timeout=60)
        yield RunningDemo(process, workdir, _read_env(workdir / "demo.env"))


def _printed_command(demo: RunningDemo, marker: str) -> list[str]:
    lines = demo.process.log_path.read_text(encoding="utf-8").splitlines()
    return shlex.split(lines[lines.index(marker) + 1])


def test_demo_env_describes_the_running_stack(running_demo: RunningDemo) -> None:
    env = running_demo.env
    assert env["BASTION_HOST"] == "127.0.0.1"
    assert env["DEMO_TARGETS"] == "web01 db01"
    assert Path(env["BASTION_CONFIG"]).is_file()
    assert Path(env["BASTION_KEY"]).is_file()
    assert Path(env["BASTION_SPOOL"]).is_dir()
    assert all(port_open("127.0.0.1", port) for port in running_demo.ports())
    # What the shutdown test looks for: every server the demo runs names the work directory.
    running = " ".join(_processes_mentioning(running_demo.workdir))
    for program in ("sshd", "weed", "node", "bastion"):
        assert program in running, (program, running)
    # The user at the keyboard never gets the target key: it lives only in the vault.
    assert not (running_demo.workdir / "keys" / "target_ed25519").exists()


def test_printed_exec_command_runs_on_the_target(running_demo: RunningDemo) -> None:
    argv = _printed_command(running_demo, "Run one command:")
    assert argv[-3:] == ["--", "uname", "-a"]
    result = run_ssh([argv[0], *BATCH_OPTIONS, *argv[1:]])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Linux ")


def test_printed_shell_command_gives_an_interactive_shell(running_demo: RunningDemo,
                                                         tmux: TmuxFactory) -> None:
    argv = _printed_command(running_demo, "Open a shell on web01 through the bastion:")
    screen = tmux(argv, width=90, height=25)
    screen.wait_for(re.compile(r"[#$] ?$", re.MULTILINE))
    screen.type_line("echo $((6*7))")
    screen.wait_for(re.compile(r"^42$", re.MULTILINE))
    screen.resize(120, 40)
    screen.type_line("stty size")
    screen.wait_for(re.compile(r"^40 120$", re.MULTILINE))
    screen.type_line("exit 3")
    assert screen.wait_exit() == 3
    casts = list(Path(running_demo.env["BASTION_SPOOL"]).glob("*/*-shell.cast"))
    assert casts, "the shell session left no recording in the spool"


def test_sigterm_stops_every_process(running_demo: RunningDemo) -> None:
    ports = running_demo.ports()
    running_demo.process.signal(signal.SIGTERM)
    assert running_demo.process.proc is not None
    assert running_demo.process.proc.wait(timeout=30) == 0
    assert len(ports) == 5 and not any(port_open("127.0.0.1", port) for port in ports)
    assert "bastion demo: stopped" in running_demo.process.log_tail()
    # No process the demo started is left (sshd, node IdP, weed S3, bastion serve): each has
    # the work directory on its command line.
    assert _processes_mentioning(running_demo.workdir) == []


def _processes_mentioning(workdir: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended while we looked
        if str(workdir) in text:
            found.append(f"{cmdline.parent.name}: {text}")
    return found
