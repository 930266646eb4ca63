"""Command control in interactive shells: OpenSSH in tmux, bash on a real sshd, the demo's rules.

Every denied form is followed by a harmless command whose output proves the shell went on; the
victim directory (which the denied command would have removed) proves the command never ran.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.ssh import ssh_base_argv
from harness.tmux import TmuxSession
from harness.wait import wait_until

from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

PROMPT = re.compile(r"[#$] ?$", re.MULTILINE)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    with DemoStack(tmp_path_factory.mktemp("commands-shell"), with_s3=False,
                   with_idp=False) as st:
        yield st


@pytest.fixture(scope="module")
def shell(stack: DemoStack) -> Iterator[TmuxSession]:
    """One interactive shell on web01 for the whole module (bash, its history kept)."""
    argv = [*ssh_base_argv(stack), "-tt", f"{stack.login}@web01@127.0.0.1"]
    session = TmuxSession.start(argv, 220, 50)  # wide: notices stay on one row
    try:
        session.wait_for(PROMPT)
        session.type_line(f"cd {stack.workdir}; PS1='$ '; HISTFILE=/dev/null; clear")
        session.wait_for(PROMPT)
        yield session
    finally:
        session.kill()


_counter = iter(range(1, 10_000))


def victim(stack: DemoStack) -> Path:
    """A fresh directory a denied ``rm -rf`` would remove."""
    path = stack.workdir / f"t{next(_counter)}xvictim"
    (path / "sub").mkdir(parents=True)
    return path


def went_on(shell: TmuxSession) -> None:
    """Run a harmless command and wait for its output: whatever came before has finished."""
    token = f"went-on-{next(_counter)}"
    shell.type_line(f"echo {token[:4]}''{token[4:]}")
    # The token's output and then the next prompt: keys typed from now on reach readline.
    shell.wait_for(re.compile(rf"^{token}\n\$ ?$", re.MULTILINE), timeout=20)


_BLOCKED = re.compile(r"bastion: denied|waiting for approval \(request (\w+)\)")


def enter_blocked(shell: TmuxSession, line: str = "") -> str:
    """Type ``line`` and Enter; wait until the bastion refuses it or holds it for approval
    (then cancel with Ctrl-C). Returns "deny" or "approve"."""
    before = len(_BLOCKED.findall(shell.capture(history=True)))
    shell.type_line(line) if line else shell.send_keys("Enter")
    deadline = time.monotonic() + 20
    while True:
        found = list(_BLOCKED.finditer(shell.capture(history=True)))
        if len(found) > before:
            break
        assert time.monotonic() < deadline, f"not blocked: {line!r}\n{shell.capture()}"
        time.sleep(0.05)
    request = found[-1].group(1)
    if request:
        shell.send_keys("C-c")
        shell.wait_for(f"request {request} cancelled", timeout=20)
        return "approve"
    return "deny"


def test_typed_command_is_denied_and_the_line_cleared(stack: DemoStack,
                                                      shell: TmuxSession) -> None:
    target = victim(stack)
    shell.send_keys("C-l")
    assert enter_blocked(shell, f"rm -rf {target.name}") == "deny"
    assert "no-recursive-force-rm" in shell.capture()
    went_on(shell)
    assert target.exists()


def test_edited_lines_are_caught(stack: DemoStack, shell: TmuxSession) -> None:
    target = victim(stack)
    # Ctrl-U then retype
    went_on(shell)
    shell.send_literal("echo nothing to see")
    shell.send_keys("C-u")
    assert enter_blocked(shell, f"rm -fr {target.name}") == "deny"
    went_on(shell)
    # cursor moves: "rm -r X", Home, 5 x Right, "f"
    shell.send_literal(f"rm -r {target.name}")
    shell.send_keys("Home", *(["Right"] * 5))
    shell.send_literal("f")
    assert enter_blocked(shell) == "deny"
    went_on(shell)
    assert target.exists()


def test_history_recall_and_tab_completion(stack: DemoStack, shell: TmuxSession) -> None:
    target = victim(stack)
    shell.type_line(f": rm -rf {target.name}")  # harmless: ':' ignores its arguments
    went_on(shell)
    shell.send_keys("Up", "Up", "Home", "Delete", "Delete")  # the ': ' goes
    assert enter_blocked(shell) == "deny"
    went_on(shell)
    assert target.exists()
    shell.send_literal(f"rm -rf {target.name[:-1]}")
    shell.send_keys("Tab")
    shell.wait_for(f"{target.name}/")
    assert enter_blocked(shell) == "deny"
    went_on(shell)
    assert target.exists()


def test_bypass_families_are_blocked(stack: DemoStack, shell: TmuxSession) -> None:
    target = victim(stack)
    name = target.name
    lines = [f"r''m -rf {name}", f"\\rm -rf {name}", f"$'\\x72\\x6d' -rf {name}",
             f"sudo -u $USER rm -rf {name}", f"env nice command rm -rf {name}",
             f"bash -c 'rm -rf {name}'", f"$(echo rm) -rf {name}", "/usr/sbin/./shutdown -h now",
             "echo " + _b64(f"rm -rf {name}") + " | base64 -d | bash"]
    for line in lines:
        enter_blocked(shell, line)
        went_on(shell)
        assert target.exists(), line


def test_paste_continuation_and_ctrl_c(stack: DemoStack, shell: TmuxSession) -> None:
    target = victim(stack)
    first = stack.workdir / "pasted-first"
    # A bracketed multi-line paste (tmux pastes with ESC[200~ when bash asked for it).
    shell._run("set-buffer", "--", f"touch {first}\nrm -rf {target.name}\n")
    shell._run("paste-buffer", "-p", "-t", "main")
    shell.wait_for("nothing of this input was sent")  # judged as pasted, before any Enter
    went_on(shell)
    assert target.exists() and not first.exists()
    # A trailing backslash continues the line: judged joined.
    shell.type_line("rm -r\\")
    shell.wait_for(re.compile(r"^> ?$", re.MULTILINE))
    assert enter_blocked(shell, f"f {target.name}") == "deny"
    went_on(shell)
    assert target.exists()
    # A prefix, Ctrl-C, then at once a harmless command: only the harmless one runs,
    # unrefused. The bastion holds the keys typed after Ctrl-C until bash shows its new prompt
    # (keys that reach bash while it handles SIGINT join the old line, the first ones lost).
    refusals = len(_BLOCKED.findall(shell.capture(history=True)))
    shell.send_literal("rm -rf ")
    shell.wait_for(re.compile(r"^\$ rm -rf$", re.MULTILINE))
    shell.send_keys("C-c")
    shell.type_line(f"touch {stack.workdir / 'after-ctrl-c'}")
    shell.wait_for(re.compile(r"^\$ rm -rf \^C\n\$ touch ", re.MULTILINE), timeout=20)
    went_on(shell)
    assert (stack.workdir / "after-ctrl-c").exists()
    assert target.exists()
    assert len(_BLOCKED.findall(shell.capture(history=True))) == refusals


def test_harmless_mentions_run_and_stty_echo_hides_nothing(stack: DemoStack,
                                                          shell: TmuxSession) -> None:
    target = victim(stack)
    shell.type_line("echo rm -rf shutdown > mention.txt; grep shutdown mention.txt")
    shell.wait_for(re.compile(r"^rm -rf shutdown$", re.MULTILINE))
    assert (stack.workdir / "mention.txt").read_text() == "rm -rf shutdown\n"
    shell.type_line("stty -echo")
    assert enter_blocked(shell, f"rm -rf {target.name}") == "deny"
    shell.type_line("stty echo")
    went_on(shell)
    assert target.exists()


def _b64(text: str) -> str:
    return subprocess.run(["base64", "-w0"], input=text, capture_output=True, text=True,
                          check=True).stdout


def test_warned_command_runs(stack: DemoStack, shell: TmuxSession) -> None:
    marker = stack.workdir / "warned-ran"
    shell.type_line(f"sudo -n true 2>/dev/null; touch {marker}")
    shell.wait_for("warning by rule warn-sudo")
    went_on(shell)
    assert marker.exists()


def test_script_into_a_shell_without_pty(stack: DemoStack) -> None:
    target = victim(stack)
    before, after = stack.workdir / "script-before", stack.workdir / "script-after"
    script = f"touch {before}\nrm -rf {target}\ntouch {after}\n"
    result = subprocess.run([*ssh_base_argv(stack), "-T", f"{stack.login}@web01@127.0.0.1"],
                            input=script, capture_output=True, text=True, timeout=60,
                            check=False)
    assert "denied by rule no-recursive-force-rm" in result.stderr
    assert target.exists()
    assert before.exists() and after.exists()


def test_commands_are_in_the_record(stack: DemoStack, shell: TmuxSession) -> None:
    shell.type_line("echo recorded-line")
    went_on(shell)
    assert enter_blocked(shell, "reboot") == "deny"
    went_on(shell)
    shell.type_line("exit")
    assert shell.wait_exit() == 0

    def closed_sessions() -> list[dict[str, Any]]:
        sessions = [json.loads(p.read_text()) for p in stack.spool_dir.glob("*/session.json")]
        return [s for s in sessions if s.get("state") == "closed"]

    def shell_session() -> list[dict[str, Any]]:
        return [c for s in closed_sessions() for c in s.get("commands", [])
                if any(d["line"] == "echo recorded-line" for d in s.get("commands", []))]

    # The shell's own session.json (other tests of this module closed sessions earlier).
    wait_until(lambda: bool(shell_session()), timeout=20,
               what="the shell's session.json to be closed with its commands")
    verdicts = {c["verdict"] for c in shell_session()}
    assert {"allow", "deny"} <= verdicts
    audit = (stack.state_dir / "audit.jsonl").read_text()
    assert '"verdict":"deny"' in audit
