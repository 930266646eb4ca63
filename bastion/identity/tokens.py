"""ID token validation: signature against the provider's JWKS, then iss, aud/azp, exp, iat.

Fails closed: the header's algorithm must be on an asymmetric allowlist (never ``none``, never
HMAC, whose "secret" would be the provider's public key); the key is chosen by ``kid`` from the
provider's JWKS, which is refetched once when a token names a key it does not hold (rotation).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeGuard

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from bastion.errors import IdentityError
from bastion.identity.model import Identity

DEFAULT_LEEWAY = 60.0  # seconds of clock skew tolerated on exp, iat and nbf
_KTY_FOR_ALG = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}

JwksFetcher = Callable[[], Awaitable[dict[str, Any]]]


def _refuse(reason: str) -> IdentityError:
    return IdentityError(f"ID token refused: {reason}")


def _b64json(segment: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        raise _refuse(f"its {what} is not base64url JSON") from None
    if not isinstance(data, dict):
        raise _refuse(f"its {what} is not a JSON object")
    return data


class IdTokenValidator:
    """Validates ID tokens from one issuer for one client; caches the JWKS."""

    def __init__(self, issuer: str, client_id: str, fetch_jwks: JwksFetcher,
                 allowed_algs: tuple[str, ...], leeway: float = DEFAULT_LEEWAY,
                 clock: Callable[[], float] = time.time) -> None:
        bad = [a for a in allowed_algs if a[:2] not in _KTY_FOR_ALG]
        if bad:
            raise ValueError(f"not asymmetric signature algorithms: {bad}")
        self.issuer = issuer
        self.client_id = client_id
        self._fetch_jwks = fetch_jwks
        self._allowed = allowed_algs
        self._leeway = leeway
        self._clock = clock
        self._jwks: list[dict[str, Any]] | None = None

    async def _keys(self, refresh: bool) -> list[dict[str, Any]]:
        if self._jwks is None or refresh:
            doc = await self._fetch_jwks()
            keys = doc.get("keys")
            if not isinstance(keys, list):
                raise IdentityError("identity provider's JWKS has no \"keys\" list")
            self._jwks = [k for k in keys if isinstance(k, dict)]
        return self._jwks

    def _pick(self, keys: list[dict[str, Any]], kid: str | None, alg: str) -> dict[str, Any] | None:
        kty = _KTY_FOR_ALG[alg[:2]]
        fitting = [k for k in keys if k.get("kty") == kty and k.get("use", "sig") == "sig"
                   and k.get("alg", alg) == alg]
        if kid is not None:
            return next((k for k in fitting if k.get("kid") == kid), None)
        return fitting[0] if len(fitting) == 1 else None  # no kid: only an unambiguous key

    async def validate(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid ID token; raise IdentityError naming the first fault."""
        parts = token.split(".")
        if len(parts) != 3:
            raise _refuse("it is not a signed JWT (expected three parts)")
        header = _b64json(parts[0], "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._allowed:
            raise _refuse(f"algorithm {alg!r} is not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refuse("its key id is not a string")
        jwk = self._pick(await self._keys(refresh=False), kid, alg)
        if jwk is None:  # the provider may have rotated its keys: look once more
            jwk = self._pick(await self._keys(refresh=True), kid, alg)
        if jwk is None:
            raise _refuse(f"signing key {kid!r} is not in the identity provider's JWKS")
        public = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
        try:
            key: RSAKey | ECKey | OKPKey
            if public["kty"] == "RSA":
                key = RSAKey.import_key(public)
            elif public["kty"] == "EC":
                key = ECKey.import_key(public)
            else:
                key = OKPKey.import_key(public)
            claims = jwt.decode(token, key, algorithms=[alg]).claims
        except JoseError:
            raise _refuse("bad signature") from None
        except (ValueError, TypeError):
            raise _refuse("the provider's key for it cannot be used") from None
        self._check_claims(claims)
        return claims

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now = self._clock()
        if claims.get("iss") != self.issuer:
            raise _refuse(f"issuer {claims.get('iss')!r} is not {self.issuer!r}")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or self.client_id not in audiences:
            raise _refuse(f"audience {aud!r} does not include this bastion ({self.client_id})")
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != self.client_id:
            raise _refuse(f"authorized party {azp!r} is not this bastion ({self.client_id})")
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
        if not _number(exp) or not _number(iat):
            raise _refuse("exp or iat is missing (or not a finite number)")
        if now > exp + self._leeway:
            raise _refuse("it has expired")
        if iat > now + self._leeway:
            raise _refuse("it was issued in the future (check the clocks)")
        if nbf is not None and (not _number(nbf) or nbf > now + self._leeway):
            raise _refuse("it is not valid yet")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise _refuse("its subject is missing")


def _number(value: Any) -> TypeGuard[int | float]:
    # json.loads takes NaN and Infinity: exp=NaN compares false with everything (never expired)
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def identity_from_claims(claims: dict[str, Any], groups_claim: str,
                         method: str = "oidc-device") -> Identity:
    """The Identity of validated claims: (iss, sub) identifies; email, name, groups describe."""
    groups = claims.get(groups_claim, [])
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list):
        groups = []
    # An e-mail may name someone in rules, so only one the IdP verified is kept.
    email = claims.get("email") if isinstance(claims.get("email"), str) \
        and claims.get("email_verified") is True else None
    name = next((v for k in ("preferred_username", "email", "name", "sub")
                 if isinstance(v := claims.get(k), str) and v), claims["sub"])
    return Identity(issuer=claims["iss"], subject=claims["sub"], name=str(name)[:128],
                    groups=tuple(sorted({g for g in groups if isinstance(g, str) and g})),
                    email=email, method=method)
