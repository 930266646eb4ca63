"""One SSH connection to the bastion: asyncssh callbacks, each a decision that denies by default.

Only session channels are accepted, and only after authentication produced an identity. Local TCP
forwards (``ssh -L``) are decided by ``[[forwarding]]`` rules (bastion/relay/forwarding.py); remote
and UNIX forwarding, X11 and agent forwarding are refused, and audited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Protocol

import asyncssh

from bastion.approvals.service import ApprovalService, Approver
from bastion.audit import AuditLog
from bastion.config.model import Config
from bastion.errors import AuditUnavailable, BastionError
from bastion.identity.service import IdentityService
from bastion.policy.access import TargetRequest, parse_username
from bastion.relay import forwarding, wire
from bastion.relay.approver_menu import APPROVER_USER, ApproverSession
from bastion.relay.channels import UserChannel
from bastion.relay.session import ClientInfo, ConnectionSession, RelayServices
from bastion.server.auth import ConnectionAuth, KbdIntAnswer, LocalKeyIndex
from bastion.server.limits import ServerLimits, UnauthenticatedHold

log = logging.getLogger("bastion.server")

_CLOSE_GRACE = 5.0  # seconds a client gets to hang up after its channels were ended
DEVICE_LOGIN_MARGIN = 60.0  # seconds a device login's connection may outlast its polling


class ConnectionHost(Protocol):
    """What a connection needs from the server that owns it (app.BastionServer provides it).

    A protocol rather than an import of app.py, which imports this module: no import cycle.
    """

    @property
    def config(self) -> Config: ...
    @property
    def audit(self) -> AuditLog: ...
    @property
    def local_keys(self) -> LocalKeyIndex: ...
    @property
    def identity(self) -> IdentityService: ...
    @property
    def relay_services(self) -> RelayServices: ...
    @property
    def limits(self) -> ServerLimits: ...
    @property
    def approvals(self) -> ApprovalService: ...

    def admit(self, connection: BastionConnection) -> bool:
        """Register a new connection unless the global cap is reached."""
        ...

    def forget(self, connection: BastionConnection) -> None:
        """Drop a closed connection."""
        ...


class BastionConnection(asyncssh.SSHServer):
    """asyncssh's per-connection server object; holds this connection's auth and session."""

    def __init__(self, server: ConnectionHost, conn_id: str,
                 client_address: tuple[str, int] | None = None) -> None:
        self._server = server
        self.conn_id = conn_id
        # From a load balancer's PROXY header; None: the socket's peer is the client.
        self._client_address = client_address
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = ("?", 0)
        self.auth: ConnectionAuth | None = None
        self.session: ConnectionSession | None = None
        self.channels: list[UserChannel] = []
        self._refusal: str | None = None  # the server is full: said at the first auth request
        self._unauthenticated: UnauthenticatedHold | None = None  # its place until signed in
        self._login_timer: asyncio.TimerHandle | None = None

    # -- connection lifecycle ----------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = self._client_address or conn.get_extra_info("peername") or ("?", 0)
        self.peer = (str(peer[0]), int(peer[1]))
        srv = self._server
        self.auth = ConnectionAuth(srv.config, srv.audit, srv.local_keys, self.conn_id,
                                   f"{self.peer[0]}:{self.peer[1]}", srv.identity)
        self.auth.watch_signatures(conn)
        forwarding.watch_channel_requests(conn, lambda: self.session)
        wire.install(conn)  # one socket write per loop pass, reads parsed in pieces
        # Strangers from one address share a small allowance (on all workers of this node):
        # refused here by this process's count, or moments later by the shared one.
        self._unauthenticated = srv.limits.open_unauthenticated(
            self.peer[0], self.conn_id, self._refuse_stranger)
        if self._unauthenticated is None:
            return
        if not srv.admit(self):
            # Said properly once the client asks to log in (after key exchange), so it reads
            # as a refusal and not as a broken banner; a silent one meets the login timer.
            self._refusal = "bastion: too many connections, try again later"
        self._login_timer = asyncio.get_running_loop().call_later(
            srv.config.server.login_timeout, self._login_expired)

    def _refuse_stranger(self, reason: str) -> None:
        """Close a connection not signed in at once: silent sockets from one address cannot
        hold the bastion (no protocol is owed to them yet)."""
        self._server.audit.emit("connection.refused", conn=self.conn_id,
                                client=f"{self.peer[0]}:{self.peer[1]}", reason=reason)
        if self.conn is not None:
            self.conn.abort()

    def _login_expired(self) -> None:
        """Not signed in within login_timeout (or the device login's time): disconnect."""
        if self.conn is None or self.session is not None:
            return
        if self.auth is not None and self.auth.username:
            self.auth.failed("login timeout")
        self.conn.disconnect(asyncssh.DISC_CONNECTION_LOST, "bastion: login timed out")

    def _authenticated_or_gone(self) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        if self._unauthenticated is not None:
            self._unauthenticated.release()
            self._unauthenticated = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._authenticated_or_gone()
        if self.session is not None:
            if exc is not None:  # e.g. the client stopped answering keepalives
                self.session.end_reason("closed", f"connection to the client lost: {exc}")
            self.session.close()
        elif self.auth is not None and self.auth.identity is None:
            if self.auth.username:
                self.auth.failed("connection closed before authentication" if exc is None
                                 else f"connection lost: {exc}")
            else:  # a port probe or scanner: it never asked to log in
                self._server.audit.emit("connection.unauthenticated", conn=self.conn_id,
                                        client=f"{self.peer[0]}:{self.peer[1]}")
        self._server.forget(self)

    # -- authentication ------------------------------------------------------------------------
    def begin_auth(self, username: str) -> bool:
        assert self.auth is not None and self.conn is not None
        self.auth.begin(username)
        if self._refusal is not None:
            self.auth.failed("too many connections")
            self.conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, self._refusal)
        return True  # always authenticate; nobody gets in on the user name alone

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        assert self.auth is not None and self.conn is not None
        if self.auth.attempts_exhausted:
            self.auth.failed("too many authentication attempts")
            self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                                 "bastion: too many authentication attempts")
            return False
        if self.auth.keys_exhausted and not self.auth.has_offered(key):
            self.auth.failed("too many keys offered")
            self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                                 "bastion: too many keys offered")
            return False
        await self.auth.lookup_binding(key)  # off the event loop (PostgreSQL: a round trip)
        return self.auth.validate_public_key(key)

    def kbdint_auth_supported(self) -> bool:
        assert self.auth is not None
        return self.auth.kbdint_supported()

    async def get_kbdint_challenge(self, username: str, lang: str,
                                   submethods: str) -> KbdIntAnswer:
        assert self.auth is not None and self.conn is not None
        if self.auth.starts_device_login():
            srv = self._server
            if not await srv.limits.start_device_login(self.peer[0]):
                reason = "too many device logins from your address; try again in a minute"
                self.auth.refuse_device_login(reason)
                self.conn.send_auth_banner(f"bastion: {reason}\r\n")
                return False
            # The person needs time to sign in at the identity provider: the short login timer
            # gives way to the device login's own limit.
            if self._login_timer is not None:
                self._login_timer.cancel()
                self._login_timer = asyncio.get_running_loop().call_later(
                    srv.config.identity.device_poll_timeout + DEVICE_LOGIN_MARGIN,
                    self._login_expired)
        return await self.auth.kbdint_challenge(self.conn)

    async def validate_kbdint_response(self, username: str,
                                       responses: Sequence[str]) -> KbdIntAnswer:
        assert self.auth is not None and self.conn is not None
        return await self.auth.kbdint_response(self.conn, responses)

    def auth_completed(self) -> None:
        assert self.auth is not None and self.conn is not None
        self._authenticated_or_gone()
        try:
            identity = self.auth.completed()
            audit = self._server.audit
            if not audit.healthy:
                # No login without its audit line: fail closed until the log can be written.
                raise AuditUnavailable(f"{audit.error}; logins are refused until it can be")
        except BastionError as exc:
            log.error("[conn=%s] %s", self.conn_id, exc)
            said = f"bastion: {exc}" if isinstance(exc, AuditUnavailable) else "bastion: denied"
            self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, said)
            return  # no session: every channel request is refused
        request: TargetRequest | None = None
        refusal: BastionError | None = None
        try:
            # "approvals" opens the approver menu (session_requested), not a target.
            if self.auth.username != APPROVER_USER:
                request = parse_username(self.auth.username, self._server.config)
        except BastionError as exc:
            refusal = exc
            self._server.audit.emit("session.refused", conn=self.conn_id, user=identity.name,
                                    request=self.auth.username[:256], reason=str(exc))
        client = ClientInfo(conn_id=self.conn_id, address=self.peer[0], port=self.peer[1],
                            key_fingerprint=self.auth.key_fingerprint)
        self.session = ConnectionSession(self._server.relay_services, identity, client,
                                         request, refusal, totp_passed=self.auth.totp_passed,
                                         pty_requested=self._pty_requested,
                                         user_conn=self.conn)

    def _pty_requested(self) -> bool:
        """Whether a session channel of this connection has a terminal (a certificate for the
        target then permits one; the upstream connection is shared by all channels)."""
        return any(channel.chan is not None and channel.chan.get_terminal_type() is not None
                   for channel in self.channels)

    # -- channels ------------------------------------------------------------------------------
    def session_requested(self) -> UserChannel | ApproverSession | bool:
        if self.session is None:
            return False
        self.channels = [c for c in self.channels if not c.closed]
        limit = self._server.config.server.max_channels_per_connection
        if len(self.channels) >= limit:
            self._server.audit.emit("channel.refused", conn=self.conn_id,
                                    user=self.session.identity.name, kind="session",
                                    reason=f"more than {limit} channels open on one connection")
            return False
        if self.auth is not None and self.auth.username == APPROVER_USER:
            return ApproverSession(self._server.approvals, Approver.of(self.session.identity))
        channel = UserChannel(self.session)
        self.channels.append(channel)
        return channel

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> Awaitable[forwarding.UserSide]:
        if self.session is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            "bastion: not signed in")
        return forwarding.local_forward(self.session, dest_host, dest_port, orig_host,
                                        orig_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return forwarding.refuse_remote_forward(self.session, listen_host, listen_port)

    def close_with_notice(self, notice: str, state: str, reason: str) -> None:
        """End every channel with a notice and close the connection (idle, shutdown)."""
        if self.session is not None:
            self.session.end_reason(state, reason)
        for channel in self.channels:
            channel.close_with_notice(notice)
        if self.conn is not None:
            # Let the exit statuses reach the client before the connection goes; a client
            # that does not hang up by itself is disconnected a little later.
            delay = _CLOSE_GRACE if self.channels else 0.0
            asyncio.get_running_loop().call_later(delay, self.conn.close)
