"""Limits before authentication: per-source allowance, login timer, proper refusal when full, and
a cap on the keys one connection may offer (an in-process bastion, real sockets on 127.0.0.x)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import asyncssh
import pytest
from harness.inprocess import Bed, relay_bed

from bastion.server.auth import MAX_OFFERED_KEYS
from bastion.server.limits import SourceLimits
from bastion.state.limits import Scope


def test_source_limits_count_per_address_and_per_minute() -> None:
    now = [0.0]
    limits = SourceLimits(2, 3, clock=lambda: now[0])
    assert limits.open_unauthenticated("a") and limits.open_unauthenticated("a")
    assert not limits.open_unauthenticated("a")
    assert limits.open_unauthenticated("b")  # another address has its own allowance
    limits.close_unauthenticated("a")
    assert limits.open_unauthenticated("a")
    assert [limits.start_device_login("a") for _ in range(4)] == [True, True, True, False]
    now[0] = 61.0
    assert limits.start_device_login("a")


def _events(bed: Bed, name: str) -> list[dict[str, object]]:
    return [e for e in (json.loads(line) for line in bed.audit.read_text().splitlines())
            if e["event"] == name]


async def _login_from(bed: Bed, source: str) -> str:
    async with asyncssh.connect(
            "127.0.0.1", bed.server.port, local_addr=(source, 0), username="app01",
            client_keys=[bed.client_key], known_hosts=None) as conn:
        result = await conn.run("cat", input="in\n")
        return str(result.stdout)


def test_silent_sockets_from_one_address_do_not_lock_out_another(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_bed(tmp_path, server_options=(
                'login_timeout = "2s"\nmax_unauthenticated_per_source = 5\n')) as bed:
            silent = []
            for _ in range(50):
                sock = socket.create_connection(("127.0.0.1", bed.server.port))
                sock.setblocking(False)
                silent.append(sock)
            try:
                # Another address signs in at once, whatever 127.0.0.1 is holding.
                out = await asyncio.wait_for(_login_from(bed, "127.0.0.2"), 10)
                assert out == "in\n"
                refused = _events(bed, "connection.refused")
                assert len(refused) >= 45
                assert all(str(e["client"]).startswith("127.0.0.1:") for e in refused)
                # A silent socket that was let in is cut at the login timeout.
                loop = asyncio.get_running_loop()

                async def read_to_end(sock: socket.socket) -> bytes:
                    data = b""
                    while chunk := await loop.sock_recv(sock, 4096):
                        data += chunk
                    return data

                kept = [s for s in silent if s.fileno() != -1]
                ends = await asyncio.wait_for(
                    asyncio.gather(*(read_to_end(s) for s in kept), return_exceptions=True),
                    15)
                assert any(isinstance(e, bytes) and b"SSH-2.0-bastion" in e for e in ends)
            finally:
                for sock in silent:
                    sock.close()
            await asyncio.sleep(0)
            assert bed.server.limits.sources._unauthenticated == {}  # every count given back
            # ... and every place in the state database (shared with the node's workers).
            limits = bed.server.limits
            subject = limits.node_source("127.0.0.1")
            deadline = loop.time() + 30
            while limits.store.count(Scope.UNAUTHENTICATED, subject) \
                    or limits.store.count(Scope.UNAUTHENTICATED, limits.node_source("127.0.0.2")):
                assert loop.time() < deadline, "places left in the state database"
                await asyncio.sleep(0.05)

    asyncio.run(scenario())


def test_a_full_bastion_refuses_with_a_proper_ssh_disconnect(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_bed(tmp_path, server_options="max_connections = 1\n") as bed, \
                asyncssh.connect("127.0.0.1", bed.server.port, username="app01",
                                 client_keys=[bed.client_key], known_hosts=None):
                with pytest.raises(asyncssh.DisconnectError,
                                   match="too many connections, try again later"):
                    await _login_from(bed, "127.0.0.3")

    asyncio.run(scenario())


def test_offered_keys_per_connection_are_capped(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_bed(tmp_path, server_options="max_auth_attempts = 100\n") as bed:
            strangers = [asyncssh.generate_private_key("ssh-ed25519")
                         for _ in range(MAX_OFFERED_KEYS + 8)]
            with pytest.raises((asyncssh.DisconnectError, asyncssh.PermissionDenied)):
                async with asyncssh.connect(
                        "127.0.0.1", bed.server.port, username="app01",
                        client_keys=[*strangers, bed.client_key], known_hosts=None):
                    pass
            await asyncio.sleep(0.2)
            [failure] = _events(bed, "login.failure")
            assert failure["reason"] == "too many keys offered"
            assert len(failure["keys"]) == MAX_OFFERED_KEYS  # the audit line stays bounded

    asyncio.run(scenario())


def test_channels_per_connection_are_capped_and_freed_when_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_bed(tmp_path, server_options="max_channels_per_connection = 3\n") \
                as bed, asyncssh.connect("127.0.0.1", bed.server.port, username="app01",
                                         client_keys=[bed.client_key], known_hosts=None) as conn:
            open_ = [await conn.create_process("cat") for _ in range(3)]
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_process("cat")
            assert any(e["reason"] == "more than 3 channels open on one connection"
                       for e in _events(bed, "channel.refused"))
            open_[0].stdin.write_eof()
            await open_[0].wait_closed()
            again = await conn.create_process("cat")  # a closed channel frees its place
            for process in [*open_[1:], again]:
                process.stdin.write_eof()
                await process.wait_closed()

    asyncio.run(scenario())


def test_window_sizes_are_clamped_and_resizes_coalesced(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_bed(tmp_path) as bed:
            async with asyncssh.connect(
                    "127.0.0.1", bed.server.port, username="app01",
                    client_keys=[bed.client_key], known_hosts=None) as conn:
                process = await conn.create_process(
                    "cat", term_type="xterm", term_size=(4294967295, 4294967295))
                while not list(bed.spool.glob("*/1-exec.cast")):  # the recording is open
                    await asyncio.sleep(0.02)
                for i in range(2000):
                    process.change_terminal_size(80 + i % 50, 24)
                process.change_terminal_size(132, 43)
                process.stdin.write("done\n")
                process.stdin.write_eof()
                assert "done" in await process.stdout.read()
                await process.wait_closed()
            await asyncio.sleep(0.3)
            [cast] = bed.spool.glob("*/1-exec.cast")
            lines = cast.read_text().splitlines()
            header = json.loads(lines[0])
            assert (header["width"], header["height"]) == (2000, 1000)
            sizes = [json.loads(line)[2] for line in lines[1:] if json.loads(line)[1] == "r"]
            assert 1 <= len(sizes) <= 20
            assert sizes[-1] == "132x43"

    asyncio.run(scenario())
