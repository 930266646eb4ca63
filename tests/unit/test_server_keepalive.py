"""Keepalives: a client that stops answering is dropped (after keepalive_interval *
keepalive_count_max) and its session ends as lost. In-process bastion; a TCP relay between the
client and the bastion that can stop passing bytes plays the vanished client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from harness.inprocess import Bed, relay_bed

DEADLINE = 30.0  # far above 1 s * 2 keepalives, far below idle_timeout (15 min by default)


class Blackhole:
    """Forwards 127.0.0.1:port <-> the bastion until ``freeze()``; then drops every byte."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if not self.frozen:
                    dst.write(data)
                    await dst.drain()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer),
                             return_exceptions=True)

    def freeze(self) -> None:
        self.frozen = True

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


def _events(bed: Bed, name: str) -> list[dict[str, object]]:
    return [e for e in (json.loads(line) for line in bed.audit.read_text().splitlines())
            if e["event"] == name]


def test_a_client_that_stops_answering_is_dropped(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_bed(tmp_path, server_options=(
                'keepalive_interval = "1s"\nkeepalive_count_max = 2\n')) as bed:
            hole = Blackhole(bed.server.port)
            port = await hole.start()
            try:
                conn = await asyncssh.connect("127.0.0.1", port, username="app01",
                                              client_keys=[bed.client_key], known_hosts=None,
                                              keepalive_interval=0)
                await conn.create_process("cat")

                async def session_started() -> None:
                    while not _events(bed, "session.start"):
                        await asyncio.sleep(0.05)

                await asyncio.wait_for(session_started(), DEADLINE)
                hole.freeze()  # the client vanishes without closing anything

                async def session_ended() -> dict[str, object]:
                    while not (ends := _events(bed, "session.end")):
                        await asyncio.sleep(0.1)
                    return ends[0]

                end = await asyncio.wait_for(session_ended(), DEADLINE)
                assert "connection to the client lost" in str(end["reason"]), end
                assert bed.server.connections == {}
                conn.abort()
            finally:
                await hole.close()

    asyncio.run(scenario())


def test_reads_move_the_keepalive_on_without_a_timer_each_and_silence_still_sends_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bastion/relay/keepalive.py: while the client types, no keepalive goes out and the timer
    is not remade per read; once it is silent for the interval, a keepalive request goes out,
    is answered, and the connection stays."""
    counts = {"requests": 0, "timers": 0}
    request, set_timer = (asyncssh.connection.SSHConnection._make_keepalive_request,
                          asyncssh.connection.SSHConnection._set_keepalive_timer)

    # The bastion's connection from the user (its target connection, silent while the target's
    # cat waits for EOF, sends keepalives of its own; the test's client and target send none).
    async def counted_request(self: Any) -> None:
        counts["requests"] += self.is_server()
        await request(self)

    def counted_timer(self: Any) -> None:
        counts["timers"] += self.is_server() and bool(self._keepalive_interval)
        set_timer(self)

    monkeypatch.setattr(asyncssh.connection.SSHConnection, "_make_keepalive_request",
                        counted_request)
    monkeypatch.setattr(asyncssh.connection.SSHConnection, "_set_keepalive_timer",
                        counted_timer)

    async def scenario() -> None:
        async with relay_bed(tmp_path, server_options='keepalive_interval = "2s"\n') as bed, \
                asyncssh.connect("127.0.0.1", bed.server.port, username="app01",
                                 client_keys=[bed.client_key], known_hosts=None,
                                 keepalive_interval=0) as conn:
            process = await conn.create_process("cat")
            timers_before = counts["timers"]
            for _ in range(30):  # 3 s of typing, a key every 0.1 s: 30 reads or more
                process.stdin.write("k")
                await asyncio.sleep(0.1)
            assert counts["requests"] == 0
            # asyncssh made a timer per read (30 here); now one when a read first comes and
            # one when the armed timer is moved on (at most once per interval: 2 in 3 s).
            assert counts["timers"] - timers_before <= 4, counts

            async def keepalive_sent() -> None:
                while counts["requests"] == 0:
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(keepalive_sent(), DEADLINE)  # silent since: one goes out
            process.stdin.write("still here")
            process.stdin.write_eof()
            assert (await asyncio.wait_for(process.wait(), DEADLINE)).stdout == "kkk" * 10 + \
                "still here"

    asyncio.run(scenario())
