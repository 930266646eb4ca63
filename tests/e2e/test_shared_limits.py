"""Limits held across bastion nodes on one PostgreSQL state database (a throwaway cluster), with
real OpenSSH clients: the per-user session cap counts the sessions open on every node, and the
device logins one address may start per minute are counted on every node too."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from harness.device_login import URL_RE, SshClient
from harness.nodes import SharedStateStack
from harness.wait import wait_until

from bastion.audit import read_events
from bastion.config import load_config
from bastion.demo.postgres import ThrowawayPostgres
from bastion.identity.bindings import KeyBindings
from bastion.identity.model import Identity
from bastion.state.backends import open_state
from bastion.state.limits import LimitStore, Scope

pytestmark = pytest.mark.e2e

ALICE = Identity("https://idp.test", "alice-sub", "alice", ("ops",), None, "oidc-device")
SESSION_CAP = 1
DEVICE_LOGINS = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          postgres_cluster: ThrowawayPostgres) -> Iterator[SharedStateStack]:
    with SharedStateStack(tmp_path_factory.mktemp("limits"), postgres_cluster.new_database(),
                          server_options={"max_sessions_per_user": SESSION_CAP,
                                          "device_logins_per_source": DEVICE_LOGINS},
                          idp_options={"device_interval": 1}, with_s3=False) as st:
        st.add_node("node-b")
        yield st


def key_config(st: SharedStateStack, name: str, bind_to: Identity | None) -> Path:
    """A new key (bound to ``bind_to`` as a device login would have bound it) and its
    ssh_config."""
    key = st.workdir / "keys" / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    if bind_to is not None:
        public = Path(f"{key}.pub").read_text(encoding="utf-8").strip()
        db = open_state(load_config(st.config_path))
        try:
            KeyBindings(db).bind(asyncssh.import_public_key(public).get_fingerprint("sha256"),
                                 public, bind_to, 3600, "127.0.0.1")
        finally:
            db.close()
    config = st.workdir / f"ssh_config_{name}"
    config.write_text(st.sso_ssh_config_path.read_text(encoding="utf-8").replace(
        str(st.sso_key_path), str(key)), encoding="utf-8")
    return config


def ssh(st: SharedStateStack, config: Path, port: int, *command: str,
        source: str = "127.0.0.1") -> SshClient:
    return SshClient(["ssh", "-F", str(config), "-b", source, "-p", str(port),
                      f"{st.login}@web01@{st.bastion_host}", "--", *command])


def places(st: SharedStateStack, scope: Scope, subject: str) -> int:
    db = open_state(load_config(st.config_path))
    try:
        return LimitStore(db, "test").count(scope, subject)
    finally:
        db.close()


def test_session_cap_counts_sessions_on_every_node(stack: SharedStateStack) -> None:
    config = key_config(stack, "k_cap", ALICE)
    node_b = stack.nodes[0]
    held = ssh(stack, config, stack.bastion_port, "echo ready; sleep 300")
    try:
        held.wait_for_stdout("ready")
        assert places(stack, Scope.SESSION, ALICE.key) == 1
        refused = ssh(stack, config, node_b.port, "echo", "in")
        assert refused.finish() != 0
        assert refused.stdout == ""
        assert f"you already have {SESSION_CAP} sessions open, the most allowed" \
            in refused.stderr
        refusals = [e for e in read_events(node_b.audit_log)
                    if e["event"] == "session.refused" and e["reason"] == "session limit"]
        assert [e["user"] for e in refusals] == ["alice"]
    finally:
        held.stop()  # the client goes away: node A ends the session and gives the place back

    def straight_in_on_b() -> bool:
        client = ssh(stack, config, node_b.port, "echo", "in")
        return client.finish() == 0 and client.stdout == "in\n"

    wait_until(straight_in_on_b, 60, "node B to let alice in once node A's session ended")
    wait_until(lambda: places(stack, Scope.SESSION, ALICE.key) == 0, 30,
               "every session place to be given back")


def test_device_logins_per_address_are_counted_on_every_node(stack: SharedStateStack) -> None:
    config = key_config(stack, "k_rate", None)  # unbound: every login is a device login
    source = "127.0.0.3"
    for port in (stack.bastion_port, stack.nodes[0].port)[:DEVICE_LOGINS]:
        started = ssh(stack, config, port, "true", source=source)
        started.verification_url()  # the device login started
        started.stop()
    third = ssh(stack, config, stack.bastion_port, "true", source=source)
    assert third.finish() != 0
    assert "too many device logins from your address; try again in a minute" in third.stderr
    assert URL_RE.search(third.stderr) is None
    failures = [e for e in read_events(stack.state_dir / "audit.jsonl")
                if e["event"] == "login.failure" and str(e["client"]).startswith(source)]
    assert any("too many device logins" in str(e["reason"]) for e in failures)
    # Another address has its own allowance.
    other = ssh(stack, config, stack.nodes[0].port, "true", source="127.0.0.4")
    other.verification_url()
    other.stop()
