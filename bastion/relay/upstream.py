"""The onward SSH connection to a target: pinned host key, vaulted credential, nothing else.

``dial`` takes only an ``Authorization`` (made by policy) and the credential for it. The target's
host key must be one of the keys pinned in the config or its known_hosts file; anything else ends
the attempt before a credential is offered.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from asyncssh.encryption import get_encryption_algs

from bastion.config.model import Target
from bastion.credentials.vault import Credential
from bastion.errors import ConfigError, HostKeyMismatch, UpstreamError
from bastion.policy.access import Authorization

log = logging.getLogger("bastion.relay")

# The client picks the cipher, so the bastion chooses for its own connections to targets: AES-GCM
# first. In asyncssh one AES-GCM packet is one AEAD call (AES-NI), about a fifth of the cost of
# ChaCha20-Poly1305 (four cipher objects per packet), and every relayed byte is decrypted here.
# Only ciphers of the server's hardened list (bastion.server.hardening.CIPHERS).
_UPSTREAM_CIPHERS = ("aes256-gcm@openssh.com", "aes128-gcm@openssh.com",
                     "chacha20-poly1305@openssh.com", "aes256-ctr", "aes192-ctr", "aes128-ctr")


def upstream_ciphers() -> list[str]:
    """The ciphers offered to targets, fastest first, as far as this asyncssh supports them."""
    have = {name.decode() for name in get_encryption_algs()}
    return [name for name in _UPSTREAM_CIPHERS if name in have]


def pinned_host_keys(target: Target) -> list[asyncssh.SSHKey]:
    """The host keys a target may present: config lines plus matching known_hosts entries."""
    keys = [asyncssh.import_public_key(line) for line in target.host_keys]
    if target.known_hosts is not None:
        try:
            known = asyncssh.read_known_hosts(str(target.known_hosts))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read known_hosts {target.known_hosts}: {exc}") from None
        host_keys, _, _, _, _, _, _ = known.match(target.host, target.host, target.port)
        keys.extend(host_keys)
    return keys


@dataclass
class _PinnedHostKeyClient(asyncssh.SSHClient):
    """Called by asyncssh only for a host key that is not pinned: remember it and say no."""

    presented: list[str] = field(default_factory=list)

    def validate_host_public_key(self, host: str, addr: str, port: int,
                                 key: asyncssh.SSHKey) -> bool:
        self.presented.append(key.get_fingerprint("sha256"))
        return False

    def validate_host_ca_key(self, host: str, addr: str, port: int,
                             key: asyncssh.SSHKey) -> bool:
        return False  # certificates are not pinned keys


@dataclass
class Upstream:
    """An open connection to a target and the fingerprint of the host key it proved."""

    conn: asyncssh.SSHClientConnection
    host_key_fingerprint: str
    address: str

    def close(self) -> None:
        """Close the connection (channels on it end)."""
        self.conn.close()


def _client_auth(credential: Credential) -> dict[str, Any]:
    if credential.kind == "private_key":
        try:
            key = asyncssh.import_private_key(credential.secret.reveal())
        except (asyncssh.KeyImportError, ValueError):
            raise UpstreamError("the vaulted key for this target cannot be read") from None
        return {"client_keys": [key], "password": None, "preferred_auth": "publickey"}
    return {"client_keys": None, "password": credential.secret.reveal(),
            "preferred_auth": "password,keyboard-interactive"}


async def dial(authorization: Authorization, credential: Credential,
               keepalive_interval: float = 30.0) -> Upstream:
    """Connect to the authorized target as the authorized login, or raise UpstreamError."""
    if not isinstance(authorization, Authorization) or not authorization.is_issued():
        raise TypeError("dial needs an Authorization issued by policy")
    target = authorization.target
    pinned = pinned_host_keys(target)
    if not pinned:
        raise HostKeyMismatch(f"target {target.name} has no pinned host key; refusing to connect")
    client = _PinnedHostKeyClient()
    try:
        conn = await asyncio.wait_for(asyncssh.connect(
            target.host, target.port, username=authorization.login,
            # Exactly the pinned keys are trusted; never None, which would trust any key.
            client_factory=lambda: client, known_hosts=(pinned, [], []),
            agent_path=None, agent_forwarding=False, x11_forwarding=False,
            config=None, ignore_encrypted=True, kbdint_auth=False,
            keepalive_interval=keepalive_interval, encoding=None,
            encryption_algs=upstream_ciphers(),
            **_client_auth(credential)), timeout=target.connect_timeout)
    except asyncssh.HostKeyNotVerifiable:
        seen = client.presented[-1] if client.presented else "none"
        raise HostKeyMismatch(
            f"the host key of target {target.name} does not match its pinned key "
            f"(presented {seen}); refusing to connect") from None
    except asyncssh.PermissionDenied:
        raise UpstreamError(f"target {target.name} refused the vaulted credential for "
                            f"{authorization.login}") from None
    except TimeoutError:
        raise UpstreamError(f"target {target.name} did not answer within "
                            f"{target.connect_timeout:.0f}s") from None
    except (OSError, asyncssh.Error) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise UpstreamError(f"cannot connect to target {target.name}: {reason}") from None
    server_key = conn.get_server_host_key()
    fingerprint = server_key.get_fingerprint("sha256") if server_key else ""
    peer = conn.get_extra_info("peername") or (target.host, target.port)
    return Upstream(conn=conn, host_key_fingerprint=fingerprint, address=f"{peer[0]}:{peer[1]}")

