"""Every decision that depends on the target is taken for the target a channel actually uses,
however it was chosen (user name or menu), and for every channel of a connection."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.ssh import ssh_base_argv
from harness.tmux import TmuxSession

from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

PROMPT = re.compile(r"[#$] ?$", re.MULTILINE)


@pytest.fixture(scope="module")
def totp_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    """TOTP required for db01 only."""
    with DemoStack(tmp_path_factory.mktemp("authz"), with_s3=False,
                   identity_config={"totp_required_for": {"targets": ["db01"]}}) as stack:
        yield stack


def _audit(stack: DemoStack) -> list[dict[str, object]]:
    audit_log = stack.state_dir / "audit.jsonl"
    return [json.loads(line) for line in audit_log.read_text().splitlines()]


def test_menu_choice_of_a_totp_target_is_refused_without_a_code(totp_stack: DemoStack,
                                                               tmux) -> None:
    before = len(_audit(totp_stack))
    screen: TmuxSession = tmux([*ssh_base_argv(totp_stack), "-tt", "alice@127.0.0.1"])
    screen.wait_for("Choose a number")
    screen.send_literal("2")  # db01
    screen.send_keys("Enter")
    screen.wait_for("target db01 needs a TOTP code")
    assert screen.wait_exit() == 1
    refused = [e for e in _audit(totp_stack)[before:] if e["event"] == "session.refused"]
    assert refused and "TOTP" in str(refused[-1]["reason"])
    assert not [e for e in _audit(totp_stack)[before:] if e["event"] == "session.start"]


def test_menu_choice_of_a_plain_target_still_works(totp_stack: DemoStack, tmux) -> None:
    screen: TmuxSession = tmux([*ssh_base_argv(totp_stack), "-tt", "alice@127.0.0.1"])
    screen.wait_for("Choose a number")
    screen.send_literal("1")  # web01
    screen.send_keys("Enter")
    screen.wait_for(PROMPT)
    screen.type_line("exit 0")
    assert screen.wait_exit() == 0


@pytest.fixture
def plain_stack(tmp_path: Path) -> Iterator[DemoStack]:
    """Its own stack: a master connection held across the test must not meet other tests'
    sessions and limits on the shared demo stack."""
    with DemoStack(tmp_path / "stack", with_idp=False, with_s3=False) as stack:
        yield stack


def test_channels_of_a_menu_connection_stay_on_its_target(plain_stack: DemoStack, tmux,
                                                         tmp_path: Path) -> None:
    demo_stack = plain_stack
    """A menu connection on db01 (OpenSSH master); a multiplexed second channel lands on db01
    too (never on another target), and is authorized again."""
    control = tmp_path / "ctl"
    base = ssh_base_argv(demo_stack)
    master = tmux([*base, "-o", "ControlMaster=yes", "-o", f"ControlPath={control}",
                   "-tt", "alice@127.0.0.1"])
    master.wait_for("Choose a number")
    master.send_literal("2")  # db01
    master.send_keys("Enter")
    master.wait_for(PROMPT)
    shared = [*base, "-o", "ControlMaster=no", "-o", f"ControlPath={control}",
              "alice@127.0.0.1", "--", "echo", "port=${SSH_CONNECTION##* }"]
    second = subprocess.run(shared, capture_output=True, text=True, timeout=60, check=False,
                            stdin=subprocess.DEVNULL)
    assert second.returncode == 0, second.stderr
    assert second.stdout == f"port={demo_stack.targets['db01'].port}\n"
    master.type_line("exit 0")
    assert master.wait_exit() == 0
    subprocess.run(["ssh", "-o", f"ControlPath={control}", "-O", "exit", "x"],
                   capture_output=True, check=False, timeout=10)
