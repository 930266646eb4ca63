"""Two bastion nodes behind Debian's HAProxy (TCP mode, PROXY protocol v2) on one throwaway
PostgreSQL: the audit log shows the real client address (ssh -b 127.0.0.2 through HAProxy on
127.0.0.1), logins through the balancer land on both nodes and share the key binding, a
PROXY header from an address not listed is refused, and so is a listed address without one."""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.device_login import URL_RE, SshClient
from harness.haproxy import HaproxyFront
from harness.nodes import SharedStateStack
from harness.wait import wait_until

from bastion.audit import read_events
from bastion.demo.idp import complete_device_login
from bastion.demo.postgres import ThrowawayPostgres
from bastion.server.proxy import SIGNATURE

pytestmark = pytest.mark.e2e

CLIENT = "127.0.0.2"  # the "real" client address; HAProxy and the nodes are on 127.0.0.1


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          postgres_cluster: ThrowawayPostgres) -> Iterator[SharedStateStack]:
    with SharedStateStack(tmp_path_factory.mktemp("proxy"), postgres_cluster.new_database(),
                          server_options={"proxy_protocol_from": ["127.0.0.1/32"]},
                          idp_options={"device_interval": 1}, with_s3=False) as st:
        st.add_node("node-b")
        yield st


@pytest.fixture(scope="module")
def balancer(stack: SharedStateStack) -> Iterator[HaproxyFront]:
    with HaproxyFront(stack.workdir, [stack.bastion_port, stack.nodes[0].port]) as lb:
        with stack.known_hosts_path.open("a", encoding="utf-8") as known:
            known.write(f"[{stack.bastion_host}]:{lb.port} {stack.host_key_line}\n")
        yield lb


def ssh_via(stack: SharedStateStack, config: Path, port: int, *command: str,
            bind: str = CLIENT) -> SshClient:
    return SshClient(["ssh", "-F", str(config), "-b", bind, "-p", str(port),
                      f"{stack.login}@web01@{stack.bastion_host}", "--", *command])


def new_key(st: SharedStateStack, name: str) -> Path:
    key = st.workdir / "keys" / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = st.workdir / f"ssh_config_{name}"
    config.write_text(st.sso_ssh_config_path.read_text(encoding="utf-8").replace(
        str(st.sso_key_path), str(key)), encoding="utf-8")
    return config


def audit_logs(stack: SharedStateStack) -> list[Path]:
    return [stack.state_dir / "audit.jsonl", stack.nodes[0].audit_log]


def events(stack: SharedStateStack, name: str) -> list[dict[str, object]]:
    return [e for log in audit_logs(stack) for e in read_events(log) if e["event"] == name]


def test_real_client_address_through_haproxy_on_both_nodes(
        stack: SharedStateStack, balancer: HaproxyFront) -> None:
    key = new_key(stack, "k_lb")
    first = ssh_via(stack, key, balancer.port, "echo", "through-lb")
    complete_device_login(first.verification_url(), "alice", "alice-password")
    assert first.finish() == 0 and first.stdout == "through-lb\n"
    assert f"requested from {CLIENT} port" in first.stderr  # the device prompt names it too
    # Round robin: the next connections reach the other node too, the binding is shared.
    for n in range(3):
        again = ssh_via(stack, key, balancer.port, "echo", f"again{n}")
        assert again.finish() == 0 and again.stdout == f"again{n}\n"
        assert URL_RE.search(again.stderr) is None
    logins = events(stack, "login.success")
    mine = [e for e in logins if str(e["request"]).startswith(stack.login)]
    assert len(mine) >= 4
    assert {str(e["client"]).rsplit(":", 1)[0] for e in mine} == {CLIENT}
    assert {e["node"] for e in mine} == {"demo", "node-b"}


def test_header_from_unlisted_address_is_refused(stack: SharedStateStack) -> None:
    # 127.0.0.2 is not a listed balancer: its PROXY header claiming 10.9.9.9 is refused.
    body = socket.inet_aton("10.9.9.9") + socket.inet_aton("127.0.0.1") + struct.pack(
        "!HH", 1234, stack.bastion_port)
    forged = SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body
    with socket.create_connection((stack.bastion_host, stack.bastion_port), timeout=10,
                                  source_address=(CLIENT, 0)) as sock:
        sock.sendall(forged + b"SSH-2.0-OpenSSH_9.2\r\n")
        received = b""
        try:
            while chunk := sock.recv(4096):  # until the bastion closes the connection
                received += chunk
        except ConnectionResetError:  # closed with our bytes unread: a reset, also a refusal
            pass
    assert b"SSH-2.0-" not in received  # no SSH session was started for it
    wait_until(lambda: any("not in server.proxy_protocol_from" in str(e.get("reason"))
                           and str(e["client"]).startswith(CLIENT + ":")
                           for e in events(stack, "connection.refused")), 20,
               "the refusal of the forged header in the audit log")
    assert not any("10.9.9.9" in str(e.get("client")) for log in audit_logs(stack)
                   for e in read_events(log))


def test_listed_address_without_header_is_refused(stack: SharedStateStack) -> None:
    key = new_key(stack, "k_direct")
    direct = ssh_via(stack, key, stack.bastion_port, "echo", "x", bind="127.0.0.1")
    assert direct.finish() == 255 and direct.stdout == ""
    wait_until(lambda: any("no PROXY v2 header" in str(e.get("reason"))
                           for e in events(stack, "connection.refused")), 20,
               "the refusal of a header-less connection from the balancer address")
