"""``bastion serve`` with worker processes (real OpenSSH client and sshd): connections are spread
over the workers; a worker killed with SIGKILL is replaced and its session's recording is
recovered, sealed and verifies while the other worker's session goes on; SIGHUP applies a
changed config to new connections without dropping a running session, and a broken config
changes nothing."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.ssh import bastion_destination, run_ssh, ssh_base_argv
from harness.wait import wait_for_session_end, wait_until

from bastion.audit import read_events
from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e


def two_workers(workdir: Path, *, evidence: bool) -> DemoStack:
    # (with_s3 brings the signing key and [evidence]: sessions are sealed)
    st = DemoStack(workdir, with_idp=False, with_s3=evidence, command_rules=False)
    st.merge_config({"server": {"workers": 2}})
    return st


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[DemoStack]:
    with two_workers(tmp_path / "stack", evidence=False) as st:
        yield st


@pytest.fixture
def sealing_stack(tmp_path: Path) -> Iterator[DemoStack]:
    with two_workers(tmp_path / "stack", evidence=True) as st:
        yield st


def audit(stack: DemoStack) -> list[dict[str, Any]]:
    return read_events(stack.state_dir / "audit.jsonl")


class LiveSession:
    """An exec session that says "ready", then echoes each line it reads, prefixed."""

    def __init__(self, stack: DemoStack, target: str, tag: str) -> None:
        self.tag = tag
        self.proc = subprocess.Popen(
            [*ssh_base_argv(stack), bastion_destination(stack, target), "--",
             f"echo ready; while read -r line; do echo \"{tag}:$line\"; done # {tag}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "ready\n", self.proc.stderr

    def echo(self, text: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline()

    def end(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def session_of(stack: DemoStack, tag: str) -> dict[str, Any]:
    """The session.start event of the session whose command carries ``tag``."""
    def found() -> list[dict[str, Any]]:
        ids = [p.parent.name for p in stack.spool_dir.glob("*/session.json")
               if any(tag in (c.get("command") or "")
                      for c in json.loads(p.read_text()).get("channels", []))]
        return [e for e in audit(stack) if e["event"] == "session.start"
                and e.get("session") in ids]
    wait_until(lambda: len(found()) == 1, 30, f"the session of {tag}")
    return found()[0]


def worker_pids(stack: DemoStack) -> dict[int, int]:
    """Worker number -> pid of the newest start of each worker."""
    pids: dict[int, int] = {}
    for event in audit(stack):
        if event["event"] in ("worker.start",):
            pids[event["worker"]] = event["pid"]
    return pids


def verify(stack: DemoStack, session: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion", "verify", "--public-key",
         f"{stack.signing_key_path}.pub", str(session)],
        capture_output=True, text=True, timeout=120, check=False)


def test_a_killed_worker_is_replaced_and_its_session_recovered(sealing_stack: DemoStack,
                                                                ) -> None:
    stack = sealing_stack
    # Open sessions until both workers hold one (the kernel hands each connection to
    # whichever worker accepts first; twelve tries all landing on one would be a bug).
    sessions: dict[int, tuple[LiveSession, dict[str, Any]]] = {}
    spare: list[tuple[LiveSession, dict[str, Any]]] = []
    try:
        for attempt in range(12):
            live = LiveSession(stack, "web01", f"spread{attempt}")
            start = session_of(stack, live.tag)
            if start["worker"] in sessions:
                spare.append((live, start))
            else:
                sessions[start["worker"]] = (live, start)
            if len(sessions) == 2:
                break
        assert sorted(sessions) == [1, 2], "every connection went to one worker"
        victim, victim_start = sessions[1]
        survivor, survivor_start = sessions[2]
        victim_pid = worker_pids(stack)[1]

        subprocess.run(["kill", "-KILL", str(victim_pid)], check=True)
        assert victim.proc.wait(timeout=30) != 0  # its client lost the connection

        wait_until(lambda: any(e["event"] == "worker.restarted" and e["worker"] == 1
                               for e in audit(stack)), 30, "worker 1 to be restarted")
        exited = [e for e in audit(stack) if e["event"] == "worker.exited"]
        assert exited[-1]["pid"] == victim_pid and exited[-1]["how"] == "signal SIGKILL"
        assert worker_pids(stack)[1] != victim_pid

        # The dead worker's recording: closed as interrupted, sealed, and it verifies.
        folder = stack.spool_dir / victim_start["session"]
        assert wait_for_session_end(folder)["state"] == "interrupted"
        wait_until(lambda: (folder / "manifest.sig").exists(), 30, "the recovery to be sealed")
        verdict = verify(stack, folder)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
        # Recovered: the sessions worker 1 was running, and only those.
        recovered = [e["session"] for e in audit(stack) if e["event"] == "recording.recovered"]
        on_victim = [victim_start] + [st for _, st in spare if st["worker"] == 1]
        assert sorted(recovered) == sorted(st["session"] for st in on_victim)

        # The other worker's session never noticed; new connections are served.
        assert survivor.echo("still here") == f"{survivor.tag}:still here\n"
        assert json.loads((stack.spool_dir / survivor_start["session"] / "session.json")
                          .read_text())["state"] == "active"
        ok = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--",
                      "echo ok"])
        assert ok.stdout == "ok\n", ok.stderr
        assert survivor.end() == 0
        assert wait_for_session_end(stack.spool_dir / survivor_start["session"])["state"] \
            == "closed"
        for live, start in spare:
            if start["worker"] == 2:
                assert live.end() == 0
        # Both workers sealed into the node's one chain: the whole spool verifies, no gap.
        wait_until(lambda: all((f / "manifest.sig").exists()
                               for f in stack.spool_dir.iterdir() if f.is_dir()), 30,
                   "every session to be sealed")
        chain = verify(stack, stack.spool_dir)
        assert chain.returncode == 0, chain.stdout + chain.stderr
        sealed = [json.loads((f / "manifest.json").read_text())
                  for f in stack.spool_dir.iterdir() if f.is_dir()]
        assert sorted(m["sequence"] for m in sealed) == list(range(1, len(sealed) + 1))
    finally:
        for live, _ in sessions.values():
            live.kill()
        for live, _ in spare:
            live.kill()


def test_sighup_applies_a_new_config_without_dropping_a_running_session(
        stack: DemoStack) -> None:
    assert stack.bastion is not None
    running = LiveSession(stack, "db01", "before-reload")
    try:
        start = session_of(stack, running.tag)
        # Tighten the policy: the demo user may reach web01 only.
        stack.merge_config({"access": [{"groups": ["ops"], "targets": ["web01"],
                                        "logins": [stack.login]}]})
        stack.write_config()
        stack.bastion.signal(signal.SIGHUP)
        wait_until(lambda: any(e["event"] == "server.reloaded" for e in audit(stack)), 60,
                   "the reload")

        refused = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "db01"), "--",
                           "echo should-not-run"])
        assert refused.returncode != 0 and "should-not-run" not in refused.stdout
        allowed = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--",
                           "echo ok"])
        assert allowed.stdout == "ok\n", allowed.stderr

        # The session opened before the reload goes on, on its old worker, to its end.
        assert running.echo("after reload") == f"{running.tag}:after reload\n"
        assert running.end() == 0
        assert wait_for_session_end(stack.spool_dir / start["session"])["state"] == "closed"
        # Then the replaced worker, having no session left, goes.
        wait_until(lambda: any(e["event"] == "worker.exited" and e["worker"] == start["worker"]
                               and not e["replaced"] for e in audit(stack)), 30,
                   "the old worker to finish")
    finally:
        running.kill()


def test_sighup_with_a_broken_config_changes_nothing(stack: DemoStack) -> None:
    assert stack.bastion is not None
    good = stack.config_path.read_text(encoding="utf-8")
    stack.config_path.write_text(good + "\n[server\n", encoding="utf-8")
    stack.bastion.signal(signal.SIGHUP)
    wait_until(lambda: any(e["event"] == "server.reload_failed" for e in audit(stack)), 30,
               "the refused reload")
    failed = [e for e in audit(stack) if e["event"] == "server.reload_failed"]
    assert "bastion.toml" in failed[0]["error"]
    assert not any(e["event"] == "worker.exited" for e in audit(stack))
    ok = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--", "echo ok"])
    assert ok.stdout == "ok\n", ok.stderr


def test_each_new_connection_goes_to_the_worker_holding_fewest(stack: DemoStack) -> None:
    """The shared socket (the default): the worker with fewer open connections takes the next
    one (server/balance.py). Before, an idle node's first worker tended to win every accept,
    and busy nodes ended lopsided (30 of 50 terminals on one worker, bench/RESULTS.md)."""
    def starts() -> list[dict[str, Any]]:
        return [e for e in audit(stack) if e["event"] == "session.start"]

    def ends() -> int:
        return len([e for e in audit(stack) if e["event"] == "session.end"])

    before = len(starts())
    sessions: list[tuple[LiveSession, int]] = []
    try:
        for number in range(8):  # one after another, each open before the next
            live = LiveSession(stack, "web01", f"spread{number}")
            sessions.append((live, session_of(stack, f"spread{number}")["worker"]))
        assert sorted(worker for _, worker in sessions) == [1, 1, 1, 1, 2, 2, 2, 2]
        # Two end on worker 1: it holds 2, worker 2 holds 4; the next two go to worker 1.
        ended = ends()
        for live, _ in [s for s in sessions if s[1] == 1][:2]:
            assert live.end() == 0
        wait_until(lambda: ends() == ended + 2, 30, "the two sessions to end")
        for number in (8, 9):
            live = LiveSession(stack, "web01", f"spread{number}")
            sessions.append((live, session_of(stack, f"spread{number}")["worker"]))
        assert [worker for _, worker in sessions[-2:]] == [1, 1]
        assert len(starts()) == before + 10
    finally:
        for live, _ in sessions:
            if live.proc.returncode is None:
                live.kill()


def test_strangers_from_one_address_share_one_allowance_across_workers(tmp_path: Path) -> None:
    cap = 3
    opened = 12  # (all twelve on one worker: 1 in 2048)
    st = two_workers(tmp_path / "stack", evidence=False)
    # reuseport: the kernel spreads connections by address hash, so both workers get some
    # (with the shared socket an idle node's first worker tends to win every accept).
    st.merge_config({"server": {"max_unauthenticated_per_source": cap,
                                "worker_balance": "reuseport"}})
    with st:
        sockets = []
        try:
            # Silent TCP connections (no SSH banner): each a stranger from 127.0.0.1.
            for _ in range(opened):
                sockets.append(socket.create_connection((st.bastion_host, st.bastion_port)))

            def refused() -> list[dict[str, Any]]:
                return [e for e in audit(st) if e["event"] == "connection.refused"]
            wait_until(lambda: len(refused()) == opened - cap, 30, "the connections over the cap")

            def still_open(sock: socket.socket) -> bool:
                sock.setblocking(False)
                try:
                    while sock.recv(4096):  # the server's SSH banner: read past it
                        pass
                    return False  # end of stream: the bastion closed it
                except BlockingIOError:
                    return True  # nothing more to read and not closed: held open
                except OSError:
                    return False  # reset
            wait_until(lambda: sum(map(still_open, sockets)) == cap, 30,
                       f"exactly {cap} connections to stay open")
            assert all("unauthenticated" in e["reason"] for e in refused())
        finally:
            for sock in sockets:
                sock.close()
        # Both workers took some of them: the allowance held across processes.
        wait_until(lambda: len([e for e in audit(st)
                                if e["event"] == "connection.unauthenticated"]) == opened, 30,
                   "every connection to be closed")
        took = {e["worker"] for e in audit(st)
                if e["event"] in ("connection.refused", "connection.unauthenticated")}
        assert took == {1, 2}
