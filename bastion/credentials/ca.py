"""The bastion's user certificate authority: short-lived SSH certificates, one per connection.

A certificate target trusts the CA's public key (sshd ``TrustedUserCAKeys``) instead of any key
of the bastion's. For each connection the bastion makes an Ed25519 key pair in memory and signs
a certificate for exactly one login, valid for minutes, usable only from the bastion's address,
whose key id names the person and the recorded session, so the target's own log says who came
in and which recording to look at. Neither the key pair nor the certificate is ever written.

The CA key itself is an OpenSSH private key read from a file, an environment variable or a
systemd credential, like the vault key.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from bastion.config.model import CaConfig, CaKeyConfig
from bastion.credentials.keysource import KeySourceSpec, read_key_source
from bastion.errors import CertificateAuthorityError
from bastion.fsutil import write_new_private

_MAX_KEY_TEXT = 16 * 1024  # an OpenSSH Ed25519 private key is about 400 bytes
_MAX_KEY_ID = 256
CA_COMMENT = "bastion user CA"


@dataclass(frozen=True)
class IssuedCertificate:
    """What is recorded of a certificate (never the key): serial, key id and its limits."""

    serial: int
    key_id: str
    login: str
    valid_after: int
    valid_before: int
    source_addresses: tuple[str, ...]
    permit_pty: bool
    ca_fingerprint: str

    def record(self) -> dict[str, object]:
        """The certificate as session.json, manifests and audit events hold it. The serial is
        a decimal string, as sshd logs it: 64 bits do not fit a JSON number that every reader
        (and the manifest's canonical form) takes exactly."""
        return {"serial": str(self.serial), "key_id": self.key_id}


@dataclass(frozen=True)
class UserCertificate:
    """An ephemeral key pair (in memory only) and its certificate, ready for SSH auth."""

    private_key: asyncssh.SSHKey
    certificate: asyncssh.SSHCertificate
    issued: IssuedCertificate

    def __repr__(self) -> str:
        return f"UserCertificate(serial={self.issued.serial}, key_id={self.issued.key_id!r})"


def certificate_key_id(identity_name: str, issuer: str | None, session_id: str) -> str:
    """``<name>@<issuer or local> session <session id>``, printable ASCII only: it is written
    into the target's log, so nothing a user or IdP chose may carry control characters."""
    text = f"{identity_name}@{issuer or 'local'} session {session_id}"
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean if len(clean) <= _MAX_KEY_ID else clean[: _MAX_KEY_ID - 3] + "..."


class CertificateAuthority:
    """Signs user certificates with one CA key; the validity and skew come from ``[ca]``."""

    def __init__(self, key: asyncssh.SSHKey, validity: float = 300.0,
                 clock_skew: float = 60.0) -> None:
        self._key = key
        self.validity = validity
        self.clock_skew = clock_skew
        self.fingerprint = key.get_fingerprint("sha256")

    def __repr__(self) -> str:
        return f"CertificateAuthority({self.fingerprint})"

    @classmethod
    def from_config(cls, config: CaConfig,
                    environ: Mapping[str, str] = os.environ) -> CertificateAuthority:
        """The CA that signs: ``[ca]``, or ``[ca.next]`` with ``sign_with = "next"``."""
        source, section = config.key, "ca"
        if config.sign_with_next and config.next is not None:
            source, section = config.next, "ca.next"
        return cls(load_ca_key(source, section, environ), config.validity, config.clock_skew)

    def public_line(self) -> str:
        """The CA's public key line, as a target's TrustedUserCAKeys file holds it."""
        return public_line(self._key)

    def issue(self, login: str, key_id: str, source_addresses: Sequence[str],
              permit_pty: bool, now: float | None = None, *,
              permit_port_forwarding: bool = False) -> UserCertificate:
        """A new key pair and a certificate for ``login`` only, usable from
        ``source_addresses`` only, with a pty and port forwarding only if asked (never agent
        or X11 forwarding)."""
        if not source_addresses:
            raise CertificateAuthorityError("a certificate needs the address it is used from")
        now = time.time() if now is None else now
        valid_after = max(0, int(now - self.clock_skew))
        valid_before = int(now + self.validity)
        user_key = asyncssh.generate_private_key("ssh-ed25519")
        serial = secrets.randbits(64)
        try:
            cert = self._key.generate_user_certificate(
                user_key, key_id, serial=serial, principals=[login],
                valid_after=valid_after, valid_before=valid_before,
                source_address=list(source_addresses),
                permit_x11_forwarding=False, permit_agent_forwarding=False,
                permit_port_forwarding=permit_port_forwarding, permit_pty=permit_pty,
                permit_user_rc=False, comment=key_id)
        except (ValueError, asyncssh.KeyGenerationError) as exc:
            raise CertificateAuthorityError(f"cannot issue a certificate: {exc}") from None
        issued = IssuedCertificate(
            serial=serial, key_id=key_id, login=login, valid_after=valid_after,
            valid_before=valid_before, source_addresses=tuple(source_addresses),
            permit_pty=permit_pty, ca_fingerprint=self.fingerprint)
        return UserCertificate(user_key, cert, issued)


def public_line(key: asyncssh.SSHKey) -> str:
    """``ssh-ed25519 AAAA... comment`` for a key."""
    return key.export_public_key().decode("ascii").strip()


def load_ca_key(source: CaKeyConfig, section: str = "ca",
                environ: Mapping[str, str] = os.environ) -> asyncssh.SSHKey:
    """The CA's private key from its file, variable or systemd credential."""
    spec = KeySourceSpec(section, "CA key", source.key_file, source.key_env,
                         source.key_credential)
    data, what = read_key_source(spec, CertificateAuthorityError, _MAX_KEY_TEXT, environ)
    expected = (f"{what}: expected an unencrypted OpenSSH private key "
                "(make one with `bastion keygen ca --out FILE`)")
    if len(data) > _MAX_KEY_TEXT:
        raise CertificateAuthorityError(expected)
    try:
        return asyncssh.import_private_key(data)
    except (asyncssh.KeyImportError, ValueError, TypeError):
        raise CertificateAuthorityError(expected) from None


def trusted_ca_lines(config: CaConfig,
                     environ: Mapping[str, str] = os.environ) -> list[tuple[str, str]]:
    """(role, public key line) of every configured CA: what targets put in TrustedUserCAKeys."""
    lines = [("current", public_line(load_ca_key(config.key, "ca", environ)))]
    if config.next is not None:
        if config.next.public_key is not None:
            line = config.next.public_key
        else:
            line = public_line(load_ca_key(config.next, "ca.next", environ))
        lines.append(("next", line))
    return lines


def generate_ca_key(path: Path) -> str:
    """Write a new Ed25519 CA key to ``path`` (0600, never overwriting); return its public
    line. A ``.pub`` beside it holds the public line too."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=CA_COMMENT)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_new_private(path, key.export_private_key())
    except FileExistsError:
        raise CertificateAuthorityError(f"{path} exists already; not overwriting a CA key") \
            from None
    except OSError as exc:
        raise CertificateAuthorityError(f"cannot write CA key {path}: {exc.strerror}") from None
    line = public_line(key)
    pub = Path(f"{path}.pub")
    try:
        pub.write_text(line + "\n", encoding="ascii")
    except OSError as exc:
        raise CertificateAuthorityError(f"cannot write {pub}: {exc.strerror}") from None
    return line
