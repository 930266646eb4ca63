"""Just-in-time approval end to end: a user's command waits while an approver decides.

Two OpenSSH clients: the user (demo key) in a shell on web01, and alice (IdP user, approver)
in the approver menu (``ssh approvals@bastion``) or at the bastion host's CLI. Marker files
show whether the held command ran on the target.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from harness.device_login import SshClient
from harness.ssh import ssh_base_argv
from harness.tmux import TmuxSession
from harness.wait import wait_until

from bastion.demo.idp import complete_device_login
from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

PROMPT = re.compile(r"[#$] ?$", re.MULTILINE)
WAITING = re.compile(r"waiting for approval \(request (\w+)\)")


class Codes:
    """alice's TOTP codes: each one used once, so each approval takes a newer time step."""

    def __init__(self, totp: pyotp.TOTP) -> None:
        self.totp = totp
        self.last = -1

    def next(self) -> str:
        step = max(self.last + 1, int(time.time() // 30) - 1)
        while step > int(time.time() // 30) + 1:
            time.sleep(0.5)  # the bastion accepts one step ahead at most
        self.last = step
        return self.totp.at(step * 30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    with DemoStack(tmp_path_factory.mktemp("commands-approval"), with_s3=False,
                   idp_options={"device_interval": 1}) as st:
        yield st


@pytest.fixture(scope="module")
def alice(stack: DemoStack) -> Codes:
    """alice signed in once (her key is bound) and enrolled for TOTP, as an approver does."""
    assert stack.idp is not None
    account = stack.idp.accounts[0]
    key = f"{stack.idp.issuer}|{account.sub}"
    # Signed in once first (her key is bound): `totp enroll` takes only known identities.
    ssh = SshClient(["ssh", "-F", str(stack.sso_ssh_config_path), "-p", str(stack.bastion_port),
                     f"approvals@{stack.bastion_host}", "--", "list"])
    try:
        complete_device_login(ssh.verification_url(), account.username, account.password)
        assert ssh.finish() == 0, ssh.stderr
    finally:
        ssh.stop()
    out = bastion(stack, "totp", "enroll", key)
    assert out.returncode == 0, out.stderr
    uri = re.search(r"otpauth://totp/\S+", out.stdout)
    assert uri is not None
    secret = parse_qs(urlsplit(uri.group(0)).query)["secret"][0]
    return Codes(pyotp.TOTP(secret))


def bastion(stack: DemoStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion", *args, "--config",
                           str(stack.config_path)], capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ})


def alice_key(stack: DemoStack) -> str:
    assert stack.idp is not None
    return f"{stack.idp.issuer}|{stack.idp.accounts[0].sub}"


def user_shell(stack: DemoStack, sso: bool = False) -> TmuxSession:
    """A shell on web01: the demo user (key), or alice (bound key) with ``sso``."""
    config = stack.sso_ssh_config_path if sso else stack.ssh_config_path
    argv = ["ssh", "-F", str(config), "-p", str(stack.bastion_port), "-tt",
            f"{stack.login}@web01@{stack.bastion_host}"]
    shell = TmuxSession.start(argv, 200, 40)
    shell.wait_for(PROMPT)
    return shell


def request_held(shell: TmuxSession, marker: Path) -> str:
    """Type a command the demo rules hold for approval; its request id."""
    shell.type_line(f"systemctl restart bastion-demo-none 2>/dev/null; touch {marker}")
    request = shell.wait_for(WAITING, timeout=20).group(1)
    assert not marker.exists()
    return request


def approver_menu(stack: DemoStack) -> TmuxSession:
    argv = ["ssh", "-F", str(stack.sso_ssh_config_path), "-p", str(stack.bastion_port), "-tt",
            f"approvals@{stack.bastion_host}"]
    menu = TmuxSession.start(argv, 200, 40)
    menu.wait_for("Choose a number")
    return menu


def pick(menu: TmuxSession, request: str) -> None:
    number = menu.wait_for(re.compile(rf"(\d+)\) {request}")).group(1)
    menu.type_line(number)
    menu.wait_for("a) approve  d) deny")


def test_approver_approves_with_totp_and_the_command_runs(stack: DemoStack,
                                                           alice: Codes) -> None:
    marker = stack.workdir / "approved-ran"
    with user_shell(stack) as shell, approver_menu(stack) as menu:
        request = request_held(shell, marker)
        menu.type_line("")  # refresh: the new request shows
        pick(menu, request)
        menu.type_line("a")
        menu.wait_for("Your TOTP code:")
        menu.type_line(alice.next())
        menu.wait_for("Reason (optional):")
        menu.type_line("change CHG-1")
        menu.wait_for(f"Request {request} approved.")
        shell.wait_for("approved by alice: change CHG-1")
        wait_until(marker.exists, timeout=20, what="the approved command to run")
        menu.type_line("q")
        assert menu.wait_exit() == 0
    rows = _rows(stack, request)
    assert rows == [("approved", alice_key(stack), "alice", "change CHG-1")]


def test_approver_denies_and_the_line_is_refused(stack: DemoStack, alice: Codes) -> None:
    marker = stack.workdir / "denied-ran"
    with user_shell(stack) as shell, approver_menu(stack) as menu:
        request = request_held(shell, marker)
        menu.type_line("")
        pick(menu, request)
        menu.type_line("d")
        menu.wait_for("Reason:")
        menu.type_line("not during the freeze")
        menu.wait_for(f"Request {request} denied.")
        shell.wait_for(f"request {request} denied by alice: not during the freeze")
        shell.type_line("echo still-''here")
        shell.wait_for("still-here")
    assert not marker.exists()


def test_self_approval_is_refused_and_ctrl_c_cancels(stack: DemoStack, alice: Codes) -> None:
    marker = stack.workdir / "self-ran"
    with user_shell(stack, sso=True) as shell:  # alice herself asks
        request = request_held(shell, marker)
        out = bastion(stack, "approvals", "approve", request, "--as", alice_key(stack),
                      "--totp", "000000")
        assert out.returncode != 0
        assert "nobody approves or denies their own request" in out.stderr
        listed = bastion(stack, "approvals", "list")
        assert request in listed.stdout  # still pending
        shell.send_keys("C-c")
        shell.wait_for(f"request {request} cancelled")
        shell.type_line("echo after-''cancel")
        shell.wait_for("after-cancel")
    assert not marker.exists()
    assert _rows(stack, request)[0][0] == "cancelled"


def test_request_times_out(stack: DemoStack, alice: Codes) -> None:
    marker = stack.workdir / "late-ran"
    with user_shell(stack) as shell:
        request = request_held(shell, marker)
        # Time passes: the request's deadline (timeout = 10 min) is moved to now.
        with sqlite3.connect(stack.state_dir / "state.sqlite3") as db:
            db.execute("UPDATE approvals SET expires = ? WHERE id = ?", (time.time(), request))
        shell.wait_for(f"request {request} expired", timeout=20)
        shell.type_line("echo after-''timeout")
        shell.wait_for("after-timeout")
    assert not marker.exists()


def test_exec_denied_and_exec_approved(stack: DemoStack, alice: Codes) -> None:
    victim = stack.workdir / "exec-victim"
    (victim / "sub").mkdir(parents=True)
    denied = subprocess.run([*ssh_base_argv(stack), f"{stack.login}@web01@127.0.0.1", "--",
                             "rm", "-rf", str(victim)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert denied.returncode == 1
    assert "denied by rule no-recursive-force-rm" in denied.stderr
    assert victim.exists()

    marker = stack.workdir / "exec-approved-ran"
    ssh = SshClient([*ssh_base_argv(stack), f"{stack.login}@web01@127.0.0.1", "--",
                     f"systemctl restart bastion-demo-none 2>/dev/null; touch {marker}"])
    try:
        request = ssh.wait_for_stderr(WAITING).group(1)
        assert not marker.exists()
        out = bastion(stack, "approvals", "approve", request, "--as", alice_key(stack),
                      "--totp", alice.next(), "--reason", "exec ok")
        assert out.returncode == 0, out.stderr
        ssh.finish()
        assert marker.exists()
    finally:
        ssh.stop()


def test_an_approved_interactive_exec_still_has_its_lines_judged(stack: DemoStack,
                                                                  alice: Codes) -> None:
    # `ssh -t host bash -i`: bash reading the channel cannot be checked, so the exec waits for
    # approval; once approved, each line typed into it is judged like a shell's.
    victim = stack.workdir / "pty-exec-victim"
    (victim / "sub").mkdir(parents=True)
    argv = [*ssh_base_argv(stack), "-tt", f"{stack.login}@web01@127.0.0.1", "--",
            "bash", "--norc", "-i"]
    with TmuxSession.start(argv, 200, 40) as term:
        request = term.wait_for(WAITING, timeout=20).group(1)
        out = bastion(stack, "approvals", "approve", request, "--as", alice_key(stack),
                      "--totp", alice.next())
        assert out.returncode == 0, out.stderr
        term.wait_for(PROMPT)
        term.type_line(f"cd {stack.workdir}; rm -rf {victim.name}")
        term.wait_for("denied by rule no-recursive-force-rm")
        term.type_line("echo still-''here")
        term.wait_for("still-here")
    assert victim.exists()


def test_script_on_stdin_follows_the_unresolved_policy(stack: DemoStack,
                                                       alice: Codes) -> None:
    # `bash` reading its program from stdin cannot be checked: the demo's unresolved action
    # is "approve", so it waits; the approver denies it and the script never runs.
    marker = stack.workdir / "script-ran"
    proc = subprocess.Popen([*ssh_base_argv(stack), f"{stack.login}@web01@127.0.0.1", "--",
                             "bash"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(f"touch {marker}\n")
        proc.stdin.close()
        listed = ""

        def pending() -> bool:
            nonlocal listed
            listed = bastion(stack, "approvals", "list").stdout
            return " as " in listed or "bash" in listed

        wait_until(pending, timeout=30, what="the script's approval request")
        request = listed.split()[0]
        out = bastion(stack, "approvals", "deny", request, "--as", alice_key(stack),
                      "--reason", "no scripts")
        assert out.returncode == 0, out.stderr
        proc.wait(timeout=30)
        err = proc.stderr.read()
        assert proc.returncode == 1
        assert "denied by alice: no scripts" in err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert not marker.exists()


def _rows(stack: DemoStack, request: str) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(stack.state_dir / "state.sqlite3") as db:
        return list(db.execute("SELECT state, decided_by, decided_name, reason FROM approvals "
                               "WHERE id = ?", (request,)))
