"""The channel pipeline: stage composition with a fake context, then the whole relay in-process
(bastion server and an asyncssh target, both on port 0, an asyncssh client) with test stages."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh

from bastion.audit import AuditLog
from bastion.config import load_config
from bastion.credentials.vault import Vault, password_credential
from bastion.credentials.vaultkey import read_vault_key_file
from bastion.relay.pipeline import (
    ChannelInfo,
    ChannelStages,
    Pipeline,
    Stage,
    StageContext,
    Stream,
)
from bastion.server.app import BastionServer

# -- composition -------------------------------------------------------------------------------


class Upper(Stage):
    def feed(self, data: bytes, stream: Stream) -> None:
        self.emit(data.upper(), stream)


class HoldUntilEnd(Stage):
    """Holds everything until the direction ends (as a command held for approval is)."""

    def __init__(self) -> None:
        self.held: list[tuple[bytes, Stream]] = []

    def feed(self, data: bytes, stream: Stream) -> None:
        self.held.append((data, stream))

    def end(self) -> None:
        for data, stream in self.held:
            self.emit(data, stream)
        self.emit_end()


class Redact(Stage):
    def feed(self, data: bytes, stream: Stream) -> None:
        self.emit(data.replace(b"secret", b"******"), stream)


def _build(*parts: ChannelStages) -> tuple[Pipeline, list[Any]]:
    log: list[Any] = []

    def factory_for(part: ChannelStages) -> Any:
        return lambda info, ctx: part

    pipeline = Pipeline.build(
        [factory_for(p) for p in parts], info=None, ctx=None,  # type: ignore[arg-type]
        to_target=lambda d, s: log.append(("target", d)),
        target_end=lambda: log.append(("target-eof",)),
        record_input=lambda d, s: log.append(("rec-in", d)),
        record_output=lambda d, s: log.append(("rec-out", d, s)),
        to_user=lambda d, s: log.append(("user", d, s)),
        user_end=lambda: log.append(("user-eof",)))
    return pipeline, log


def test_no_stages_records_then_sends() -> None:
    pipeline, log = _build()
    pipeline.input.feed(b"ls\r", Stream.DATA)
    pipeline.output.feed(b"out", Stream.DATA)
    pipeline.output.feed(b"err", Stream.STDERR)
    assert log == [("rec-in", b"ls\r"), ("target", b"ls\r"),
                   ("rec-out", b"out", Stream.DATA), ("user", b"out", Stream.DATA),
                   ("rec-out", b"err", Stream.STDERR), ("user", b"err", Stream.STDERR)]


def test_stages_run_in_factory_order_and_record_stages_change_only_the_record() -> None:
    hold = HoldUntilEnd()
    pipeline, log = _build(ChannelStages(input=[hold]),
                           ChannelStages(input=[Upper()], input_record=[Redact()]))
    pipeline.input.feed(b"my secret\r", Stream.DATA)
    assert log == []  # held by the first stage
    pipeline.input.end()
    assert log == [("rec-in", b"MY SECRET\r"), ("target", b"MY SECRET\r"), ("target-eof",)]
    log.clear()
    pipeline2, log2 = _build(ChannelStages(input_record=[Redact()]))
    pipeline2.input.feed(b"secret", Stream.DATA)
    assert log2 == [("rec-in", b"******"), ("target", b"secret")]


def test_a_factory_may_stay_out_and_stages_hear_resize_and_close() -> None:
    seen: list[str] = []

    class Watch(Stage):
        def resize(self, width: int, height: int) -> None:
            seen.append(f"{width}x{height}")

        def close(self) -> None:
            seen.append("closed")

    pipeline = Pipeline.build(
        [lambda info, ctx: None, lambda info, ctx: ChannelStages(output=[Watch()])],
        info=None, ctx=None,  # type: ignore[arg-type]
        to_target=lambda d, s: None, target_end=lambda: None,
        record_input=lambda d, s: None, record_output=lambda d, s: None,
        to_user=lambda d, s: None, user_end=lambda: None)
    pipeline.resize(100, 30)
    pipeline.close()
    assert seen == ["100x30", "closed"]


# -- the whole relay, in-process ---------------------------------------------------------------


class TargetServer(asyncssh.SSHServer):
    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == "svc" and password == "pw"


async def _target_process(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """Echoes stdin back on stdout, says which command ran on stderr, exits 3."""
    data = await process.stdin.read()
    process.stdout.write(data)
    process.stderr.write(f"ran {process.command}\n".encode())
    process.exit(3)


@dataclasses.dataclass
class Bed:
    server: BastionServer
    client_key: asyncssh.SSHKey
    spool: Path
    audit: Path
    inputs: list[bytes]


@contextlib.asynccontextmanager
async def relay_bed(tmp_path: Path) -> AsyncIterator[Bed]:
    target_key = asyncssh.generate_private_key("ssh-ed25519")
    target = await asyncssh.create_server(
        TargetServer, "127.0.0.1", 0, server_host_keys=[target_key],
        process_factory=_target_process, encoding=None)
    target_port = target.sockets[0].getsockname()[1]
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "vault.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key_file.chmod(0o600)
    vault = Vault.open(tmp_path / "vault.json", read_vault_key_file(key_file), create=True)
    vault.set("app01", "svc", password_credential("pw"))
    vault.save()
    config_path = tmp_path / "bastion.toml"
    config_path.write_text(f"""
[server]
listen = "127.0.0.1"
port = 0
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
[[access]]
groups = ["ops"]
targets = ["app01"]
logins = ["svc"]
""")
    config = load_config(config_path)
    audit = AuditLog(config.paths.audit_log, "test", stream=None)
    server = BastionServer(config, audit)
    inputs: list[bytes] = []

    class Tap(Stage):
        def feed(self, data: bytes, stream: Stream) -> None:
            inputs.append(data)
            self.emit(data, stream)

    def test_factory(info: ChannelInfo, ctx: StageContext) -> ChannelStages:
        return ChannelStages(input=[Tap()], output=[Upper()])

    server.relay_services = dataclasses.replace(server.relay_services,
                                                stage_factories=(test_factory,))
    await server.start()
    try:
        yield Bed(server, client_key, tmp_path / "spool", tmp_path / "audit.jsonl", inputs)
    finally:
        await server.stop()
        audit.close()
        target.close()
        await target.wait_closed()


def test_exec_passes_through_the_stages_and_ends_with_its_exit_status(tmp_path: Path) -> None:
    asyncio.run(_exec_through_stages(tmp_path))


async def _exec_through_stages(tmp_path: Path) -> None:
    async with relay_bed(tmp_path) as bed:
        await _exec_checks(bed)


async def _exec_checks(bed: Bed) -> None:
    async with asyncssh.connect(
            "127.0.0.1", bed.server.port, username="app01", client_keys=[bed.client_key],
            known_hosts=None) as conn:
        result = await conn.run("cat", input=b"hello through the pipeline\n", encoding=None)
    assert result.exit_status == 3
    assert result.stdout == b"HELLO THROUGH THE PIPELINE\n"  # the output stage ran
    assert result.stderr == b"RAN CAT\n"  # stderr too, as stderr
    assert b"".join(bed.inputs) == b"hello through the pipeline\n"  # the input stage saw it

    async def finished() -> dict[str, Any]:
        while True:
            for meta_path in bed.spool.glob("*/session.json"):
                meta = json.loads(meta_path.read_text())
                if meta["state"] != "active":
                    return dict(meta)
            await asyncio.sleep(0.05)

    meta = await asyncio.wait_for(finished(), 20)
    assert meta["state"] == "closed"
    events = [json.loads(line) for line in bed.audit.read_text().splitlines()]
    [exit_event] = [e for e in events if e["event"] == "channel.exit"]
    assert exit_event["exit_status"] == 3 and exit_event["channel"] == 1
