"""The shared state database goes away and comes back (a PostgreSQL restart or failover): the
bastion keeps running and its open sessions with it, a bound key is not let in straight while
the binding cannot be read (fail closed), and bound keys work again once the database is back."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from harness.device_login import URL_RE, SshClient
from harness.nodes import SharedStateStack
from harness.wait import wait_until

from bastion.config import load_config
from bastion.demo.postgres import ThrowawayPostgres
from bastion.identity.bindings import KeyBindings
from bastion.identity.model import Identity
from bastion.state.backends import open_state

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as pg:  # its own: this test stops and restarts it
        yield pg


@pytest.fixture
def stack(tmp_path: Path, cluster: ThrowawayPostgres) -> Iterator[SharedStateStack]:
    st = SharedStateStack(tmp_path / "outage", cluster.new_database(),
                          idp_options={"device_interval": 1}, with_s3=False)
    st.merge_config({"state": {"connect_timeout": "2s"}})
    with st:
        yield st


def bound_key(st: SharedStateStack) -> Path:
    """A key bound to alice (ops) as a device login would have bound it; its ssh_config."""
    key = st.workdir / "keys" / "bound"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public = Path(f"{key}.pub").read_text(encoding="utf-8").strip()
    db = open_state(load_config(st.config_path))
    try:
        KeyBindings(db).bind(asyncssh.import_public_key(public).get_fingerprint("sha256"),
                             public, Identity("https://idp.test", "alice-sub", "alice", ("ops",),
                                              None, "oidc-device"), 3600, "127.0.0.1")
    finally:
        db.close()
    config = st.workdir / "ssh_config_bound"
    config.write_text(st.sso_ssh_config_path.read_text(encoding="utf-8").replace(
        str(st.sso_key_path), str(key)), encoding="utf-8")
    return config


def ssh(st: SharedStateStack, config: Path, *command: str) -> SshClient:
    return SshClient(["ssh", "-F", str(config), "-p", str(st.bastion_port),
                      f"{st.login}@web01@{st.bastion_host}", "--", *command])


def straight_in(st: SharedStateStack, config: Path) -> bool:
    """Whether the key gets in without a device login (False as soon as one is asked for)."""
    client = ssh(st, config, "echo", "in")
    try:
        wait_until(lambda: client.proc.poll() is not None
                   or URL_RE.search(client.stderr) is not None, 30,
                   "the login to finish or to ask for a device login")
        return (client.proc.poll() is not None and client.finish() == 0
                and client.stdout == "in\n")
    finally:
        client.stop()


def test_outage_fails_closed_and_recovers(stack: SharedStateStack,
                                          cluster: ThrowawayPostgres) -> None:
    config = bound_key(stack)
    held = ssh(stack, config, "echo ready; while sleep 0.5; do echo tick; done")
    held.wait_for_stdout("ready")

    cluster.pause()  # the database is gone
    refused = ssh(stack, config, "echo", "in")
    refused.verification_url(timeout=30)  # not straight in: a device login is asked for
    refused.stop()
    assert refused.stdout == ""
    assert stack.bastion is not None and stack.bastion.alive()
    ticks = held.stdout.count("tick")
    wait_until(lambda: held.stdout.count("tick") > ticks + 2, 30,
               "the open session to go on while the database is down")

    cluster.resume()
    wait_until(lambda: straight_in(stack, config), 60, "the bound key to get in again")
    ticks = held.stdout.count("tick")
    wait_until(lambda: held.stdout.count("tick") > ticks, 30, "the open session to go on")
    assert held.proc.poll() is None
    held.stop()
