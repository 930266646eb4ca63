"""The channel pipeline: stage composition with a fake context, then the whole relay in-process
(bastion server and an asyncssh target, both on port 0, an asyncssh client) with test stages."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from harness.inprocess import Bed, relay_bed

from bastion.errors import AccessDenied
from bastion.identity.model import LOCAL_ISSUER, Identity
from bastion.policy.access import TargetRequest
from bastion.relay.pipeline import (
    ChannelInfo,
    ChannelStages,
    Pipeline,
    Stage,
    StageContext,
    Stream,
)
from bastion.relay.session import ClientInfo, ConnectionSession
from bastion.state.limits import Scope

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


def test_exec_passes_through_the_stages_and_ends_with_its_exit_status(tmp_path: Path) -> None:
    asyncio.run(_exec_through_stages(tmp_path))


async def _exec_through_stages(tmp_path: Path) -> None:
    inputs: list[bytes] = []

    class Tap(Stage):
        def feed(self, data: bytes, stream: Stream) -> None:
            inputs.append(data)
            self.emit(data, stream)

    def test_factory(info: ChannelInfo, ctx: StageContext) -> ChannelStages:
        return ChannelStages(input=[Tap()], output=[Upper()])

    async with relay_bed(tmp_path, [test_factory]) as bed:
        await _exec_checks(bed, inputs)


async def _exec_checks(bed: Bed, inputs: list[bytes]) -> None:
    async with asyncssh.connect(
            "127.0.0.1", bed.server.port, username="app01", client_keys=[bed.client_key],
            known_hosts=None) as conn:
        result = await conn.run("cat", input=b"hello through the pipeline\n", encoding=None)
    assert result.exit_status == 3
    assert result.stdout == b"HELLO THROUGH THE PIPELINE\n"  # the output stage ran
    assert result.stderr == b"RAN CAT\n"  # stderr too, as stderr
    assert b"".join(inputs) == b"hello through the pipeline\n"  # the input stage saw it

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


def test_a_connection_stays_on_its_first_target_and_counts_one_session(tmp_path: Path) -> None:
    asyncio.run(_one_target_per_connection(tmp_path))


async def _one_target_per_connection(tmp_path: Path) -> None:
    async with relay_bed(tmp_path) as bed:
        services = bed.server.relay_services
        alice = Identity(issuer=LOCAL_ISSUER, subject="alice", name="alice", groups=("ops",))
        session = ConnectionSession(services, alice, ClientInfo("t1", "127.0.0.1", 1, None),
                                    None, None)
        app01 = TargetRequest(target="app01", login=None, username="alice")
        app02 = TargetRequest(target="app02", login=None, username="alice")
        try:
            first = await session.connect(app01)
            assert await session.connect(app01) is first  # the same target: the same upstream
            for _ in range(3):  # refused channels do not count sessions
                with pytest.raises(AccessDenied, match="this connection is on svc@app01"):
                    await session.connect(app02)
            assert bed.server.limits._per_identity[alice.key] == 1
            assert bed.server.limits.store.count(Scope.SESSION, alice.key) == 1
        finally:
            session.close()
        assert bed.server.limits._per_identity[alice.key] == 0
        assert await asyncio.to_thread(bed.server.limits.flush, 30)
        assert bed.server.limits.store.count(Scope.SESSION, alice.key) == 0
