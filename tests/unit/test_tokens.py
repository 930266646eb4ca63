"""ID token validation: every way a token can be wrong is refused with its own reason."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from bastion.errors import IdentityError
from bastion.identity.tokens import IdTokenValidator, identity_from_claims

ISSUER = "https://idp.example.com"
CLIENT = "bastion"
ALGS = ("RS256", "ES256")


def rsa(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"},
                               private=True)


KEY = rsa("k1")
OTHER = rsa("k1")  # same kid, different key: a forged signature


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": CLIENT, "sub": "u-123", "iat": now, "exp": now + 300,
            "email": "a@example.com", "email_verified": True, "name": "Alice",
            "groups": ["ops", "dev"]}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Any = KEY, alg: str = "RS256",
         kid: str | None = "k1") -> str:
    header = {"alg": alg, **({"kid": kid} if kid else {})}
    return jwt.encode(header, payload, key, algorithms=[alg])


class Jwks:
    """A JWKS endpoint stand-in that counts fetches and can be rotated."""

    def __init__(self, *keys: Any) -> None:
        self.keys = list(keys)
        self.fetches = 0

    async def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        return {"keys": [k.as_dict(private=False) for k in self.keys]}


def validate(token: str, jwks: Jwks | None = None, **kw: Any) -> dict[str, Any]:
    v = IdTokenValidator(ISSUER, CLIENT, jwks or Jwks(KEY), ALGS, **kw)
    return asyncio.run(v.validate(token))


def refused(token: str, reason: str, jwks: Jwks | None = None) -> None:
    with pytest.raises(IdentityError, match=reason):
        validate(token, jwks)


def test_valid_token_gives_claims_and_identity() -> None:
    got = validate(sign(claims()))
    ident = identity_from_claims(got, "groups")
    assert (ident.issuer, ident.subject) == (ISSUER, "u-123")
    assert ident.groups == ("dev", "ops") and ident.email == "a@example.com"
    assert ident.method == "oidc-device"


def test_identity_is_issuer_and_subject_not_email() -> None:
    a = identity_from_claims(validate(sign(claims(sub="x", email="same@example.com"))), "groups")
    b = identity_from_claims(validate(sign(claims(sub="y", email="same@example.com"))), "groups")
    assert a.key != b.key


def test_custom_groups_claim() -> None:
    ident = identity_from_claims(validate(sign(claims(roles=["admins"]))), "roles")
    assert ident.groups == ("admins",)


def test_wrong_audience() -> None:
    refused(sign(claims(aud="someone-else")), "audience")


def test_several_audiences_need_azp() -> None:
    refused(sign(claims(aud=[CLIENT, "other"])), "authorized party")
    refused(sign(claims(aud=[CLIENT, "other"], azp="other")), "authorized party")
    assert validate(sign(claims(aud=[CLIENT, "other"], azp=CLIENT)))["sub"] == "u-123"


def test_wrong_issuer() -> None:
    refused(sign(claims(iss="https://evil.example.com")), "issuer")
    refused(sign(claims(iss=ISSUER + "/")), "issuer")  # exact match, no normalising


def test_expired_and_future() -> None:
    now = int(time.time())
    refused(sign(claims(exp=now - 120, iat=now - 600)), "expired")
    assert validate(sign(claims(exp=now - 30)))  # within leeway
    refused(sign(claims(iat=now + 600, exp=now + 900)), "future")
    refused(sign(claims(exp=None)), "exp or iat")
    # json.loads takes NaN and Infinity: NaN is never "expired", Infinity never ends
    refused(sign(claims(exp=float("nan"))), "exp or iat")
    refused(sign(claims(exp=float("inf"))), "exp or iat")
    refused(sign(claims(iat=float("nan"))), "exp or iat")
    refused(sign(claims(nbf=float("nan"))), "not valid yet")


def test_bad_signature() -> None:
    refused(sign(claims(), key=OTHER), "bad signature")
    token = sign(claims())
    head, _body, sig = token.split(".")
    tampered = base64.urlsafe_b64encode(json.dumps(claims(sub="admin")).encode()).decode()
    refused(f"{head}.{tampered.rstrip('=')}.{sig}", "bad signature")


def test_alg_none_refused() -> None:
    head = base64.urlsafe_b64encode(b'{"alg":"none","kid":"k1"}').decode().rstrip("=")
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).decode().rstrip("=")
    refused(f"{head}.{body}.", "algorithm 'none'")


@pytest.mark.filterwarnings("ignore:This key should not be used")
def test_hmac_with_public_key_refused() -> None:
    # The classic confusion: HS256 "signed" with the RSA public key as the shared secret.
    # Forged by hand: joserfc 1.8 refuses to make an HMAC key of a public key at all.
    public_pem = KEY.as_pem(private=False)
    signing_input = b".".join(_b64(json.dumps(part).encode()) for part in
                              ({"alg": "HS256", "kid": "k1"}, claims()))
    mac = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    refused((signing_input + b"." + _b64(mac)).decode(), "algorithm 'HS256'")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def test_validator_rejects_symmetric_allowlist() -> None:
    with pytest.raises(ValueError):
        IdTokenValidator(ISSUER, CLIENT, Jwks(KEY), ("HS256",))


def test_unknown_kid_refetches_once_then_accepts_rotated_key() -> None:
    jwks = Jwks(KEY)
    v = IdTokenValidator(ISSUER, CLIENT, jwks, ALGS)
    assert asyncio.run(v.validate(sign(claims())))
    assert jwks.fetches == 1
    assert asyncio.run(v.validate(sign(claims())))
    assert jwks.fetches == 1  # cached
    new = rsa("k2")
    jwks.keys = [new]
    assert asyncio.run(v.validate(sign(claims(), key=new, kid="k2")))["sub"] == "u-123"
    assert jwks.fetches == 2


def test_unknown_kid_after_refetch_refused() -> None:
    jwks = Jwks(KEY)
    refused(sign(claims(), key=rsa("k9"), kid="k9"), "signing key 'k9'", jwks)
    assert jwks.fetches == 2  # the first fetch, then exactly one refetch


def test_ec_key_and_kty_mismatch() -> None:
    ec = ECKey.generate_key("P-256", parameters={"kid": "e1"}, private=True)
    assert validate(sign(claims(), key=ec, alg="ES256", kid="e1"), Jwks(KEY, ec))
    # An ES256 header naming the RSA key's kid finds no EC key of that id.
    refused(sign(claims(), key=ec, alg="ES256", kid="k1"), "signing key", Jwks(KEY))


def test_garbage() -> None:
    refused("not-a-jwt", "three parts")
    refused("a.b.c", "header")
    refused(sign(claims(sub="")), "subject")
