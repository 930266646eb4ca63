"""The onward SSH connection to a target: trusted host key, then a vaulted credential or a
freshly minted certificate, nothing else.

``dial`` takes only an ``Authorization`` (made by policy) and the credential for it: a vaulted
key or password, or a ``CertificateRequest`` (the bastion's CA signs a certificate for this one
connection at authentication time, when the address the target sees is known). The target's host
key must be one of the keys pinned in the config or its known_hosts file, or carry a host
certificate from one of its trusted host CAs; anything else ends the attempt before a credential
is offered.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from asyncssh.encryption import get_encryption_algs
from asyncssh.public_key import KeyPairListArg

from bastion.config.model import Target
from bastion.credentials.ca import CertificateAuthority, IssuedCertificate
from bastion.credentials.vault import Credential
from bastion.errors import CertificateRefused, ConfigError, HostKeyMismatch, UpstreamError
from bastion.policy.access import Authorization
from bastion.relay import wire

log = logging.getLogger("bastion.relay")

# The client picks the cipher, so the bastion chooses for its own connections to targets: AES-GCM
# first. In asyncssh one AES-GCM packet is one AEAD call (AES-NI), about a fifth of the cost of
# ChaCha20-Poly1305 (four cipher objects per packet), and every relayed byte is decrypted here.
# Only ciphers of the hardened list (bastion.config.model.SSH_CIPHERS).
_UPSTREAM_CIPHERS = ("aes256-gcm@openssh.com", "aes128-gcm@openssh.com",
                     "chacha20-poly1305@openssh.com", "aes256-ctr", "aes192-ctr", "aes128-ctr")


def upstream_ciphers() -> list[str]:
    """The ciphers offered to targets, fastest first, as far as this asyncssh supports them."""
    have = {name.decode() for name in get_encryption_algs()}
    return [name for name in _UPSTREAM_CIPHERS if name in have]


def trusted_host_keys(target: Target) -> tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey]]:
    """(pinned host keys, trusted host CA keys) of a target: its config lines plus the
    matching entries of its known_hosts file (``@cert-authority`` lines are CAs)."""
    keys = [asyncssh.import_public_key(line) for line in target.host_keys]
    cas = [asyncssh.import_public_key(line) for line in target.host_cas]
    if target.known_hosts is not None:
        try:
            known = asyncssh.read_known_hosts(str(target.known_hosts))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read known_hosts {target.known_hosts}: {exc}") from None
        host_keys, ca_keys, _, _, _, _, _ = known.match(target.host, target.host, target.port)
        keys.extend(host_keys)
        cas.extend(ca_keys)
    return keys, cas


def host_key_mismatch(target: Target, presented: str) -> HostKeyMismatch:
    """The one refusal for a host key the target may not present (a wrong pin or a host
    certificate from a CA it does not trust)."""
    return HostKeyMismatch(f"the host key of target {target.name} does not match its pinned key "
                           f"(presented {presented}); refusing to connect")


@dataclass(frozen=True)
class CertificateRequest:
    """The credential of a certificate target: sign one for this connection with ``authority``.

    The key id names the person and the session; a pty is permitted only if a channel of the
    user's connection has a terminal when it is dialled; the source address is the target's
    ``source_addresses`` or else the bastion's own address on the connection.
    """

    authority: CertificateAuthority
    key_id: str
    permit_pty: bool
    permit_port_forwarding: bool = False  # a [[forwarding]] rule opens -L through this target


@dataclass
class _PinnedHostKeyClient(asyncssh.SSHClient):
    """Called by asyncssh only for a host key that is neither pinned nor certified by a trusted
    host CA: remember what was presented and say no."""

    presented: list[str] = field(default_factory=list)

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        wire.install(conn)  # one write per loop pass, reads in pieces, no padding packets

    def validate_host_public_key(self, host: str, addr: str, port: int,
                                 key: asyncssh.SSHKey) -> bool:
        self.presented.append(key.get_fingerprint("sha256"))
        return False

    def validate_host_ca_key(self, host: str, addr: str, port: int,
                             key: asyncssh.SSHKey) -> bool:
        self.presented.append(f"a host certificate from CA {key.get_fingerprint('sha256')}")
        return False  # only the target's configured host CAs are trusted


@dataclass
class _CertificateClient(_PinnedHostKeyClient):
    """Also answers public-key authentication, once, with a certificate minted on the spot."""

    request: CertificateRequest | None = None
    login: str = ""
    source_addresses: tuple[str, ...] = ()
    issued: IssuedCertificate | None = None
    local_address: str | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        super().connection_made(conn)
        sockname = conn.get_extra_info("sockname")
        # The address the target sees us come from (barring NAT); an IPv6 zone ("%eth0") is
        # no part of it.
        self.local_address = str(sockname[0]).partition("%")[0] if sockname else None

    def public_key_auth_requested(self) -> KeyPairListArg | None:
        if self.request is None or self.issued is not None:
            return None  # one certificate per connection; a refusal is final
        addresses = self.source_addresses or (
            (self.local_address,) if self.local_address else ())
        minted = self.request.authority.issue(
            self.login, self.request.key_id, addresses, self.request.permit_pty,
            permit_port_forwarding=self.request.permit_port_forwarding)
        self.issued = minted.issued
        # The key pair lives only in this list, which asyncssh drops after signing with it.
        return [(minted.private_key, minted.certificate)]


@dataclass
class Upstream:
    """An open connection to a target, the host key it proved and the certificate used."""

    conn: asyncssh.SSHClientConnection
    host_key_fingerprint: str
    address: str
    certificate: IssuedCertificate | None = None

    def close(self) -> None:
        """Close the connection (channels on it end)."""
        self.conn.close()


def _client_auth(credential: Credential | CertificateRequest) -> dict[str, Any]:
    if isinstance(credential, CertificateRequest):
        # client_keys None: no key is loaded from anywhere; the client class mints one.
        return {"client_keys": None, "password": None, "preferred_auth": "publickey"}
    if credential.kind == "private_key":
        try:
            key = asyncssh.import_private_key(credential.secret.reveal())
        except (asyncssh.KeyImportError, ValueError):
            raise UpstreamError("the vaulted key for this target cannot be read") from None
        return {"client_keys": [key], "password": None, "preferred_auth": "publickey"}
    return {"client_keys": None, "password": credential.secret.reveal(),
            "preferred_auth": "password,keyboard-interactive"}


async def dial(authorization: Authorization, credential: Credential | CertificateRequest,
               keepalive_interval: float = 30.0) -> Upstream:
    """Connect to the authorized target as the authorized login, or raise UpstreamError."""
    if not isinstance(authorization, Authorization) or not authorization.is_issued():
        raise TypeError("dial needs an Authorization issued by policy")
    target = authorization.target
    pinned, host_cas = trusted_host_keys(target)
    if not pinned and not host_cas:
        raise HostKeyMismatch(f"target {target.name} has no pinned host key; refusing to connect")
    client: _PinnedHostKeyClient
    if isinstance(credential, CertificateRequest):
        client = _CertificateClient(request=credential, login=authorization.login,
                                    source_addresses=target.source_addresses)
        what = "the bastion's certificate"
    else:
        client = _PinnedHostKeyClient()
        what = "the vaulted credential"
    try:
        conn = await asyncio.wait_for(asyncssh.connect(
            target.host, target.port, username=authorization.login,
            # Exactly the pinned keys and host CAs are trusted; never None, which would trust
            # any key.
            client_factory=lambda: client, known_hosts=(pinned, host_cas, []),
            # With host CAs asyncssh would offer only certificate types, and a target with a
            # plain key would hang up ("no matching host key type"); offering plain types too
            # lets it show its key, refused below with the mismatch message instead.
            server_host_key_algs="default" if host_cas else (),
            agent_path=None, agent_forwarding=False, x11_forwarding=False,
            config=None, ignore_encrypted=True, kbdint_auth=False,
            keepalive_interval=keepalive_interval, encoding=None,
            encryption_algs=upstream_ciphers(),
            **_client_auth(credential)), timeout=target.connect_timeout)
    except asyncssh.HostKeyNotVerifiable as exc:
        # Nothing recorded: a host certificate from a trusted CA that is not valid here
        # (expired, or not for this host name); asyncssh's reason says which.
        raise host_key_mismatch(target, client.presented[-1] if client.presented else
                                f"an invalid host certificate: {exc.reason}") from None
    except asyncssh.PermissionDenied:
        message = f"target {target.name} refused {what} for {authorization.login}"
        if isinstance(client, _CertificateClient) and client.issued is not None:
            raise CertificateRefused(message, client.issued.record()) from None
        raise UpstreamError(message) from None
    except TimeoutError:
        raise UpstreamError(f"target {target.name} did not answer within "
                            f"{target.connect_timeout:.0f}s") from None
    except (OSError, asyncssh.Error) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise UpstreamError(f"cannot connect to target {target.name}: {reason}") from None
    server_key = conn.get_server_host_key()
    fingerprint = server_key.get_fingerprint("sha256") if server_key else ""
    peer = conn.get_extra_info("peername") or (target.host, target.port)
    issued = client.issued if isinstance(client, _CertificateClient) else None
    return Upstream(conn=conn, host_key_fingerprint=fingerprint, address=f"{peer[0]}:{peer[1]}",
                    certificate=issued)
