"""Device login over plain OpenSSH against the node oidc-provider: bind, reuse, revoke, refuse."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.device_login import SshClient

from bastion.audit import read_events
from bastion.demo.idp import complete_device_login
from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    with DemoStack(tmp_path_factory.mktemp("identity"),
                   idp_options={"device_interval": 1}) as st:
        yield st


def bastion_cli(st: DemoStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion", *args, "-c", str(st.config_path)],
                          capture_output=True, text=True, timeout=30, check=False)


def new_key(st: DemoStack, name: str) -> Path:
    """A key pair the bastion has never seen, and an ssh_config using only it."""
    key = st.workdir / "keys" / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    text = st.sso_ssh_config_path.read_text(encoding="utf-8")
    config = st.workdir / f"ssh_config_{name}"
    config.write_text(text.replace(str(st.sso_key_path), str(key)), encoding="utf-8")
    return config


def ssh(st: DemoStack, config: Path, target: str, *command: str) -> SshClient:
    argv = ["ssh", "-F", str(config), "-p", str(st.bastion_port),
            f"{st.login}@{target}@{st.bastion_host}"]
    return SshClient([*argv, "--", *command] if command else argv)


def fingerprint(key_config: Path) -> str:
    key = next(line.split()[1] for line in key_config.read_text().splitlines()
               if line.strip().startswith("IdentityFile"))
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", key + ".pub"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def device_login(st: DemoStack, config: Path, user: str = "alice",
                 password: str = "alice-password", target: str = "web01") -> SshClient:
    client = ssh(st, config, target, "echo", "on-target")
    url = client.verification_url()
    complete_device_login(url, user, password)
    return client


def test_device_login_binds_key_and_reconnect_needs_no_login(stack: DemoStack) -> None:
    config = new_key(stack, "k_bind")
    client = ssh(stack, config, "web01", "echo", "on-target")
    url = client.verification_url()
    shown = client.stderr
    # What the user sees: URL with the code, the code on its own line, a QR code, time left,
    # where the request came from and what it asks for.
    code = url.rsplit("user_code=", 1)[1]
    assert f"\n  {code}\n" in shown
    assert "\u2588" in shown or "\u2580" in shown  # the QR code (UTF-8 auth banner)
    assert "expires in 10 minutes" in shown
    assert "requested from 127.0.0.1 port" in shown and f"{stack.login}@web01" in shown
    complete_device_login(url, "alice", "alice-password")
    assert client.finish() == 0 and client.stdout == "on-target\n"

    listed = bastion_cli(stack, "keys", "list", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    mine = [r for r in rows if r["key"] == fingerprint(config)]
    assert len(mine) == 1 and mine[0]["groups"] == ["ops"] and mine[0]["name"] == "alice"
    assert mine[0]["identity"] == f"{stack.idp.issuer}|a1b2c3-alice"  # type: ignore[union-attr]

    again = ssh(stack, config, "web01", "echo", "again")
    assert again.finish() == 0 and again.stdout == "again\n"
    assert "user_code" not in again.stderr
    events = read_events(stack.state_dir / "audit.jsonl")
    used = [e for e in events if e["event"] == "binding.used" and e["key"] == mine[0]["key"]]
    assert used
    logins = [e for e in events if e["event"] == "login.success" and e["key"] == mine[0]["key"]]
    assert [e["method"] for e in logins][-2:] == ["oidc-device", "binding"]


def test_revoked_key_needs_device_login_again(stack: DemoStack) -> None:
    config = new_key(stack, "k_revoke")
    assert device_login(stack, config).finish() == 0
    revoke = bastion_cli(stack, "keys", "revoke", fingerprint(config))
    assert revoke.returncode == 0 and "revoked 1 binding" in revoke.stdout
    client = ssh(stack, config, "web01", "echo", "x")
    client.verification_url()  # asked to sign in again
    client.stop()
    assert bastion_cli(stack, "keys", "revoke", fingerprint(config)).returncode != 0


def test_revoking_ends_live_sessions_within_seconds(stack: DemoStack) -> None:
    """A shell held open by a bound key, and one opened by the device login itself, both end
    within seconds of `bastion keys revoke --identity`, with the reason shown and audited."""
    config = new_key(stack, "k_live")
    first = ssh(stack, config, "web01", "echo ready; sleep 120")
    complete_device_login(first.verification_url(), "alice", "alice-password")
    first.wait_for_stdout("ready")
    second = ssh(stack, config, "db01", "echo ready; sleep 120")  # the bound key: straight in
    second.wait_for_stdout("ready")
    events = read_events(stack.state_dir / "audit.jsonl")
    identity = next(e for e in events if e["event"] == "binding.created"
                    and e["key"] == fingerprint(config))
    revoke = bastion_cli(stack, "keys", "revoke", "--identity",
                         f"{identity['issuer']}|{identity['subject']}")
    assert revoke.returncode == 0, revoke.stderr
    for client in (first, second):
        assert client.finish(timeout=15) != 0  # ended by the bastion, not by sleep
        assert "your key binding was revoked; session ended" in client.stderr
    revoked = [e for e in read_events(stack.state_dir / "audit.jsonl")
               if e["event"] == "session.revoked"]
    assert len(revoked) >= 2


def test_user_denies_at_idp_is_refused(stack: DemoStack) -> None:
    config = new_key(stack, "k_deny")
    client = ssh(stack, config, "web01", "echo", "x")
    complete_device_login(client.verification_url(), "alice", "alice-password", approve=False)
    assert client.finish() == 255
    assert "bastion: the sign-in was denied at the identity provider" in client.stderr
    assert "Permission denied" in client.stderr and client.stdout == ""
    assert fingerprint(config) not in bastion_cli(stack, "keys", "list").stdout


def test_user_outside_target_groups_is_refused(stack: DemoStack) -> None:
    config = new_key(stack, "k_bob")
    client = device_login(stack, config, "bob", "bob-password")
    assert client.finish() != 0 and client.stdout == ""
    assert "target 'web01' is not available to you" in client.stderr
    events = read_events(stack.state_dir / "audit.jsonl")
    assert any(e["event"] == "login.device_success" and e["name"] == "bob" for e in events)


def test_idp_down_fails_device_login_but_bound_keys_work(stack: DemoStack) -> None:
    bound = new_key(stack, "k_bound")
    assert device_login(stack, bound).finish() == 0
    assert stack.idp is not None
    stack.idp.stop()
    try:
        client = ssh(stack, new_key(stack, "k_down"), "web01", "echo", "x")
        assert client.finish() == 255
        lines = [ln for ln in client.stderr.splitlines() if ln.startswith("bastion:")]
        assert len(lines) == 1, client.stderr
        assert "device login is unavailable" in lines[0] and "unreachable" in lines[0]
        ok = ssh(stack, bound, "web01", "echo", "still-in")
        assert ok.finish() == 0 and ok.stdout == "still-in\n"
    finally:
        stack.idp.start()
