"""A target that takes a vaulted password (an asyncssh server here: OpenSSH would need a
system account with a password), reached through the bastion with the OpenSSH client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from harness.ssh import bastion_destination, run_ssh, ssh_base_argv

from bastion.credentials.vault import Vault, password_credential
from bastion.credentials.vaultkey import read_vault_key_file
from bastion.demo.procs import free_port
from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"


class PasswordTarget:
    """An SSH server in a thread that accepts one login with one password and runs ``echo``."""

    def __init__(self) -> None:
        self.key = asyncssh.generate_private_key("ssh-ed25519")
        self.port = free_port()
        self.passwords_seen: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncssh.SSHAcceptor | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        target = self

        class Server(asyncssh.SSHServer):
            def password_auth_supported(self) -> bool:
                return True

            def validate_password(self, username: str, password: str) -> bool:
                target.passwords_seen.append(password)
                return username == "svc" and password == PASSWORD

        async def handle(process: asyncssh.SSHServerProcess[str]) -> None:
            process.stdout.write(f"target ran: {process.command}\n")
            process.exit(0)

        self._server = await asyncssh.create_server(
            Server, "127.0.0.1", self.port, server_host_keys=[self.key],
            process_factory=handle)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class PasswordTargetStack(DemoStack):
    def __init__(self, workdir: Path, target: PasswordTarget) -> None:
        super().__init__(workdir, with_idp=False, with_s3=False)
        self.password_target = target

    def write_config(self) -> None:
        if any(t["name"] == "app01" for t in self.config["targets"]):
            super().write_config()  # written again (the bastion's port pinned): nothing to add
            return
        host_key = self.password_target.key.export_public_key().decode().strip()
        config: dict[str, Any] = self.config
        config["targets"].append({"name": "app01", "host": "127.0.0.1",
                                  "port": self.password_target.port, "host_key": host_key,
                                  "default_login": "svc"})
        config["access"].append({"groups": ["ops"], "targets": ["app01"], "logins": ["svc"]})
        vault = Vault.open(self.vault_path, read_vault_key_file(self.vault_key_path))
        vault.set("app01", "svc", password_credential(PASSWORD))
        vault.save()
        super().write_config()


@pytest.fixture
def password_stack(tmp_path: Path) -> Iterator[tuple[DemoStack, PasswordTarget]]:
    target = PasswordTarget()
    target.start()
    try:
        with PasswordTargetStack(tmp_path / "stack", target) as stack:
            yield stack, target
    finally:
        target.stop()


def test_vaulted_password_reaches_the_target_and_never_the_user(password_stack) -> None:
    stack, target = password_stack
    result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "app01", "svc"), "--",
                      "whoami"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "target ran: whoami\n"
    assert target.passwords_seen == [PASSWORD]
    for path in [*stack.spool_dir.rglob("*"), stack.state_dir / "audit.jsonl",
                 stack.logs_dir / "bastion.log"]:
        if path.is_file():
            assert PASSWORD not in path.read_text(encoding="utf-8", errors="replace"), path


def test_a_vault_damaged_while_running_refuses_with_an_audit_event(password_stack) -> None:
    import json

    from harness.wait import wait_until

    stack, target = password_stack
    stack.vault_path.write_bytes(b"not a vault any more\n")
    result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "app01", "svc"), "--",
                      "whoami"])
    assert result.returncode != 0 and target.passwords_seen == []
    audit_path = stack.state_dir / "audit.jsonl"

    def refusals() -> list[dict[str, Any]]:
        lines = audit_path.read_text(encoding="utf-8").splitlines()
        return [e for e in map(json.loads, lines) if e.get("event") == "session.refused"]

    wait_until(lambda: bool(refusals()), 30, "a session.refused audit event")
    [refused] = refusals()
    assert refused["target"] == "app01" and "vault" in refused["reason"], refused
