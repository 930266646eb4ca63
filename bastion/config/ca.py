"""The ``[ca]`` section (the user CA for certificate targets) and its target keys."""

from __future__ import annotations

import ipaddress

import asyncssh

from bastion.config.model import CaConfig, CaKeyConfig
from bastion.config.reader import Table

ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,127}"
CREDENTIAL_NAME = r"[A-Za-z0-9_.-]{1,64}"
_MAX_VALIDITY = 24 * 3600.0  # certificates are meant to live minutes; a day is the ceiling
_MAX_SKEW = 3600.0


def parse_ca(t: Table) -> CaConfig:
    """The ``[ca]`` section: signing key source, validity, clock skew, an optional next CA."""
    key = _key_source(t, allow_public=False)
    next_key = _key_source(t.table("next"), allow_public=True) if t.has("next") else None
    sign_with = t.string("sign_with", "current", pattern="current|next",
                         what='"current" or "next"')
    if sign_with == "next" and (next_key is None or next_key.public_key is not None):
        raise t.error("sign_with", "\"current\" unless [ca.next] has a private key source "
                      "(key_file, key_env or key_credential)", sign_with)
    validity = t.duration("validity", 300.0, allow_zero=False)
    if validity > _MAX_VALIDITY:
        raise t.error("validity", 'a duration of at most "24h" (certificates are short-lived)',
                      t.data["validity"])
    skew = t.duration("clock_skew", 60.0)
    if skew > _MAX_SKEW:
        raise t.error("clock_skew", 'a duration of at most "1h"', t.data["clock_skew"])
    config = CaConfig(key=key, next=next_key, sign_with_next=sign_with == "next",
                      validity=validity, clock_skew=skew)
    t.done()
    return config


def _key_source(t: Table, allow_public: bool) -> CaKeyConfig:
    public_key = None
    if allow_public and t.has("public_key"):
        public_key = host_ca_line(t, "public_key", t.string("public_key"))
    source = CaKeyConfig(
        key_file=t.filepath("key_file", None),
        key_env=t.string("key_env", None, pattern=ENV_NAME, what="an environment variable name"),
        key_credential=t.string("key_credential", None, pattern=CREDENTIAL_NAME,
                                what="a systemd credential name"),
        public_key=public_key,
    )
    given = [v for v in (source.key_file, source.key_env, source.key_credential, public_key)
             if v is not None]
    keys = "key_file, key_env, key_credential" + (" or public_key" if allow_public else "")
    if not allow_public and "public_key" in t.data:  # a common mistake, said plainly
        raise t.error("public_key", "no public_key here: the signing CA needs its private key "
                      "(key_file, key_env or key_credential)")
    if len(given) != 1:
        raise t.error("key_file", f"exactly one of {keys}")
    return source


def host_ca_line(t: Table, key: str, line: str) -> str:
    """A CA public key line (``ssh-ed25519 AAAA... comment``), checked."""
    try:
        asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError):
        raise t.error(key, "an OpenSSH public key line of a CA (\"ssh-ed25519 AAAA...\")",
                      line) from None
    return line


def source_addresses(t: Table) -> tuple[str, ...]:
    """``source_addresses``: addresses or networks (CIDR) a certificate may be used from."""
    values: tuple[str, ...] = t.strings("source_addresses", ())
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise t.error("source_addresses", "a list of IP addresses or networks "
                          "(\"192.0.2.10\", \"10.0.0.0/8\")", value) from None
    return values
