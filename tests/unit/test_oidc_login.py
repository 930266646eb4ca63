"""The keyboard-interactive login dialogue (LoginFlow) with a stand-in IdP: texts and decisions."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest

from bastion.audit import AuditLog
from bastion.config.model import (
    Config,
    IdentityConfig,
    PathsConfig,
    ServerConfig,
    TotpPolicy,
    VaultConfig,
)
from bastion.errors import IdentityError
from bastion.identity.login import Challenge, LoginFlow
from bastion.identity.model import Identity
from bastion.identity.oidc import DeviceAuthorization
from bastion.identity.service import IdentityService, ProvenKey
from bastion.secret import Secret
from bastion.state.db import StateDB

ALICE = Identity("https://idp", "sub-a", "alice", ("ops",), "alice@example.com", "oidc-device")
KEY = ProvenKey("SHA256:abc", "ssh-ed25519 AAAA test")


class StubService(IdentityService):
    """A real service (state, TOTP, bindings) whose IdP answers are scripted."""

    def __init__(self, tmp: Path, start: Any = None, finish: Any = ALICE, **identity: Any) -> None:
        config = Config(source=tmp / "b.toml", server=ServerConfig(),
                        paths=PathsConfig(tmp, tmp / "spool", None),
                        vault=VaultConfig(tmp / "v.json", key_file=tmp / "k"),
                        identity=IdentityConfig(issuer="https://idp", **identity))
        super().__init__(config, AuditLog(None, "t", stream=None),
                         StateDB(tmp / "state.sqlite3"), Secret(os.urandom(32)))
        self.start = start or DeviceAuthorization(
            Secret("dc"), "WXYZ-1234", "https://idp/device",
            "https://idp/device?user_code=WXYZ-1234", 600, 5)
        self.finish = finish

    async def start_device_login(self) -> DeviceAuthorization:
        if isinstance(self.start, Exception):
            raise self.start
        assert isinstance(self.start, DeviceAuthorization)
        return self.start

    async def finish_device_login(self, device: DeviceAuthorization) -> Identity:
        if isinstance(self.finish, Exception):
            raise self.finish
        assert isinstance(self.finish, Identity)
        return self.finish


def flow(svc: StubService, target: str | None = "web01", pending: Identity | None = None,
         ) -> LoginFlow:
    return LoginFlow(svc, conn="1", client="192.0.2.7:5555", request="deploy@web01",
                     target=target, proven_keys=[KEY], pending=pending)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_device_challenge_shows_what_the_user_needs(tmp_path: Path) -> None:
    challenge = run(flow(StubService(tmp_path)).begin())
    assert isinstance(challenge, Challenge) and challenge.prompts == ()
    text = challenge.instructions
    # By default the code is typed, not carried by a one-click link (RFC 8628 section 5.4).
    assert "user_code=" not in text and "https://idp/device" in text
    assert "and enter this code:\n\n  WXYZ-1234\n" in text and "expires in 10 minutes" in text
    assert "from 192.0.2.7 port 5555 for deploy@web01" in text
    assert text.isascii()  # OpenSSH escapes anything else in instructions
    assert challenge.banner is not None and "\u2588" in challenge.banner


def test_one_click_url_only_when_configured(tmp_path: Path) -> None:
    challenge = run(flow(StubService(tmp_path, show_complete_url=True)).begin())
    assert "https://idp/device?user_code=WXYZ-1234" in challenge.instructions
    assert "check that it shows this code" in challenge.instructions


def test_idp_text_cannot_inject_terminal_escapes(tmp_path: Path) -> None:
    evil = DeviceAuthorization(Secret("dc"), "AB\x1b[2J", "https://idp/d\x1b]0;x\x07",
                               "https://idp/d?c=\x1b[31mX", 60, 5)
    challenge = run(flow(StubService(tmp_path, start=evil)).begin())
    assert "\x1b" not in challenge.instructions and "\x07" not in challenge.instructions


def test_success_binds_proven_keys(tmp_path: Path) -> None:
    svc = StubService(tmp_path)
    f = flow(svc)
    run(f.begin())
    assert run(f.answer([])) is True
    assert f.identity == ALICE
    binding = svc.bindings.lookup(KEY.fingerprint)
    assert binding is not None and binding.identity.key == ALICE.key
    assert binding.identity.groups == ("ops",)


@pytest.mark.parametrize("error", [
    IdentityError("the sign-in was denied at the identity provider"),
    IdentityError("ID token refused: bad signature"),
])
def test_failure_shows_reason_then_refuses(tmp_path: Path, error: IdentityError) -> None:
    svc = StubService(tmp_path, finish=error)
    f = flow(svc)
    run(f.begin())
    shown = run(f.answer([]))
    assert isinstance(shown, Challenge) and shown.instructions == f"bastion: {error}"
    assert run(f.answer([])) is False
    assert svc.bindings.lookup(KEY.fingerprint) is None


def test_idp_down_at_start(tmp_path: Path) -> None:
    down = IdentityError("identity provider https://idp is unreachable: connection refused")
    f = flow(StubService(tmp_path, start=down))
    shown = run(f.begin())
    assert shown.instructions == f"bastion: device login is unavailable: {down}"
    assert run(f.answer([])) is False


def test_totp_required_not_enrolled_is_refused(tmp_path: Path) -> None:
    svc = StubService(tmp_path, totp_required_for=TotpPolicy(groups=("ops",)))
    f = flow(svc)
    run(f.begin())
    shown = run(f.answer([]))
    assert "none is enrolled" in shown.instructions and "https://idp|sub-a" in shown.instructions
    assert run(f.answer([])) is False
    assert svc.bindings.lookup(KEY.fingerprint) is None


def test_inband_enrollment_and_abandoned_enrollment(tmp_path: Path) -> None:
    svc = StubService(tmp_path, totp_required_for=TotpPolicy(all=True),
                      totp_inband_enrollment=True)
    f = flow(svc)
    run(f.begin())
    enroll = run(f.answer([]))
    assert enroll.prompts == (("TOTP code: ", False),) and enroll.banner
    uri = next(w for w in enroll.instructions.split() if w.startswith("otpauth://"))
    totp = pyotp.TOTP(parse_qs(urlsplit(uri).query)["secret"][0])
    assert run(f.answer([totp.now()])) is True
    assert svc.totp.enrolled(ALICE.key) and svc.bindings.lookup(KEY.fingerprint)

    svc2 = StubService(tmp_path / "b", totp_required_for=TotpPolicy(all=True),
                       totp_inband_enrollment=True)
    g = flow(svc2)
    run(g.begin())
    run(g.answer([]))
    for _ in range(2):
        again = run(g.answer(["000000"]))
        assert isinstance(again, Challenge) and "wrong TOTP code" in again.instructions
    final = run(g.answer(["000000"]))
    assert isinstance(final, Challenge) and run(g.answer([])) is False
    assert not svc2.totp.enrolled(ALICE.key)  # never confirmed: enrollment dropped


def test_pending_first_factor_only_asks_totp_and_binds_nothing(tmp_path: Path) -> None:
    svc = StubService(tmp_path, totp_required_for=TotpPolicy(targets=("db01",)))
    local = dataclasses.replace(ALICE, issuer="local", subject="demo", method="publickey")
    uri = svc.totp.enroll(local.key, "demo").reveal()
    totp = pyotp.TOTP(parse_qs(urlsplit(uri).query)["secret"][0])
    f = flow(svc, target="db01", pending=local)
    ask = run(f.begin())
    assert ask.prompts == (("TOTP code: ", False),) and "user_code" not in ask.instructions
    assert run(f.answer([totp.now()])) is True and f.identity == local
    assert svc.bindings.lookup(KEY.fingerprint) is None
