"""A target process killed by a signal: the exit signal reaches the client (an asyncssh client,
which reports it as such) and is in the record and the audit log. Signal and break requests are
tested in tests/unit/test_relay_signals.py (OpenSSH's sshd refuses them for root logins)."""

from __future__ import annotations

import asyncio
import json

import asyncssh
import pytest
from harness.wait import wait_for_session_end

from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

DEADLINE = 60.0


async def _connect(stack: DemoStack, target: str) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        stack.bastion_host, stack.bastion_port, username=f"{stack.login}@{target}",
        client_keys=[str(stack.user_key_path)], known_hosts=str(stack.known_hosts_path),
        agent_path=None)


def test_exit_signal_is_passed_on_and_recorded(demo_stack: DemoStack) -> None:
    before = set(demo_stack.spool_dir.iterdir())

    async def scenario() -> asyncssh.SSHCompletedProcess:
        async with await _connect(demo_stack, "web01") as conn:
            return await asyncio.wait_for(conn.run("kill -TERM $$"), DEADLINE)

    result = asyncio.run(scenario())
    assert result.exit_signal is not None and result.exit_signal[0] == "TERM"
    assert result.exit_status in (None, -1)
    [folder] = set(demo_stack.spool_dir.iterdir()) - before
    record = wait_for_session_end(folder)
    [channel] = record["channels"]
    assert channel["exit_signal"] == "TERM" and channel["exit_status"] is None
    events = [json.loads(line) for line in
              (demo_stack.state_dir / "audit.jsonl").read_text().splitlines()]
    [exit_event] = [e for e in events if e["event"] == "channel.exit"
                    and e["session"] == folder.name]
    assert exit_event["exit_signal"] == "TERM"
