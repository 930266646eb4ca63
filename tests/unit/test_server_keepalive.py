"""Keepalives: a client that stops answering is dropped (after keepalive_interval *
keepalive_count_max) and its session ends as lost. In-process bastion; a TCP relay between the
client and the bastion that can stop passing bytes plays the vanished client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncssh
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
