"""Discovery checks, device-flow polling (RFC 8628) and the [identity] config section."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bastion.config.load import parse_config
from bastion.config.model import IdentityConfig
from bastion.config.reader import Source
from bastion.errors import ConfigError, IdentityError
from bastion.identity.device import wait_for_id_token
from bastion.identity.oidc import DeviceAuthorization, OidcProvider, TokenAnswer, parse_metadata
from bastion.secret import Secret

ISSUER = "https://idp.example.com"


def doc(**over: Any) -> dict[str, Any]:
    base = {"issuer": ISSUER, "device_authorization_endpoint": ISSUER + "/device/auth",
            "token_endpoint": ISSUER + "/token", "jwks_uri": ISSUER + "/jwks"}
    base.update(over)
    return base


def test_discovery_issuer_must_match_exactly() -> None:
    assert parse_metadata(ISSUER, doc()).token_endpoint == ISSUER + "/token"
    with pytest.raises(IdentityError, match="names issuer"):
        parse_metadata(ISSUER, doc(issuer=ISSUER + "/"))
    with pytest.raises(IdentityError, match="device flow"):
        parse_metadata(ISSUER, {k: v for k, v in doc().items()
                                if k != "device_authorization_endpoint"})
    with pytest.raises(IdentityError, match="not a usable URL"):
        parse_metadata(ISSUER, doc(token_endpoint="file:///etc/passwd"))


class FakeProvider(OidcProvider):
    """Answers polls from a script; records when each poll happened."""

    def __init__(self, answers: list[str | Exception]) -> None:
        super().__init__(IdentityConfig(issuer=ISSUER))
        self.answers = answers
        self.polled_at: list[float] = []
        self.clock = 0.0

    async def poll_token(self, device: DeviceAuthorization) -> TokenAnswer:
        self.polled_at.append(self.clock)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if answer == "token":
            return TokenAnswer(id_token=Secret("tok"), error=None)
        return TokenAnswer(id_token=None, error=answer)


def run(provider: FakeProvider, expires: float = 600, interval: float = 5,
        timeout: float = 600) -> str:
    device = DeviceAuthorization(Secret("dc"), "ABCD-EFGH", ISSUER + "/device", None,
                                 expires, interval)

    async def sleep(seconds: float) -> None:
        provider.clock += seconds

    token = asyncio.run(wait_for_id_token(provider, device, timeout=timeout, sleep=sleep,
                                          clock=lambda: provider.clock))
    return token.reveal()


def test_pending_then_token_at_interval() -> None:
    p = FakeProvider(["authorization_pending", "authorization_pending", "token"])
    assert run(p) == "tok"
    assert p.polled_at == [5, 10, 15]


def test_slow_down_adds_five_seconds_for_good() -> None:
    p = FakeProvider(["slow_down", "authorization_pending", "slow_down", "token"])
    assert run(p) == "tok"
    assert p.polled_at == [5, 15, 25, 40]


def test_denied_and_expired_have_clear_reasons() -> None:
    with pytest.raises(IdentityError, match="denied at the identity provider"):
        run(FakeProvider(["authorization_pending", "access_denied"]))
    with pytest.raises(IdentityError, match="code expired"):
        run(FakeProvider(["expired_token"]))
    with pytest.raises(IdentityError, match="invalid_grant"):
        run(FakeProvider(["invalid_grant"]))


def test_gives_up_at_expiry_or_timeout() -> None:
    p = FakeProvider(["authorization_pending"] * 100)
    with pytest.raises(IdentityError, match="code expired"):
        run(p, expires=30)
    assert p.polled_at == [5, 10, 15, 20, 25]
    p = FakeProvider(["authorization_pending"] * 100)
    with pytest.raises(IdentityError, match="code expired"):
        run(p, timeout=12)
    assert p.polled_at == [5, 10]


def test_unreachable_provider_retried_then_reported() -> None:
    down = IdentityError("identity provider https://idp.example.com is unreachable: refused")
    p = FakeProvider([down, "token"])
    assert run(p) == "tok"
    with pytest.raises(IdentityError, match="unreachable"):
        run(FakeProvider([down, down, down]))


BASE = """
[paths]
state_dir = "state"
[vault]
key_file = "vault.key"
"""


def load(text: str) -> Any:
    import tomllib
    path = Path("/etc/bastion/bastion.toml")
    return parse_config(tomllib.loads(text), Source(path, text))


def test_identity_section_defaults_and_login_timeout() -> None:
    cfg = load(BASE + '[identity]\nissuer = "https://idp.example.com"\n')
    assert cfg.identity.enabled and cfg.identity.client_secret is None
    assert cfg.identity.binding_ttl == 12 * 3600
    assert cfg.server.login_timeout == 30  # before auth; a device login in progress gets more
    assert not load(BASE).identity.enabled


def test_identity_section_full() -> None:
    cfg = load(BASE + """
[identity]
issuer = "http://127.0.0.1:9000"
client_id = "bastion-prod"
client_secret = "s3cret"
scopes = ["openid", "groups"]
groups_claim = "roles"
binding_ttl = "2h"
device_poll_timeout = "5m"
totp_required_for = { groups = ["admins"], targets = ["db01"] }
totp_inband_enrollment = true
""".replace('targets = ["db01"]', 'targets = ["db01"]'))
    ident = cfg.identity
    assert ident.client_secret is not None and ident.client_secret.reveal() == "s3cret"
    assert "s3cret" not in repr(ident)
    assert ident.binding_ttl == 7200 and ident.device_poll_timeout == 300
    assert ident.totp_required_for.groups == ("admins",)
    assert ident.totp_required_for.targets == ("db01",) and ident.totp_inband_enrollment


@pytest.mark.parametrize(("extra", "message"), [
    ('issuer = "http://idp.example.com"', "https://"),
    ('issuer = "https://i"\nscopes = ["email"]', '"openid"'),
    ('issuer = "https://i"\nallowed_algs = ["none"]', "asymmetric"),
    ('issuer = "https://i"\nallowed_algs = ["HS256"]', "asymmetric"),
    ('issuer = "https://i"\nbinding_tll = "1h"', "unknown option"),
    ('client_id = "x"', "issuer"),
])
def test_identity_section_errors(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(BASE + "[identity]\n" + extra + "\n")


def test_short_login_timeout_with_device_login_is_accepted() -> None:
    cfg = load(BASE + '[server]\nlogin_timeout = "20s"\n[identity]\nissuer = "https://i"\n')
    assert cfg.server.login_timeout == 20


@pytest.mark.parametrize("field,value", [("expires_in", "NaN"), ("expires_in", "Infinity"),
                                         ("interval", "NaN"), ("interval", "-1")])
def test_device_answer_needs_finite_positive_numbers(monkeypatch: pytest.MonkeyPatch,
                                                     field: str, value: str) -> None:
    # json.loads takes NaN: with expires_in NaN the login would have no deadline at all.
    import json

    from bastion.identity import http

    answer = {"device_code": "dc", "user_code": "U", "verification_uri": ISSUER + "/d",
              "expires_in": 600, "interval": 5}
    body = json.loads(json.dumps(answer).replace(f'"{field}": {answer[field]}',
                                                 f'"{field}": {value}'))

    async def post_form(*_args: Any) -> tuple[int, Any]:
        return 200, body

    async def get_json(*_args: Any) -> Any:
        return doc()

    monkeypatch.setattr(http, "post_form", post_form)
    monkeypatch.setattr(http, "get_json", get_json)
    provider = OidcProvider(IdentityConfig(issuer=ISSUER))
    with pytest.raises(IdentityError, match="malformed device authorization"):
        asyncio.run(provider.start_device_authorization())
