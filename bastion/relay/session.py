"""One authenticated SSH connection's session: identity, target, recording and upstream, once.

The SSH layer creates a ``ConnectionSession`` when authentication completes and hands it to every
channel of that connection. It decides policy once, opens the recording before any connection to
the target (no recording, no session), dials the target once, and closes everything exactly once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncssh

from bastion.audit import AuditLog
from bastion.config.model import Config, Target, TargetAuth
from bastion.credentials.ca import CertificateAuthority, certificate_key_id
from bastion.credentials.vault import Credential
from bastion.errors import (
    AccessDenied,
    BastionError,
    CertificateAuthorityError,
    CertificateRefused,
    RecordingError,
    SessionLimit,
)
from bastion.identity.model import Identity
from bastion.policy.access import Authorization, TargetRequest, authorize
from bastion.policy.transfers import forwards_through_target
from bastion.recording import SessionRecording, Spool
from bastion.relay import wire
from bastion.relay.pipeline import ChannelKind, ChannelRecorder, StageFactory
from bastion.relay.upstream import CertificateRequest, Upstream, dial
from bastion.relay.upstream_pool import PROBE_TIMEOUT, PoolKey, UpstreamPool, responsive

log = logging.getLogger("bastion.relay")


class MaskingService(Protocol):
    """What the relay asks of masking outside the byte stream (bastion/masking)."""

    def mask_text(self, text: str, target: Target | None = None) -> str:
        """``text`` with the secrets masking detects on ``target`` masked."""
        ...

    def channel_counts(self, session_id: str, number: int) -> dict[str, int]:
        """How many secrets of each detector a channel's stages found."""
        ...

    def forget_session(self, session_id: str) -> None:
        """Drop a finished session's counts."""
        ...


class SessionCounter(Protocol):
    """Counts open sessions per identity so a cap can be enforced across connections (and the
    server's worker processes and nodes); ``holder`` names the counted connection."""

    async def acquire(self, identity_key: str, limit: int, holder: str) -> bool: ...
    def release(self, identity_key: str, holder: str) -> None: ...


@dataclass(frozen=True)
class RelayServices:
    """What a session needs from the running server; built once at start-up."""

    config: Config
    audit: AuditLog
    spool: Spool
    credential_for: Callable[[Authorization, str, str], Credential]  # (auth, conn, user)
    counter: SessionCounter
    on_finished: Callable[[SessionRecording], None]
    # Whether policy asks this identity for a TOTP code on this target (step-up).
    totp_required: Callable[[Identity, str], bool]
    # The features on the channel pipeline (command control, masking, transfers), in order.
    stage_factories: Sequence[StageFactory] = field(default_factory=tuple)
    masking: MaskingService | None = None  # None: masking is switched off
    certificate_authority: CertificateAuthority | None = None  # signs for certificate targets
    upstreams: UpstreamPool | None = None  # target connections kept for the next session


@dataclass(frozen=True)
class ClientInfo:
    """The user's side of the connection, as seen by the server."""

    conn_id: str
    address: str
    port: int
    key_fingerprint: str | None


class ConnectionSession:
    """State of one user connection after authentication; owned by that connection."""

    def __init__(self, services: RelayServices, identity: Identity, client: ClientInfo,
                 request: TargetRequest | None, refusal: BastionError | None, *,
                 totp_passed: bool = False,
                 pty_requested: Callable[[], bool] | None = None,
                 user_conn: asyncssh.SSHServerConnection | None = None) -> None:
        self.services = services
        self.identity = identity
        self.client = client
        self.request = request  # what the SSH user name asked for (None: the menu)
        self.totp_passed = totp_passed  # a TOTP code was given while authenticating
        self.refusal = refusal  # a request that could not even be parsed: refused on first use
        # Whether a channel of this connection asked for a terminal (the SSH layer knows).
        self._pty_requested = pty_requested
        self.authorization: Authorization | None = None
        self.upstream: Upstream | None = None
        # The user's SSH connection: coupled to the target's for backpressure once dialled.
        self.user_conn = user_conn
        self.recording: SessionRecording | None = None
        self.last_activity = time.monotonic()
        self._lock = asyncio.Lock()
        self._counted = False
        self._pool_key: PoolKey | None = None  # where this session's target connection parks
        self._failure_handlers: list[Callable[[RecordingError], None]] = []
        self._masks: dict[str, dict[str, int]] = {}  # per channel number: counts per detector
        self._closed = False
        self._end_state = "closed"
        self._end_reason = "closed"

    @property
    def log_prefix(self) -> str:
        """``[conn=N]`` context for log lines."""
        return f"[conn={self.client.conn_id}]"

    def is_closed(self) -> bool:
        """Whether ``close`` ran (also while ``connect`` was waiting)."""
        return self._closed

    def touch(self) -> None:
        """Note activity (for the idle timeout)."""
        self.last_activity = time.monotonic()

    def _authorize(self, request: TargetRequest) -> Authorization:
        """Decide this channel's request against current policy (every channel, every time)."""
        cfg = self.services.config
        try:
            auth = authorize(cfg, self.identity, request)
            if self.services.totp_required(self.identity, auth.target.name) \
                    and not self.totp_passed:
                # The code is asked while authenticating, for the target in the user name; a
                # target chosen otherwise (the menu) must not skip it.
                raise AccessDenied(
                    f"target {auth.target.name} needs a TOTP code; connect as "
                    f"{auth.login}@{auth.target.name}@bastion to give it")
        except AccessDenied as exc:
            self.services.audit.emit("session.refused", conn=self.client.conn_id,
                                     user=self.identity.name, request=request.describe(),
                                     reason=str(exc))
            raise
        return auth

    async def connect(self, request: TargetRequest | None, *,
                      pty: bool | None = None) -> Upstream:
        """Authorize this channel's request; the first one also opens the recording and dials.

        A connection has one target: later channels are authorized again (policy may have
        changed) and must ask for the same target and login, or they are refused.

        ``pty``: whether the channel that opens the connection needs a terminal, so that a
        certificate permits one only then. None: ask ``pty_requested`` (given by the SSH
        layer), else permit one.
        """
        async with self._lock:
            if self._closed:
                raise AccessDenied("the session is closing")
            if self.refusal is not None:
                raise self.refusal
            if request is None or request.target is None:
                raise AccessDenied("no target given")
            auth = self._authorize(request)
            if self.upstream is not None and self.authorization is not None:
                first = self.authorization
                if (auth.target.name, auth.login) != (first.target.name, first.login):
                    raise AccessDenied(
                        f"this connection is on {first.login}@{first.target.name}; open a new "
                        f"connection for {auth.login}@{auth.target.name}")
                return self.upstream
            cfg = self.services.config
            audit = self.services.audit
            self.request = request
            self.authorization = auth
            # One count per connection, taken once and released once at close, whatever
            # happens to its channels (a refused set-up is retried by the next channel).
            if not self._counted:
                await self._count_session(request.describe())
            credential: Credential | CertificateRequest | None = None
            if auth.target.auth is TargetAuth.VAULT:
                try:
                    credential = self.services.credential_for(auth, self.client.conn_id,
                                                              self.identity.name)
                except BastionError as exc:  # no credential, or a vault damaged while running
                    audit.emit("session.refused", conn=self.client.conn_id,
                               user=self.identity.name, reason=str(exc), **auth.audit_fields())
                    raise
            pool = self.services.upstreams
            if pool is not None and isinstance(credential, Credential):
                self._pool_key = PoolKey.of(self.identity.key, auth.target, auth.login,
                                            credential)
            spool = self.services.spool
            recording = await asyncio.wrap_future(
                spool.submit(spool.start_session, self._metadata(auth)))
            self.recording = recording
            recording.on_failure = self._recording_failed
            if self.is_closed():  # the user left while the recording was being created
                self._end_state, self._end_reason = "closed", "client left during set-up"
                self._finish_recording()
                raise AccessDenied("the session is closing")
            audit.emit("target.selected", conn=self.client.conn_id, user=self.identity.name,
                       session=recording.session_id, **auth.audit_fields())
            try:
                if credential is None:
                    if pty is None:
                        pty = self._pty_requested() if self._pty_requested else True
                    credential = self._certificate_request(recording.session_id, pty)
                # The same person's connection to this target and login, parked by a session
                # that ended moments ago (upstream_pool.py); else a new login on the target.
                parked = pool.take(self._pool_key) if pool and self._pool_key else None
                if parked is not None and not await responsive(
                        parked, min(PROBE_TIMEOUT, auth.target.connect_timeout)):
                    parked.close()  # the target stopped answering on it: log in anew
                    parked = None
                upstream = parked or await dial(auth, credential, cfg.server.keepalive_interval)
            except BastionError as exc:
                audit.emit("session.refused", conn=self.client.conn_id,
                           session=recording.session_id, user=self.identity.name,
                           reason=str(exc), **auth.audit_fields(),
                           certificate=exc.certificate if isinstance(exc, CertificateRefused)
                           else None)
                self._end_state, self._end_reason = "refused", str(exc)
                self._finish_recording()
                raise
            if self.is_closed():  # the user left while the target was being dialled
                upstream.close()
                raise AccessDenied("the session is closing")
            self.upstream = upstream
            if self.user_conn is not None:  # the user's socket full: stop reading the target's
                wire.couple_backpressure(self.user_conn, upstream.conn)
            # The idle clock starts with the session, not with the dial (a slow target must
            # not use up the user's idle allowance).
            self.last_activity = time.monotonic()
            connection = "reused" if parked is not None else "new"
            target_meta: dict[str, Any] = {
                "name": auth.target.name, "address": upstream.address,
                "port": auth.target.port, "login": auth.login,
                "host_key_fingerprint": upstream.host_key_fingerprint, "connection": connection}
            certificate = (upstream.certificate.record() if upstream.certificate is not None
                           else None)
            if certificate is not None:
                target_meta["certificate"] = certificate
            recording.set_field("target", target_meta)
            audit.emit("session.start", conn=self.client.conn_id,
                       session=recording.session_id, user=self.identity.name,
                       client=f"{self.client.address}:{self.client.port}", **auth.audit_fields(),
                       certificate=certificate,
                       upstream=connection)
            return self.upstream

    async def _count_session(self, request: str) -> None:
        """Take this connection's place under the identity's session cap, or refuse."""
        cfg, audit, counter = self.services.config, self.services.audit, self.services.counter
        limit = cfg.server.max_sessions_per_user
        try:
            counted = await counter.acquire(self.identity.key, limit, self.client.conn_id)
        except BastionError as exc:  # the state database is away: fail closed
            log.error("[conn=%s] cannot count sessions: %s", self.client.conn_id, exc)
            audit.emit("session.refused", conn=self.client.conn_id, user=self.identity.name,
                       request=request, reason=f"session limit unavailable: {exc}")
            raise SessionLimit("your open sessions cannot be counted right now; "
                               "try again later") from None
        if not counted:
            audit.emit("session.refused", conn=self.client.conn_id, user=self.identity.name,
                       request=request, reason="session limit")
            raise SessionLimit(f"you already have {limit} sessions open, the most allowed")
        if self._closed:  # the user left while the place was being taken: give it back
            counter.release(self.identity.key, self.client.conn_id)
            raise AccessDenied("the session is closing")
        self._counted = True

    def _certificate_request(self, session_id: str, permit_pty: bool) -> CertificateRequest:
        authority = self.services.certificate_authority
        if authority is None:
            raise CertificateAuthorityError("this target logs in with a certificate, but no "
                                            "[ca] is configured")
        key_id = certificate_key_id(self.identity.name, self.identity.issuer, session_id)
        assert self.authorization is not None
        # Port forwarding only when a [[forwarding]] rule would open a forward for this person
        # through this target's sshd (the target refuses -L otherwise, as it should).
        forwards = forwards_through_target(self.services.config, self.identity.rule_names,
                                           self.identity.groups,
                                           self.authorization.target.name)
        return CertificateRequest(authority, key_id, permit_pty,
                                  permit_port_forwarding=forwards)

    @property
    def session_id(self) -> str:
        """The recording's session id (once ``connect`` opened it)."""
        assert self.recording is not None
        return self.recording.session_id

    async def open_recorder(self, kind: ChannelKind, *, pty: bool, width: int, height: int,
                            term: str | None, command: str | None,
                            on_failure: Callable[[RecordingError], None],
                            ) -> tuple[int, ChannelRecorder]:
        """Open the recording of a new channel: (its number, its recorder).

        ``on_failure`` ends that channel when a background flush of the session fails.
        """
        recording = self.recording
        if recording is None or self.authorization is None:
            raise AccessDenied("the session is closing")
        self._failure_handlers.append(on_failure)
        writer = await recording.open_channel_async(
            kind, pty=pty, width=width, height=height, term=term, command=command,
            user=self.identity.name, target=self.authorization.target.name,
            login=self.authorization.login)
        return writer.number, writer

    def note_command(self, channel: int, line: str, verdict: str, rule: str | None) -> None:
        """Add a command line read on ``channel`` to session.json's ``commands``."""
        if self.recording is not None:
            self.recording.note_command(channel, None, line, verdict, rule)

    def mask_text(self, text: str) -> str:
        """``text`` (a command line, a notice) with secrets masked before it is written."""
        masking = self.services.masking
        if masking is None or self.authorization is None:
            return text
        return masking.mask_text(text, self.authorization.target)

    def note_masks(self, channel: int) -> None:
        """Put what masking found on ``channel`` into session.json ``masks`` (-> manifest)."""
        masking = self.services.masking
        if masking is None or self.recording is None:
            return
        counts = masking.channel_counts(self.recording.session_id, channel)
        if counts:
            self._masks[str(channel)] = dict(counts)
            self.recording.set_field("masks", dict(self._masks))

    def _recording_failed(self, exc: RecordingError) -> None:
        # A flush of an idle channel failed in the background: fail closed on every channel.
        for handler in list(self._failure_handlers):
            handler(exc)

    def end_reason(self, state: str, reason: str) -> None:
        """Record why the session is ending (first reason given wins over the default)."""
        if self._end_state == "closed":
            self._end_state, self._end_reason = state, reason

    def close(self) -> None:
        """End the session: finish the recording, close the upstream, release the cap."""
        if self._closed:
            return
        self._closed = True
        if self.upstream is not None:
            pool = self.services.upstreams
            if pool is not None and self._end_state == "closed":
                pool.park(self._pool_key, self.upstream)  # closes what cannot be parked
            else:
                self.upstream.close()
        if self._counted:
            self.services.counter.release(self.identity.key, self.client.conn_id)
        if self.recording is not None and self.services.masking is not None:
            self.services.masking.forget_session(self.recording.session_id)
        if self.recording is not None and self.authorization is not None:
            self.services.audit.emit(
                "session.end", conn=self.client.conn_id, session=self.recording.session_id,
                user=self.identity.name, state=self._end_state, reason=self._end_reason,
                **self.authorization.audit_fields())
        self._finish_recording()

    def _finish_recording(self) -> None:
        recording, self.recording = self.recording, None
        if recording is None:
            return
        # The fsyncs and the final session.json run on the spool's worker; the loop goes on.
        done = recording.finish_later(self._end_state, self._end_reason)
        loop = asyncio.get_running_loop()
        done.add_done_callback(
            lambda future: loop.call_soon_threadsafe(self._recording_finished, recording, future))

    def _recording_finished(self, recording: SessionRecording,
                            done: concurrent.futures.Future[None]) -> None:
        error = done.exception()
        if isinstance(error, BastionError):
            log.error("%s cannot finish recording %s: %s", self.log_prefix,
                      recording.session_id, error)
            self.services.audit.emit("recording.error", conn=self.client.conn_id,
                                     session=recording.session_id, error=str(error))
            if recording.ended_on_disk:  # seal what was written, with its true end reason
                self.services.on_finished(recording)
            return
        if error is not None:
            raise error
        self.services.on_finished(recording)

    def _metadata(self, auth: Authorization) -> dict[str, Any]:
        return {
            "identity": self.identity.audit_fields(),
            "client": {"address": self.client.address, "port": self.client.port,
                       "key_fingerprint": self.client.key_fingerprint},
            "target": {"name": auth.target.name, "address": auth.target.host,
                       "port": auth.target.port, "login": auth.login,
                       "host_key_fingerprint": None},
        }

