"""An in-process bastion for fast tests: BastionServer and an asyncssh target, both on port 0.

``relay_bed(tmp_path, factories)`` yields a started server whose config has one local user
(``alice``, group ops, with ``client_key``) and targets app01/app02 on the asyncssh target
(password login svc/pw from the vault); ``server_options`` are added to ``[server]``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncssh

from bastion.audit import AuditLog
from bastion.config import load_config
from bastion.credentials.vault import Vault, password_credential
from bastion.credentials.vaultkey import read_vault_key_file
from bastion.relay.pipeline import StageFactory
from bastion.server.app import BastionServer


class TargetServer(asyncssh.SSHServer):
    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == "svc" and password == "pw"


async def _target_process(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """Echoes stdin back on stdout, says which command ran on stderr, exits 3."""
    chunks = []
    while True:
        try:
            chunk = await process.stdin.read(65536)
        except asyncssh.TerminalSizeChanged:  # asyncssh's way of telling a pty's new size
            continue
        if not chunk:
            break
        chunks.append(chunk)
    process.stdout.write(b"".join(chunks))
    process.stderr.write(f"ran {process.command}\n".encode())
    process.exit(3)


@dataclasses.dataclass
class Bed:
    server: BastionServer
    client_key: asyncssh.SSHKey
    spool: Path
    audit: Path


@contextlib.asynccontextmanager
async def relay_bed(tmp_path: Path, factories: Sequence[StageFactory] = (),
                    server_options: str = "",
                    target_process: Any = None) -> AsyncIterator[Bed]:
    target_key = asyncssh.generate_private_key("ssh-ed25519")
    target = await asyncssh.create_server(
        TargetServer, "127.0.0.1", 0, server_host_keys=[target_key],
        process_factory=target_process or _target_process, encoding=None, line_editor=False)
    target_port = target.sockets[0].getsockname()[1]
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "vault.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key_file.chmod(0o600)
    vault = Vault.open(tmp_path / "vault.json", read_vault_key_file(key_file), create=True)
    vault.set("app01", "svc", password_credential("pw"))
    vault.set("app02", "svc", password_credential("pw"))
    vault.save()
    config_path = tmp_path / "bastion.toml"
    config_path.write_text(f"""
[server]
listen = "127.0.0.1"
port = 0
{server_options}
host_keys = ["{tmp_path}/host_key"]
[paths]
state_dir = "{tmp_path}/state"
spool_dir = "{tmp_path}/spool"
audit_log = "{tmp_path}/audit.jsonl"
[vault]
path = "{tmp_path}/vault.json"
key_file = "{key_file}"
[[users]]
name = "alice"
keys = ["{client_key.export_public_key().decode().strip()}"]
groups = ["ops"]
[[targets]]
name = "app01"
host = "127.0.0.1"
port = {target_port}
host_key = "{target_key.export_public_key().decode().strip()}"
default_login = "svc"
[[targets]]
name = "app02"
host = "127.0.0.1"
port = {target_port}
host_key = "{target_key.export_public_key().decode().strip()}"
default_login = "svc"
[[access]]
groups = ["ops"]
targets = ["app01", "app02"]
logins = ["svc"]
""")
    config = load_config(config_path)
    audit = AuditLog(config.paths.audit_log, "test", stream=None)
    server = BastionServer(config, audit)
    server.relay_services = dataclasses.replace(server.relay_services,
                                                stage_factories=tuple(factories))
    await server.start()
    try:
        yield Bed(server, client_key, tmp_path / "spool", tmp_path / "audit.jsonl")
    finally:
        await server.stop()
        audit.close()
        target.close()
        await target.wait_closed()


