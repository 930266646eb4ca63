"""The OIDC provider as bastion uses it: discovery, the device authorization grant, the JWKS."""

from __future__ import annotations

import math
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from bastion.config.model import IdentityConfig
from bastion.errors import IdentityError
from bastion.identity import http
from bastion.secret import Secret

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_METADATA_TTL = 3600.0  # re-read discovery hourly; a failed read is retried on the next login


@dataclass(frozen=True)
class ProviderMetadata:
    """The endpoints bastion needs from ``/.well-known/openid-configuration``."""

    issuer: str
    device_authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


@dataclass(frozen=True)
class DeviceAuthorization:
    """A device code the provider issued (RFC 8628 3.2); ``device_code`` stays secret."""

    device_code: Secret[str]
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


@dataclass(frozen=True)
class TokenAnswer:
    """One answer of the token endpoint: tokens, or an RFC 8628 error code."""

    id_token: Secret[str] | None
    error: str | None
    description: str | None = None


def _check_url(name: str, value: Any, issuer: str) -> str:
    if not isinstance(value, str):
        raise IdentityError(f"identity provider {issuer} has no {name} in its discovery document")
    parts = urllib.parse.urlsplit(value)
    issuer_scheme = urllib.parse.urlsplit(issuer).scheme
    if parts.scheme not in ("https", issuer_scheme) or not parts.hostname:
        raise IdentityError(f"identity provider {issuer}: {name} {value!r} is not a usable URL")
    return value


def parse_metadata(issuer: str, doc: dict[str, Any]) -> ProviderMetadata:
    """Check a discovery document against the configured issuer (which must match exactly)."""
    if doc.get("issuer") != issuer:
        raise IdentityError(f"identity provider discovery names issuer {doc.get('issuer')!r}, "
                            f"not the configured {issuer!r}")
    if "device_authorization_endpoint" not in doc:
        raise IdentityError(f"identity provider {issuer} does not offer the device flow")
    return ProviderMetadata(
        issuer=issuer,
        device_authorization_endpoint=_check_url(
            "device_authorization_endpoint", doc.get("device_authorization_endpoint"), issuer),
        token_endpoint=_check_url("token_endpoint", doc.get("token_endpoint"), issuer),
        jwks_uri=_check_url("jwks_uri", doc.get("jwks_uri"), issuer),
    )


class OidcProvider:
    """Talks to the configured provider as the bastion's OAuth client."""

    def __init__(self, config: IdentityConfig) -> None:
        assert config.issuer is not None, "OidcProvider needs identity.issuer"
        self.config = config
        self.issuer: str = config.issuer
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0

    async def metadata(self) -> ProviderMetadata:
        """The discovery document, cached for an hour."""
        now = time.monotonic()
        if self._metadata is None or now - self._metadata_at > _METADATA_TTL:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = await http.get_json(url, self.config.http_timeout)
            self._metadata = parse_metadata(self.issuer, doc)
            self._metadata_at = now
        return self._metadata

    async def jwks(self) -> dict[str, Any]:
        """The provider's current JSON Web Key Set."""
        meta = await self.metadata()
        return await http.get_json(meta.jwks_uri, self.config.http_timeout)

    async def start_device_authorization(self) -> DeviceAuthorization:
        """Ask for a device code and user code (RFC 8628 3.1)."""
        meta = await self.metadata()
        status, body = await http.post_form(
            meta.device_authorization_endpoint, {"scope": " ".join(self.config.scopes)},
            self.config.http_timeout, self.config.client_id, self.config.client_secret)
        if status != 200:
            raise IdentityError("identity provider refused the device login request: "
                                f"{_error_text(body, status)}")
        try:
            device_code = body["device_code"]
            user_code = body["user_code"]
            uri = body.get("verification_uri") or body["verification_url"]
            expires_in = float(body["expires_in"])
            interval = float(body.get("interval", 5))
        except (KeyError, TypeError, ValueError):
            raise IdentityError("identity provider sent an incomplete device authorization "
                                "answer") from None
        complete = body.get("verification_uri_complete")
        # json.loads takes NaN and Infinity; NaN passes "<= 0" and would leave no deadline.
        if not all(isinstance(v, str) for v in (device_code, user_code, uri)) \
                or not (math.isfinite(expires_in) and expires_in > 0) \
                or not (math.isfinite(interval) and interval > 0):
            raise IdentityError("identity provider sent a malformed device authorization answer")
        return DeviceAuthorization(
            device_code=Secret(device_code), user_code=user_code, verification_uri=uri,
            verification_uri_complete=complete if isinstance(complete, str) else None,
            expires_in=expires_in, interval=max(1.0, min(interval, 60.0)))

    async def poll_token(self, device: DeviceAuthorization) -> TokenAnswer:
        """Ask the token endpoint once whether the device login is finished (RFC 8628 3.4)."""
        meta = await self.metadata()
        status, body = await http.post_form(
            meta.token_endpoint,
            {"grant_type": DEVICE_GRANT, "device_code": device.device_code.reveal()},
            self.config.http_timeout, self.config.client_id, self.config.client_secret)
        if status == 200:
            token = body.get("id_token")
            if not isinstance(token, str):
                raise IdentityError("identity provider issued tokens without an ID token "
                                    "(is the \"openid\" scope allowed for this client?)")
            return TokenAnswer(id_token=Secret(token), error=None)
        error = body.get("error")
        description = body.get("error_description")
        return TokenAnswer(
            id_token=None, error=error if isinstance(error, str) else f"http_{status}",
            description=description if isinstance(description, str) else None)


def _error_text(body: dict[str, Any], status: int) -> str:
    error = body.get("error") if isinstance(body.get("error"), str) else f"HTTP {status}"
    desc = body.get("error_description")
    text = f"{error} ({desc})" if isinstance(desc, str) and desc else str(error)
    return text[:200].replace("\n", " ")
