"""Port forwarding through the bastion with the OpenSSH client: allowed, refused, audited.

web01's forwards are opened from the bastion, db01's through db01's own sshd (which gets
``AllowTcpForwarding yes`` for this module). The destination is an echo server on loopback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.ssh import BATCH_OPTIONS
from harness.wait import wait_until

from bastion.audit import read_events
from bastion.demo.procs import free_port
from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class ForwardStack(DemoStack):
    """The demo stack with [[forwarding]] rules to the echo server."""

    def __init__(self, workdir: Path, echo_port: int) -> None:
        super().__init__(workdir, with_idp=False, with_s3=False)
        self.echo_port = echo_port

    def setup_access(self) -> None:
        super().setup_access()
        dest = f"127.0.0.1:{self.echo_port}"
        self.merge_config({"forwarding": [
            {"groups": ["ops"], "targets": ["web01"], "local": [dest], "open_from": "bastion"},
            {"groups": ["ops"], "targets": ["db01"], "local": [dest], "open_from": "target"},
        ]})


def _allow_forwarding_on(stack: DemoStack, name: str) -> None:
    """Let target ``name``'s sshd forward TCP (sshd re-reads its config on SIGHUP)."""
    target = stack.targets[name]
    text = target.config_path.read_text(encoding="utf-8")
    target.config_path.write_text(text.replace("AllowTcpForwarding no", "AllowTcpForwarding yes"),
                                  encoding="utf-8")
    assert target.process is not None
    os.kill(target.process.pid, signal.SIGHUP)

    def listening() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((target.host, target.port),
                                                                    timeout=1):
            return True
        return False

    wait_until(listening, 30, f"sshd {name} listening again after SIGHUP")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, echo_port: int) -> Iterator[DemoStack]:
    with ForwardStack(tmp_path_factory.mktemp("forwarding"), echo_port) as started:
        _allow_forwarding_on(started, "db01")
        yield started


def _ssh(stack: DemoStack, target: str, *args: str) -> list[str]:
    return ["ssh", "-F", str(stack.ssh_config_path), "-p", str(stack.bastion_port),
            *BATCH_OPTIONS, *args, f"{stack.login}@{target}@{stack.bastion_host}"]


@contextlib.contextmanager
def _forwarding(argv: list[str], local_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``ssh -N -L ...`` until the block ends (stopped by pid)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", local_port), timeout=1):
                return True
            return False

        wait_until(listening, 30, "ssh listening on the forwarded port")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def _event(stack: DemoStack, event: str, **fields: Any) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [e for e in read_events(stack.state_dir / "audit.jsonl")
                    if e["event"] == event and all(e.get(k) == v for k, v in fields.items())]
        return bool(found)

    wait_until(seen, 30, f"audit event {event} {fields}")
    return found[-1]


@pytest.mark.parametrize(("target", "open_from"), [("web01", "bastion"), ("db01", "target")])
def test_allowed_local_forward_carries_data_and_is_audited(stack: DemoStack, echo_port: int,
                                                           target: str, open_from: str) -> None:
    local = free_port()
    payload = os.urandom(300_000)
    argv = _ssh(stack, target, "-N", "-o", "ExitOnForwardFailure=yes",
                "-L", f"{local}:127.0.0.1:{echo_port}")
    with _forwarding(argv, local):
        assert _exchange(local, payload) == payload
        closed = _event(stack, "forward.close", target=target, bytes_up=len(payload))
    assert closed["bytes_down"] == len(payload)
    assert closed["dest"] == f"127.0.0.1:{echo_port}" and closed["open_from"] == open_from
    _event(stack, "forward.open", target=target, dest=f"127.0.0.1:{echo_port}")


def test_forward_to_a_destination_no_rule_allows_is_refused(stack: DemoStack) -> None:
    local, other = free_port(), free_port()
    argv = _ssh(stack, "web01", "-N", "-L", f"{local}:127.0.0.1:{other}")
    with _forwarding(argv, local):
        try:  # the bastion refused the channel: ssh closes (or resets) the local connection
            answer = _exchange(local, b"hello")
        except ConnectionResetError:
            answer = b""
        assert answer == b""
        event = _event(stack, "channel.refused", kind="direct-tcpip",
                       dest=f"127.0.0.1:{other}")
    assert event["target"] == "web01" and event["user"] == "demo"


def test_remote_forward_is_refused(stack: DemoStack, echo_port: int) -> None:
    argv = _ssh(stack, "web01", "-o", "ExitOnForwardFailure=yes",
                "-R", f"0:127.0.0.1:{echo_port}")
    result = subprocess.run([*argv, "--", "true"],
                            capture_output=True, text=True, timeout=60, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    _event(stack, "channel.refused", kind="tcpip-forward")


def test_agent_forwarding_is_refused(stack: DemoStack, tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(sock.exists, 30, "ssh-agent's socket")
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        result = subprocess.run([*_ssh(stack, "web01", "-A"), "--", "echo", "$SSH_AUTH_SOCK"],
                                capture_output=True, text=True, timeout=60, check=False,
                                env=env, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr  # the session goes on without it
        assert result.stdout.strip() == ""  # no agent socket on the target
        _event(stack, "channel.refused", kind="agent")
    finally:
        agent.terminate()
        agent.wait(10)
