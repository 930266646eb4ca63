"""Two bastion nodes on one PostgreSQL state database (a throwaway cluster), real OpenSSH and
the real IdP: a device login through one node binds the key and the other lets it straight in;
a kill issued through one node's config ends a session running on the other; a revocation
through one node's config refuses the key on the other."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.device_login import URL_RE, SshClient
from harness.nodes import Node, SharedStateStack
from harness.wait import wait_until

from bastion.audit import read_events
from bastion.config import load_config
from bastion.demo.idp import complete_device_login
from bastion.demo.postgres import ThrowawayPostgres
from bastion.state.backends import open_state
from bastion.state.sessions import SessionRegistry

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          postgres_cluster: ThrowawayPostgres) -> Iterator[SharedStateStack]:
    with SharedStateStack(tmp_path_factory.mktemp("nodes"), postgres_cluster.new_database(),
                          idp_options={"device_interval": 1}, with_s3=False) as st:
        st.add_node("node-b")
        yield st


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)


def new_key(st: SharedStateStack, name: str) -> Path:
    key = st.workdir / "keys" / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = st.workdir / f"ssh_config_{name}"
    config.write_text(st.sso_ssh_config_path.read_text(encoding="utf-8").replace(
        str(st.sso_key_path), str(key)), encoding="utf-8")
    return config


def ssh(st: SharedStateStack, config: Path, port: int, *command: str) -> SshClient:
    return SshClient(["ssh", "-F", str(config), "-p", str(port),
                      f"{st.login}@web01@{st.bastion_host}", "--", *command])


def fingerprint(config: Path) -> str:
    key = next(line.split()[1] for line in config.read_text().splitlines()
               if line.strip().startswith("IdentityFile"))
    return subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", key + ".pub"],
                          capture_output=True, text=True, check=True).stdout.split()[1]


def node_b(st: SharedStateStack) -> Node:
    return st.nodes[0]


def test_binding_made_on_one_node_lets_the_key_in_on_the_other(stack: SharedStateStack) -> None:
    key = new_key(stack, "k_shared")
    first = ssh(stack, key, stack.bastion_port, "echo", "via-a")
    complete_device_login(first.verification_url(), "alice", "alice-password")
    assert first.finish() == 0 and first.stdout == "via-a\n"

    second = ssh(stack, key, node_b(stack).port, "echo", "via-b")
    assert second.finish() == 0 and second.stdout == "via-b\n"
    assert URL_RE.search(second.stderr) is None  # no device login: the binding is shared
    events = read_events(node_b(stack).audit_log)
    used = [e for e in events if e["event"] == "binding.used" and e["key"] == fingerprint(key)]
    assert used and all(e["node"] == "node-b" for e in used)
    # Each node keeps its own spool: the session is recorded where it ran.
    assert [p for p in node_b(stack).spool_dir.iterdir() if p.is_dir()]


def test_kill_through_one_node_ends_a_session_on_the_other(stack: SharedStateStack) -> None:
    key = new_key(stack, "k_kill")
    login = ssh(stack, key, stack.bastion_port, "echo", "bound")
    complete_device_login(login.verification_url(), "alice", "alice-password")
    assert login.finish() == 0
    held = ssh(stack, key, node_b(stack).port, "echo ready; sleep 120")
    held.wait_for_stdout("ready")
    db = open_state(load_config(stack.config_path))  # what node A's CLI sees
    try:
        registry = SessionRegistry(db)
        wait_until(lambda: any(s.node == "node-b" for s in registry.running()), 30,
                   "node-b to register its session")
        [running] = [s for s in registry.running() if s.node == "node-b"]
    finally:
        db.close()
    assert running.user == "alice" and running.target == "web01"
    # `bastion sessions list` through node A shows the session node B is running.
    listed = cli(stack.config_path, "sessions", "list", "--json", "--local-only")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    [row] = [r for r in rows if r["session_id"] == running.session_id]
    assert (row["node"], row["state"], row["user"], row["target"]) == (
        "node-b", "active", "alice", "web01")
    running_only = cli(stack.config_path, "sessions", "list", "--json", "--local-only",
                       "--running")
    assert running.session_id in running_only.stdout
    kill = cli(stack.config_path, "sessions", "kill", running.session_id, "--reason",
               "maintenance window")
    assert kill.returncode == 0, kill.stderr
    assert held.finish(timeout=20) != 0  # ended by node B, not by sleep
    assert "maintenance window" in held.stderr
    killed = [e for e in read_events(node_b(stack).audit_log) if e["event"] == "session.killed"]
    assert [e["session"] for e in killed] == [running.session_id]


def test_revocation_through_one_node_refuses_the_key_on_the_other(
        stack: SharedStateStack) -> None:
    key = new_key(stack, "k_revoke")
    first = ssh(stack, key, node_b(stack).port, "echo", "bound-on-b")
    complete_device_login(first.verification_url(), "alice", "alice-password")
    assert first.finish() == 0
    assert ssh(stack, key, stack.bastion_port, "echo", "in").finish() == 0

    revoke = cli(stack.config_path, "keys", "revoke", fingerprint(key))
    assert revoke.returncode == 0 and "revoked 1 binding" in revoke.stdout

    again = ssh(stack, key, node_b(stack).port, "echo", "x")
    again.verification_url()  # node B asks for a device login again
    again.stop()
    assert again.stdout == ""
