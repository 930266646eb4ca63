"""Authentication of one connection, fed by asyncssh's auth callbacks; refuses by default.

The SSH user name names the *target*, not the person, so the person is found from what they
prove: a public key listed for a config user (service and break-glass accounts). Further methods
(OIDC device login over keyboard-interactive, key bindings, TOTP) plug in here as more sources of
an ``Identity``; nothing else in the server needs to change for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncssh

from bastion.audit import AuditLog
from bastion.config.model import Config
from bastion.errors import AuthenticationError, BastionError
from bastion.identity.bindings import KeyBinding
from bastion.identity.login import Challenge, LoginFlow
from bastion.identity.model import LOCAL_ISSUER, Identity
from bastion.identity.service import IdentityService, ProvenKey
from bastion.policy.access import parse_username

log = logging.getLogger(__name__)

_MAX_PROVEN_KEYS = 16  # keys one connection may have bound; more count as failed attempts
MAX_OFFERED_KEYS = 32  # keys one connection may offer (queried or signed); more end it

# What asyncssh accepts from a keyboard-interactive callback: a challenge tuple or a verdict.
KbdIntAnswer = tuple[str, str, str, tuple[tuple[str, bool], ...]] | bool


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
                 conn_id: str, peer: str, identity: IdentityService | None = None) -> None:
        self._config = config
        self._audit = audit
        self._keys = keys
        self._conn_id = conn_id
        self._peer = peer
        self.username = ""
        self._offered: dict[bytes, asyncssh.SSHKey] = {}  # by public data: O(1) lookups
        self._failure_reported = False
        self.failures = 0
        self._candidate: tuple[Identity, str] | None = None
        self.identity: Identity | None = None
        self.key_fingerprint: str | None = None
        # Fingerprints of the key bindings this connection's access rests on (a bound key it
        # signed with, or the keys its device login bound): revoking one ends the connection.
        self.bound_keys: tuple[str, ...] = ()
        # Device login, key bindings and TOTP (bastion.identity); None: config keys only.
        self._ids = identity
        self._proven: list[ProvenKey] = []  # unknown keys the client signed with: bound later
        self._pending: tuple[Identity, str, KeyBinding | None] | None = None  # awaits TOTP
        self._binding: KeyBinding | None = None  # the binding the candidate came from
        self._flow: LoginFlow | None = None
        # Bindings of this connection's keys, looked up off the event loop by lookup_binding
        # (a database round trip with PostgreSQL) before the checks below read them.
        self._looked_up: dict[str, KeyBinding | None] = {}

    @property
    def offered_keys(self) -> list[asyncssh.SSHKey]:
        """The distinct keys offered so far (at most MAX_OFFERED_KEYS)."""
        return list(self._offered.values())

    def has_offered(self, key: asyncssh.SSHKey) -> bool:
        """Whether ``key`` was offered on this connection before."""
        return key.public_data in self._offered

    @property
    def keys_exhausted(self) -> bool:
        """Whether this connection offered as many keys as one may."""
        return len(self._offered) >= MAX_OFFERED_KEYS

    @property
    def attempts_exhausted(self) -> bool:
        """Whether this connection used up its authentication attempts."""
        return self.failures >= self._config.server.max_auth_attempts

    def begin(self, username: str) -> None:
        """Remember the requested user name (a target request, parsed after auth)."""
        self.username = username

    def validate_public_key(self, key: asyncssh.SSHKey) -> bool:
        """Accept a key of a config user or a bound key; remember every key offered.

        With device login on, unknown keys are accepted too, but only so that the client signs
        with them: ``signature_checked`` then refuses them, and they are bound to the person
        once their device login succeeds. A key is never bound on its holder's word alone.
        """
        if key.public_data not in self._offered:
            if len(self._offered) >= MAX_OFFERED_KEYS:
                return False  # the caller checks keys_exhausted and disconnects
            self._offered[key.public_data] = key
        if self._known(key) is not None:
            return True  # asyncssh asks once without and once with the signature
        if self._ids is not None and self._ids.device_login_enabled:
            return True
        self.failures += 1
        return False

    async def lookup_binding(self, key: asyncssh.SSHKey) -> None:
        """Look up a key's binding in a worker thread, once per key and connection, so that
        validate_public_key and signature_checked read it without waiting on the database."""
        if self._ids is None or self._keys.lookup(key) is not None:
            return
        fingerprint = key.get_fingerprint("sha256")
        if fingerprint not in self._looked_up and len(self._looked_up) < MAX_OFFERED_KEYS:
            try:
                binding = await asyncio.to_thread(self._ids.binding_for, fingerprint)
            except BastionError as exc:
                # The state database is unreachable: the key counts as not bound (fail closed:
                # at most a device login is offered, and binding its key then fails too).
                log.warning("[conn=%s] key binding lookup: %s", self._conn_id, exc)
                binding = None
            self._looked_up[fingerprint] = binding

    def _known(self, key: asyncssh.SSHKey) -> tuple[Identity, KeyBinding | None] | None:
        identity = self._keys.lookup(key)
        if identity is not None:
            return identity, None
        if self._ids is not None:
            fingerprint = key.get_fingerprint("sha256")
            binding = (self._looked_up[fingerprint] if fingerprint in self._looked_up
                       else self._ids.binding_for(fingerprint))
            if binding is not None:
                return binding.identity, binding
        return None

    def _target(self) -> str | None:
        try:
            return parse_username(self.username, self._config).target
        except BastionError:
            return None  # refused after auth, with the reason, like any bad request

    def signature_checked(self, key: asyncssh.SSHKey) -> bool:
        """The client proved it holds ``key``: whether that alone completes authentication."""
        fingerprint = key.get_fingerprint("sha256")
        known = self._known(key)
        if known is None:
            if len(self._proven) >= _MAX_PROVEN_KEYS:
                self.failures += 1  # a client cycling through keys: count it against its tries
                return False
            if not any(p.fingerprint == fingerprint for p in self._proven):
                line = key.export_public_key("openssh").decode("ascii").strip()
                self._proven.append(ProvenKey(fingerprint, line))
            return False  # on to keyboard-interactive: the device login
        identity, binding = known
        if self._ids is not None and self._ids.totp_required(identity, self._target()):
            self._pending = (identity, fingerprint, binding)
            return False  # on to keyboard-interactive: the TOTP code
        self._candidate = (identity, fingerprint)
        self._binding = binding
        return True

    def watch_signatures(self, conn: asyncssh.SSHServerConnection) -> None:
        """Hear from asyncssh which keys' signatures it verified.

        asyncssh tells its server object about a key before it checks the signature and
        completes authentication as soon as a signature verifies, so the decision "proven, but
        not enough" (an unknown key to bind, a key whose owner still owes a TOTP code) is made
        here, on the connection's own check.
        """
        check: Callable[[str, bytes, bytes, bytes], Awaitable[bool]] = conn.validate_public_key

        async def validate_public_key(username: str, key_data: bytes, msg: bytes,
                                      signature: bytes) -> bool:
            verified = await check(username, key_data, msg, signature)
            if not msg or not verified:
                return verified  # a query without a signature, or a refused key
            key = self._offered.get(key_data)
            return key is not None and self.signature_checked(key)

        conn.validate_public_key = validate_public_key  # type: ignore[method-assign]

    # -- keyboard-interactive: device login and TOTP -------------------------------------------
    def kbdint_supported(self) -> bool:
        """Whether keyboard-interactive may be offered (device login or a TOTP policy)."""
        if self._ids is None or (self._flow is not None and self._flow.failure):
            return False  # one keyboard-interactive login per connection; a refusal is final
        policy = self._ids.settings.totp_required_for
        return self._ids.device_login_enabled or bool(
            policy.all or policy.groups or policy.targets)

    def starts_device_login(self) -> bool:
        """Whether the next keyboard-interactive challenge starts a device login (not TOTP)."""
        return (self._ids is not None and self._ids.device_login_enabled
                and self._pending is None
                and not (self._flow is not None and self._flow.failure))

    def refuse_device_login(self, reason: str) -> None:
        """Refuse keyboard-interactive for this connection (a limit was reached)."""
        self.failures += 1
        self._audit.emit("login.failure", conn=self._conn_id, client=self._peer,
                         request=self.username[:256], reason=reason)

    async def kbdint_challenge(self, conn: asyncssh.SSHServerConnection) -> KbdIntAnswer:
        """Start the device login (or the TOTP prompt for a proven key) and say what to show."""
        if self._ids is None or (self._flow is not None and self._flow.failure):
            return False
        self._flow = LoginFlow(self._ids, conn=self._conn_id, client=self._peer,
                               request=self.username, target=self._target(),
                               proven_keys=list(self._proven),
                               pending=self._pending[0] if self._pending else None)
        return self._ask(conn, await self._flow.begin())

    async def kbdint_response(self, conn: asyncssh.SSHServerConnection,
                              responses: Sequence[str]) -> KbdIntAnswer:
        """Take the answers; the next challenge, or the verdict."""
        flow = self._flow
        if flow is None:
            return False
        result = await flow.answer(list(responses))
        if result is True and flow.identity is not None:
            if self._pending is not None:
                self._candidate = (flow.identity, self._pending[1])
                self._binding = self._pending[2]
            else:
                fingerprint = self._proven[0].fingerprint if self._proven else "none"
                self._candidate = (flow.identity, fingerprint)
                self.bound_keys = tuple(k.fingerprint for k in self._proven)
            return True
        if result is False:
            self.failures += 1
        return self._ask(conn, result)

    @staticmethod
    def _ask(conn: asyncssh.SSHServerConnection, step: Challenge | bool) -> KbdIntAnswer:
        if isinstance(step, bool):
            return step
        if step.banner:
            conn.send_auth_banner(step.banner)  # UTF-8 reaches the user here (the QR code)
        return (step.name, step.instructions, "", step.prompts)

    @property
    def totp_passed(self) -> bool:
        """Whether this connection gave a valid TOTP code while authenticating."""
        return self._flow is not None and self._flow.totp_passed

    def completed(self) -> Identity:
        """Auth succeeded: fix the identity and log it."""
        if self._candidate is None:
            # asyncssh finished authentication without any of our checks saying yes (an
            # asyncssh change bypassing watch_signatures, say): fail closed.
            self.failed("authentication completed without a verified identity")
            raise AuthenticationError("authentication completed without a verified identity")
        self.identity, self.key_fingerprint = self._candidate
        if self._binding is not None:
            self.bound_keys = (self._binding.fingerprint,)
        if self._binding is not None and self._ids is not None:
            self._ids.binding_used(self._binding, self._conn_id, self._peer)
        self._audit.emit("login.success", conn=self._conn_id, client=self._peer,
                         user=self.identity.name, method=self.identity.method,
                         key=self.key_fingerprint, request=self.username[:256])
        return self.identity

    def failed(self, reason: str) -> None:
        """The connection closed or was refused before authenticating (audited once)."""
        if self._failure_reported:
            return
        self._failure_reported = True
        if self._flow is not None and self._flow.failure:
            reason = f"{reason}: {self._flow.failure}"
        self._audit.emit("login.failure", conn=self._conn_id, client=self._peer,
                         request=self.username[:256], reason=reason,
                         keys=[k.get_fingerprint("sha256") for k in self.offered_keys])
