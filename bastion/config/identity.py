"""The ``[identity]`` section: OIDC provider, key-binding TTL and the TOTP policy."""

from __future__ import annotations

import os
import urllib.parse

from bastion.config.model import GROUP_NAME, TARGET_NAME, IdentityConfig, TotpPolicy
from bastion.config.reader import Table
from bastion.secret import Secret

__all__ = ["IdentityConfig", "parse_identity"]

ASYMMETRIC_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                   "ES512", "EdDSA")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parse_identity(t: Table) -> IdentityConfig:
    """Read ``[identity]``; the issuer is required once the section is present."""
    issuer = t.string("issuer", what="the issuer URL of the OIDC provider (https://...)")
    url = urllib.parse.urlsplit(issuer)
    if not url.hostname or url.query or url.fragment or not (
            url.scheme == "https" or (url.scheme == "http" and url.hostname in _LOOPBACK)):
        raise t.error("issuer", "an https:// issuer URL (http only on loopback)", issuer)
    secret: Secret[str] | None = None
    if t.has("client_secret"):
        secret = Secret(t.string("client_secret", what="the client secret as a string"))
    if t.has("client_secret_env"):
        name = t.string("client_secret_env", pattern=r"[A-Za-z_][A-Za-z0-9_]{0,127}",
                        what="an environment variable name")
        value = os.environ.get(name)
        if not value:
            raise t.error("client_secret_env", f"${name} to hold the client secret (it is unset)")
        secret = Secret(value)
    scopes = t.strings("scopes", ("openid", "email", "profile"),
                       pattern=r"[\x21\x23-\x5b\x5d-\x7e]+", what="a list of OAuth scope names")
    if "openid" not in scopes:
        raise t.error("scopes", 'a list of scopes that includes "openid"', list(scopes))
    algs = t.strings("allowed_algs", IdentityConfig.allowed_algs,
                     what=f"a list of signature algorithms from {', '.join(ASYMMETRIC_ALGS)}")
    for alg in algs:
        if alg not in ASYMMETRIC_ALGS:  # never "none", never HMAC: the key would be public
            raise t.error("allowed_algs",
                          f"asymmetric algorithms only ({', '.join(ASYMMETRIC_ALGS)})", alg)
    policy = _totp_policy(t.table("totp_required_for"))
    config = IdentityConfig(
        issuer=issuer,
        client_id=t.string("client_id", "bastion", pattern=r"[\x21-\x7e]{1,256}",
                           what="an OAuth client id"),
        client_secret=secret,
        scopes=scopes,
        groups_claim=t.string("groups_claim", "groups", pattern=r"[A-Za-z0-9_:./-]{1,128}",
                              what="a claim name"),
        binding_ttl=t.duration("binding_ttl", 12 * 3600.0, allow_zero=False),
        device_poll_timeout=t.duration("device_poll_timeout", 600.0, allow_zero=False),
        show_complete_url=t.boolean("show_complete_url", False),
        allowed_algs=algs,
        http_timeout=t.duration("http_timeout", 10.0, allow_zero=False),
        totp_required_for=policy,
        totp_inband_enrollment=t.boolean("totp_inband_enrollment", False),
    )
    t.done()
    return config


def _totp_policy(t: Table) -> TotpPolicy:
    policy = TotpPolicy(
        all=t.boolean("all", False),
        groups=t.strings("groups", (), pattern=GROUP_NAME, what="a list of group names"),
        targets=t.strings("targets", (), pattern=TARGET_NAME, what="a list of target names"),
    )
    t.done()
    return policy
