"""The approver menu without SSH: keys in, text out, decisions through the real service."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bastion.approvals.service import ApprovalService, Approver
from bastion.approvals.store import ApprovalState, ApprovalStore
from bastion.audit import AuditLog
from bastion.config.model import ApprovalsConfig
from bastion.relay.approver_menu import ApproverMenu
from bastion.state.db import StateDB


class Totp:
    def verify(self, identity_key: str, code: str) -> None:
        if code != "654321":
            from bastion.errors import TotpError
            raise TotpError("wrong TOTP code")


def _service(tmp_path: Path) -> ApprovalService:
    return ApprovalService(ApprovalStore(StateDB(tmp_path / "s.db")),
                           ApprovalsConfig(approver_groups=("sre",)),
                           AuditLog(None, "n", stream=None), "n", totp=Totp())


def test_menu_approves_with_a_hidden_code_and_escapes_commands(tmp_path: Path) -> None:
    service = _service(tmp_path)
    screen: list[str] = []
    alice = Approver("idp|alice", "alice", ("sre",))

    async def scenario() -> int:
        request = service.open(session_id="s", channel=1, requester_key="idp|bob",
                               requester_name="bob", target="web01", login="deploy",
                               command="systemctl restart x\x1b[2J", rule="r")
        menu = ApproverMenu(screen.append, service, alice)
        task = asyncio.create_task(menu.run())
        for keys in (b"1\r", b"a\r", b"111111\r", b"\r"):  # wrong code first
            await asyncio.sleep(0.01)
            menu.feed(keys)
        await asyncio.sleep(0.01)
        assert service.store.get(request.id).state is ApprovalState.PENDING  # type: ignore[union-attr]
        for keys in (b"1\r", b"a\r", b"654321\r", b"ok\r", b"q\r"):
            await asyncio.sleep(0.01)
            menu.feed(keys)
        status = await asyncio.wait_for(task, 5)
        assert service.store.get(request.id).state is ApprovalState.APPROVED  # type: ignore[union-attr]
        return status

    assert asyncio.run(scenario()) == 0
    text = "".join(screen)
    assert "\x1b[2J" not in text and "\\x1b[2J" in text
    assert "654321" not in text and "******" in text
    assert "wrong TOTP code" in text


def test_menu_refuses_non_approvers(tmp_path: Path) -> None:
    screen: list[str] = []
    menu = ApproverMenu(screen.append, _service(tmp_path), Approver("idp|bob", "bob", ("dev",)))
    assert asyncio.run(menu.run()) == 1
    assert "not an approver" in "".join(screen)
