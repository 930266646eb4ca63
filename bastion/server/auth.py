"""Authentication of one connection, fed by asyncssh's auth callbacks; refuses by default.

The SSH user name names the *target*, not the person, so the person is found from what they
prove: a public key listed for a config user (service and break-glass accounts). Further methods
(OIDC device login over keyboard-interactive, key bindings, TOTP) plug in here as more sources of
an ``Identity``; nothing else in the server needs to change for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncssh

from bastion.audit import AuditLog
from bastion.config.model import Config
from bastion.identity.model import LOCAL_ISSUER, Identity


@dataclass(frozen=True)
class LocalKeyIndex:
    """Config users by the public keys they may present."""

    by_key: dict[bytes, Identity]

    @classmethod
    def from_config(cls, config: Config) -> LocalKeyIndex:
        """Index every ``[[users]]`` key."""
        by_key = {}
        for user in config.users:
            identity = Identity(issuer=LOCAL_ISSUER, subject=user.name, name=user.name,
                                groups=user.groups, method="publickey")
            for line in user.keys:
                by_key[asyncssh.import_public_key(line).public_data] = identity
        return cls(by_key)

    def lookup(self, key: asyncssh.SSHKey) -> Identity | None:
        """The identity this key belongs to, if any."""
        return self.by_key.get(key.public_data)


class ConnectionAuth:
    """Per-connection auth state: which keys were offered, who proved what, how many failures."""

    def __init__(self, config: Config, audit: AuditLog, keys: LocalKeyIndex,
                 conn_id: str, peer: str) -> None:
        self._config = config
        self._audit = audit
        self._keys = keys
        self._conn_id = conn_id
        self._peer = peer
        self.username = ""
        self.offered_keys: list[asyncssh.SSHKey] = []
        self.failures = 0
        self._candidate: tuple[Identity, str] | None = None
        self.identity: Identity | None = None
        self.key_fingerprint: str | None = None

    @property
    def attempts_exhausted(self) -> bool:
        """Whether this connection used up its authentication attempts."""
        return self.failures >= self._config.server.max_auth_attempts

    def begin(self, username: str) -> None:
        """Remember the requested user name (a target request, parsed after auth)."""
        self.username = username

    def validate_public_key(self, key: asyncssh.SSHKey) -> bool:
        """Accept a key that belongs to a config user; remember every key offered."""
        if not any(k.public_data == key.public_data for k in self.offered_keys):
            self.offered_keys.append(key)
        identity = self._keys.lookup(key)
        if identity is None:
            self.failures += 1
            return False
        # asyncssh asks once without and once with the signature; the signed one completes.
        self._candidate = (identity, key.get_fingerprint("sha256"))
        return True

    def completed(self) -> Identity:
        """Auth succeeded: fix the identity and log it."""
        assert self._candidate is not None, "auth completed without a candidate identity"
        self.identity, self.key_fingerprint = self._candidate
        self._audit.emit("login.success", conn=self._conn_id, client=self._peer,
                         user=self.identity.name, method=self.identity.method,
                         key=self.key_fingerprint, request=self.username[:256])
        return self.identity

    def failed(self, reason: str) -> None:
        """The connection closed or was refused before authenticating."""
        self._audit.emit("login.failure", conn=self._conn_id, client=self._peer,
                         request=self.username[:256], reason=reason,
                         keys=[k.get_fingerprint("sha256") for k in self.offered_keys])
