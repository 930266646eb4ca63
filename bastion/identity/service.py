"""What the server asks of identity: bound keys, device logins, TOTP; one instance per server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bastion.audit import AuditLog
from bastion.config.model import Config
from bastion.errors import BastionError, IdentityError
from bastion.identity.bindings import KeyBinding, KeyBindings
from bastion.identity.device import wait_for_id_token
from bastion.identity.model import Identity
from bastion.identity.oidc import DeviceAuthorization, OidcProvider
from bastion.identity.tokens import IdTokenValidator, identity_from_claims
from bastion.identity.totp import TotpStore, totp_required
from bastion.secret import Secret
from bastion.state.backends import open_state
from bastion.state.db import StateDB

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProvenKey:
    """A public key whose signature the client made during this connection."""

    fingerprint: str
    public_key: str  # OpenSSH public key line


class IdentityService:
    """Key bindings, OIDC device login and TOTP, shared by all connections of one server."""

    def __init__(self, config: Config, audit: AuditLog, db: StateDB,
                 vault_key: Secret[bytes],
                 reload_key: Callable[[], Secret[bytes] | None] | None = None) -> None:
        self.config = config
        self.settings = config.identity
        self.audit = audit
        self.db = db
        self.bindings = KeyBindings(db)
        self.totp = TotpStore(db, vault_key, reload_key=reload_key)
        self.provider: OidcProvider | None = None
        self.validator: IdTokenValidator | None = None
        if self.settings.issuer is not None:
            self.provider = OidcProvider(self.settings)
            self.validator = IdTokenValidator(self.settings.issuer, self.settings.client_id,
                                              self.provider.jwks, self.settings.allowed_algs)

    @classmethod
    def open(cls, config: Config, audit: AuditLog, vault_key: Secret[bytes],
             reload_key: Callable[[], Secret[bytes] | None] | None = None) -> IdentityService:
        """Open the state database the config names (checking its schema)."""
        return cls(config, audit, open_state(config), vault_key, reload_key)

    @property
    def device_login_enabled(self) -> bool:
        """Whether unknown keys may sign in through the OIDC device flow."""
        return self.provider is not None

    # -- bindings ---------------------------------------------------------------------------
    def binding_for(self, fingerprint: str) -> KeyBinding | None:
        """The live binding of a key (read fresh: a revocation counts from the next attempt)."""
        return self.bindings.lookup(fingerprint)

    def binding_used(self, binding: KeyBinding, conn: str, client: str) -> None:
        """Note that a connection signed in with a bound key."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (the CLI, a test): touch it here
            self.bindings.touch(binding.fingerprint)
        else:  # a worker thread: the server's event loop does not wait on the database
            loop.run_in_executor(None, self._touch, binding.fingerprint)
        self.audit.emit("binding.used", conn=conn, client=client, **binding.audit_fields())

    def _touch(self, fingerprint: str) -> None:
        try:
            self.bindings.touch(fingerprint)
        except BastionError as exc:  # last_used is information only
            log.warning("cannot note the use of key binding %s: %s", fingerprint, exc)

    def bind(self, identity: Identity, keys: list[ProvenKey], conn: str, client: str) -> None:
        """Bind the keys a device login proved to its identity for the configured TTL."""
        for key in keys:
            binding = self.bindings.bind(key.fingerprint, key.public_key, identity,
                                         self.settings.binding_ttl, client)
            self.audit.emit("binding.created", conn=conn, client=client,
                            groups=list(identity.groups), **binding.audit_fields())

    # -- device login -----------------------------------------------------------------------
    async def start_device_login(self) -> DeviceAuthorization:
        """Ask the provider for a device code."""
        if self.provider is None:
            raise IdentityError("device login is not configured on this bastion")
        return await self.provider.start_device_authorization()

    async def finish_device_login(self, device: DeviceAuthorization) -> Identity:
        """Wait for the person to sign in, then validate the ID token into an Identity."""
        assert self.provider is not None and self.validator is not None
        token = await wait_for_id_token(self.provider, device,
                                        timeout=self.settings.device_poll_timeout)
        claims = await self.validator.validate(token.reveal())
        return identity_from_claims(claims, self.settings.groups_claim)

    # -- TOTP -------------------------------------------------------------------------------
    def totp_required(self, identity: Identity, target: str | None) -> bool:
        """Whether policy asks this identity (for this target) for a TOTP code."""
        return totp_required(self.settings.totp_required_for, identity, target)

    def close(self) -> None:
        """Close the state database."""
        self.db.close()
