"""Approval requests: the store's compare-and-set, the service's rules, the webhook, the config."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bastion.approvals.notifier import WebhookNotifier
from bastion.approvals.service import ApprovalService, Approver
from bastion.approvals.store import ApprovalState, ApprovalStore
from bastion.audit import AuditLog
from bastion.config.load import parse_config
from bastion.config.model import ApprovalsConfig
from bastion.config.reader import Source
from bastion.errors import ApprovalError, ConfigError, TotpError
from bastion.state.db import StateDB

ALICE = Approver("idp|alice", "alice", ("sre",), "alice@example.com")
BOB = Approver("idp|bob", "bob", ("dev",), "bob@example.com")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeTotp:
    def __init__(self) -> None:
        self.used: list[tuple[str, str]] = []

    def verify(self, identity_key: str, code: str) -> None:
        if code != "123456":
            raise TotpError("wrong TOTP code")
        self.used.append((identity_key, code))


@pytest.fixture
def env(tmp_path: Path) -> tuple[ApprovalService, Clock, FakeTotp, Path]:
    clock, totp = Clock(), FakeTotp()
    audit_path = tmp_path / "audit.jsonl"
    config = ApprovalsConfig(approver_groups=("sre",), approver_users=("carol@example.com",),
                             timeout=60.0, poll_interval=0.01)
    service = ApprovalService(ApprovalStore(StateDB(tmp_path / "state.db")), config,
                              AuditLog(audit_path, "n1", stream=None), "n1", totp=totp,
                              clock=clock)
    return service, clock, totp, audit_path


def _open(service: ApprovalService, requester: str = "idp|bob") -> str:
    async def run() -> str:
        return service.open(session_id="s1", channel=1, requester_key=requester,
                            requester_name="bob", target="web01", login="deploy",
                            command="systemctl restart nginx", rule="restart").id
    return asyncio.run(run())


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_approve_needs_an_approver_totp_and_not_oneself(env: Any) -> None:
    service, _, totp, audit = env
    request = _open(service)
    with pytest.raises(ApprovalError, match="not an approver"):
        service.decide(request, BOB, True, None, "123456")
    with pytest.raises(ApprovalError, match="TOTP code"):
        service.decide(request, ALICE, True, None, None)
    with pytest.raises(TotpError):
        service.decide(request, ALICE, True, None, "000000")
    own = _open(service, requester=ALICE.key)
    with pytest.raises(ApprovalError, match="their own request"):
        service.decide(own, ALICE, True, None, "123456")
    decided = service.decide(request, ALICE, True, "change 42", "123456")
    assert decided.state is ApprovalState.APPROVED
    assert (decided.decided_by, decided.decided_name, decided.reason) == (
        "idp|alice", "alice", "change 42")
    assert totp.used == [("idp|alice", "123456")]
    with pytest.raises(ApprovalError, match="already approved"):
        service.decide(request, ALICE, False, "too late", None)
    names = [e["event"] for e in _events(audit)]
    assert names.count("approval.refused") == 5
    assert "approval.requested" in names and "approval.approved" in names


def test_deny_needs_a_reason_and_users_match_by_email(env: Any) -> None:
    service, _, _, _ = env
    carol = Approver("idp|carol", "Carol", (), "carol@example.com")
    request = _open(service)
    with pytest.raises(ApprovalError, match="reason"):
        service.decide(request, carol, False, "  ", None)
    with pytest.raises(ApprovalError, match="printable"):
        service.decide(request, carol, False, "no\x1b[2J", None)
    decided = service.decide(request, carol, False, "not now", None)
    assert decided.state is ApprovalState.DENIED


def test_wait_returns_the_decision_expiry_or_cancel(env: Any) -> None:
    service, clock, _, _ = env

    async def run() -> list[ApprovalState]:
        states = []
        first = service.open(session_id="s", channel=1, requester_key="idp|bob",
                             requester_name="bob", target="t", login="l", command="c",
                             rule=None)
        waiter = asyncio.create_task(service.wait(first.id, asyncio.Event()))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        service.decide(first.id, ALICE, True, None, "123456")
        states.append((await asyncio.wait_for(waiter, 5)).state)
        second = service.open(session_id="s", channel=1, requester_key="idp|bob",
                              requester_name="bob", target="t", login="l", command="c",
                              rule=None)
        clock.now += 61
        states.append((await asyncio.wait_for(service.wait(second.id, asyncio.Event()),
                                              5)).state)
        with pytest.raises(ApprovalError, match="already expired"):
            service.decide(second.id, ALICE, True, None, "123456")
        third = service.open(session_id="s", channel=1, requester_key="idp|bob",
                             requester_name="bob", target="t", login="l", command="c",
                             rule=None)
        cancel = asyncio.Event()
        cancel.set()
        states.append((await service.wait(third.id, cancel)).state)
        return states

    assert asyncio.run(run()) == [ApprovalState.APPROVED, ApprovalState.EXPIRED,
                                  ApprovalState.CANCELLED]


def test_pending_hides_own_requests_and_needs_an_approver(env: Any) -> None:
    service, _, _, _ = env
    mine = _open(service, requester=ALICE.key)
    theirs = _open(service)
    assert [r.id for r in service.pending_for(ALICE)] == [theirs]
    assert service.pending_for(BOB) == []
    assert {r.id for r in service.store.pending(0)} == {mine, theirs}


class _Hook(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, Any]]] = []
    fail_first = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Hook.fail_first > 0:
            _Hook.fail_first -= 1
            self.send_response(503)
        else:
            _Hook.bodies.append(json.loads(body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


def test_webhook_posts_json_and_retries() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _Hook.bodies, _Hook.fail_first = [], 2
        hook = WebhookNotifier(f"http://127.0.0.1:{server.server_port}/x", timeout=5,
                               attempts=3, backoff=0.01)
        assert asyncio.run(hook.send({"event": "approval.requested", "id": "abc"}))
        assert _Hook.bodies == [{"event": "approval.requested", "id": "abc"}]
        _Hook.fail_first = 5
        assert not asyncio.run(hook.send({"id": "def"}))
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_payload_from_the_service(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []

    class Recorder:
        async def send(self, payload: dict[str, Any]) -> bool:
            sent.append(payload)
            return True

    service = ApprovalService(ApprovalStore(StateDB(tmp_path / "s.db")), ApprovalsConfig(),
                              AuditLog(None, "n1", stream=None), "n1", notifier=Recorder())

    async def run() -> None:
        service.open(session_id="s1", channel=2, requester_key="idp|bob", requester_name="bob",
                     target="web01", login="deploy", command="systemctl stop x", rule="r")
        await asyncio.sleep(0.01)

    asyncio.run(run())
    assert sent and sent[0]["event"] == "approval.requested"
    assert {"id", "user", "target", "login", "command", "rule", "created", "expires",
            "session", "node"} <= set(sent[0])
    assert sent[0]["expires"].endswith("Z")


def _config(text: str, tmp_path: Path) -> Any:
    import tomllib
    base = ('[vault]\nkey_file = "k"\n')
    path = tmp_path / "b.toml"
    full = base + text
    return parse_config(tomllib.loads(full), Source(path, full))


def test_config_section(tmp_path: Path) -> None:
    config = _config('[approvals]\napprover_groups = ["sre"]\ntimeout = "2m"\n'
                     'webhook_url = "https://hooks.example.com/a"\n', tmp_path)
    assert config.approvals.approver_groups == ("sre",)
    assert config.approvals.timeout == 120.0
    assert config.approvals.require_totp
    with pytest.raises(ConfigError, match=r"b.toml:5: approvals.timeout"):
        _config('[approvals]\napprover_groups = ["sre"]\ntimeout = "soon"\n', tmp_path)
    with pytest.raises(ConfigError, match="webhook_url"):
        _config('[approvals]\nwebhook_url = "ftp://x"\n', tmp_path)
    with pytest.raises(ConfigError, match="unknown option"):
        _config('[approvals]\napprovers = ["x"]\n', tmp_path)


def test_a_closed_channel_withdraws_its_request(env: Any) -> None:
    service, _, _, _ = env
    request = _open(service)
    service.withdraw(request, "the user's channel closed")
    assert service.store.get(request).state is ApprovalState.CANCELLED  # type: ignore[union-attr]
    service.withdraw(request, "again")  # already decided: nothing happens
    with pytest.raises(ApprovalError, match="already cancelled"):
        service.decide(request, ALICE, True, None, "123456")
