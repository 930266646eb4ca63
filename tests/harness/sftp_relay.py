"""A stand-in sftp subsystem for tests: OpenSSH's sftp-server behind the bastion's sftp stages.

``sftp -D "python3 tests/harness/sftp_relay.py RULES.json AUDIT.jsonl OPS.jsonl"`` makes the real
OpenSSH sftp client talk, through ``SftpWatch``'s stages exactly as the relay runs them, to the
real ``sftp-server``: the parser meets the real protocol without an SSH connection. RULES.json
is a list of ``[[transfers]]`` rules (as dicts); audit events and ops entries go to the files.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from bastion.config.model import Target, TransferRule
from bastion.policy.transfers import TransferPolicy
from bastion.relay.pipeline import (
    ChannelInfo,
    ChannelKind,
    ChannelStages,
    Direction,
    Pipeline,
    Stream,
)
from bastion.relay.sftp_stage import sftp_stages
from bastion.relay.transfer_log import JsonlOpsWriter

SFTP_SERVER = "/usr/lib/openssh/sftp-server"


class FileContext:
    """A StageContext whose audit events go to a JSON-lines file."""

    def __init__(self, info: ChannelInfo, audit_path: Path) -> None:
        self.info = info
        self._audit = audit_path.open("a", encoding="utf-8", buffering=1)
        self.ended: str | None = None

    def notify_user(self, text: str) -> None:
        sys.stderr.write(f"bastion: {text}\n")

    def send_to_target(self, data: bytes) -> None:
        raise AssertionError("sftp stages never send to the target")

    def marker(self, label: str) -> None:
        pass

    def note_command(self, line: str, verdict: str, rule: str | None = None) -> None:
        pass

    def audit(self, event: str, **fields: Any) -> None:
        self._audit.write(json.dumps({"event": event, **fields}) + "\n")

    def pause_input(self) -> None:
        pass

    def resume_input(self) -> None:
        pass

    def end_channel(self, reason: str) -> None:
        self.ended = reason
        sys.stderr.write(f"bastion: {reason}\n")
        os._exit(1)


def channel_info(kind: ChannelKind = ChannelKind.SFTP, command: str | None = None
                 ) -> ChannelInfo:
    """A ChannelInfo for a channel of user alice in group ops on web01."""
    return ChannelInfo(kind=kind, pty=False, term=None, width=0, height=0,
                       command=command, subsystem="sftp" if kind is ChannelKind.SFTP else None,
                       session_id="test", channel=1, user="alice", identity_key="local|alice",
                       groups=("ops",), target=Target(name="web01", host="127.0.0.1"),
                       login="alice")


def policy_from(rules: list[dict[str, Any]]) -> TransferPolicy:
    """A TransferPolicy of ``[[transfers]]`` rules given as dicts (all applying)."""
    return TransferPolicy([(i, TransferRule(**_tuples(r))) for i, r in enumerate(rules)])


def relay(rules: list[dict[str, Any]], audit_path: Path, ops_path: Path) -> int:
    """Run sftp-server behind the sftp stages until the client leaves."""
    info = channel_info()
    ctx = FileContext(info, audit_path)
    ops = JsonlOpsWriter(ops_path)
    code = run_relay([SFTP_SERVER], info, ctx, sftp_stages(ctx, policy_from(rules), ops))
    ops.close()
    return code


def run_relay(server_argv: list[str], info: ChannelInfo, ctx: FileContext,
              stages: ChannelStages | None) -> int:
    """Run ``server_argv`` and relay stdin/stdout through ``stages`` until both sides end.

    Plain threads and blocking I/O: stdin and stdout may be one socket (sftp -D uses a
    socketpair), which asyncio's pipe transports mistake for a closed pipe. The stages run under
    one lock; what they pass on is queued to one writer thread per destination, in order.
    """
    server = subprocess.Popen(server_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert server.stdin is not None and server.stdout is not None
    lock = threading.Lock()
    to_server: queue.Queue[bytes | None] = queue.Queue()
    to_client: queue.Queue[bytes | None] = queue.Queue()
    pipeline = Pipeline.build(
        [lambda i, c: stages], info, ctx,
        to_target=lambda data, stream: to_server.put(data), target_end=lambda: to_server.put(None),
        record_input=lambda d, s: None, record_output=lambda d, s: None,
        to_user=lambda data, stream: to_client.put(data), user_end=lambda: to_client.put(None))

    def pump(fd: int, direction: Direction) -> None:
        while data := os.read(fd, 65536):
            with lock:
                direction.feed(data, Stream.DATA)
        with lock:
            direction.end()

    def write(q: queue.Queue[bytes | None], fd: int, close: bool) -> None:
        while (data := q.get()) is not None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        if close:
            os.close(fd)

    # Done when the server has said all it will (as the bastion ends a channel on its exit);
    # the client's side may still be open, so those threads do not hold the exit.
    threads = [threading.Thread(target=pump, args=(0, pipeline.input), daemon=True),
               threading.Thread(target=write, args=(to_server, server.stdin.fileno(), True),
                                daemon=True),
               threading.Thread(target=pump, args=(server.stdout.fileno(), pipeline.output)),
               threading.Thread(target=write, args=(to_client, 1, False))]
    for thread in threads:
        thread.start()
    for thread in threads[2:]:
        thread.join()
    pipeline.close()
    return server.wait()


def _tuples(rule: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in rule.items()}


def main() -> int:
    rules = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    return relay(rules, Path(sys.argv[2]), Path(sys.argv[3]))


if __name__ == "__main__":
    sys.exit(main())
