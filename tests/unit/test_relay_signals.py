"""SSH signal and break requests cross the relay to the target (in-process: bastion server and an
asyncssh target on port 0, an asyncssh client). OpenSSH's sshd cannot show this in the demo: it
refuses signal requests for root logins ("session signalling requires privilege separation"),
and the demo logs in as the user running the tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
from harness.inprocess import relay_bed

DEADLINE = 30.0


async def _report_requests(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """A target that says which signal or break request reached it, then exits 0."""
    process.stdout.write(b"ready\n")
    while True:
        try:
            chunk = await process.stdin.read(65536)
        except asyncssh.SignalReceived as exc:
            process.stdout.write(f"signal {exc.signal}\n".encode())
            continue
        except asyncssh.BreakReceived as exc:
            process.stdout.write(f"break {exc.msec}\n".encode())
            continue
        except asyncssh.TerminalSizeChanged:
            continue
        if not chunk:
            break
    process.exit(0)


def test_signal_and_break_requests_reach_the_target(tmp_path: Path) -> None:
    asyncio.run(_signal_and_break(tmp_path))


async def _signal_and_break(tmp_path: Path) -> None:
    async with relay_bed(tmp_path, target_process=_report_requests) as bed, asyncssh.connect(
            "127.0.0.1", bed.server.port, username="app01", client_keys=[bed.client_key],
            known_hosts=None) as conn:
        process = await conn.create_process("wait-for-requests", term_type="xterm")
        assert await asyncio.wait_for(process.stdout.readline(), DEADLINE) == "ready\n"
        process.send_signal("USR1")
        assert await asyncio.wait_for(process.stdout.readline(), DEADLINE) == "signal USR1\n"
        process.send_break(500)
        assert await asyncio.wait_for(process.stdout.readline(), DEADLINE) == "break 500\n"
        process.stdin.write_eof()
        await asyncio.wait_for(process.wait_closed(), DEADLINE)
        assert process.exit_status == 0
