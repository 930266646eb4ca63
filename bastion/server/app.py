"""The running bastion: listener, shared services, limits, periodic upkeep, orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from bastion.audit import AuditLog
from bastion.config.model import Config, WorkerBalance
from bastion.credentials.ca import CertificateAuthority
from bastion.credentials.hostkeys import load_host_keys
from bastion.credentials.vault import Credential, Vault, key_id, load_vault_key
from bastion.errors import BastionError, UpstreamError, VaultError, WrongVaultKey
from bastion.evidence.seal import Sealer
from bastion.identity.model import Identity
from bastion.identity.service import IdentityService
from bastion.policy.access import Authorization
from bastion.recording import SessionRecording, Spool
from bastion.relay.session import RelayServices
from bastion.relay.upstream_pool import UpstreamPool
from bastion.secret import Secret
from bastion.server.auth import LocalKeyIndex
from bastion.server.balance import NOT_ACCEPTING, WorkerLoads
from bastion.server.connection import DEVICE_LOGIN_MARGIN, BastionConnection
from bastion.server.features import approval_service, build_features
from bastion.server.hardening import algorithm_options
from bastion.server.limits import ServerLimits
from bastion.server.proxy import PlainListener, ProxyListener
from bastion.state.limits import LimitStore
from bastion.state.sessions import KillRequest, RunningSession, SessionRegistry

log = logging.getLogger("bastion.server")

_SHUTDOWN_GRACE = 3.0  # seconds clients get to hang up at shutdown before they are cut
_UPKEEP_INTERVAL = 0.5  # seconds between recording flushes and idle checks
_REVOCATION_EVERY = 4  # upkeep rounds between checks for revoked key bindings (2 s)


@dataclass(frozen=True)
class WorkerRole:
    """What a worker process of ``bastion serve --workers N`` gets from its supervisor.

    The supervisor has locked the spool, recovered and sealed what a crash left, cleared the
    node's stale rows and bound the listening socket; the worker takes over the lock (an
    inherited descriptor) and accepts on ``listener``.
    """

    index: int  # 1..N, in connection ids ("2.17") and audit events
    spool_lock_fd: int
    listener: socket.socket
    loads: WorkerLoads | None = None  # every worker's open connections
    slot: int = 0  # this worker's place in ``loads``


def audit_recovery(audit: AuditLog, spool: Spool) -> None:
    """Audit what the spool's last ``recover`` did: each session recovered, and each it had
    to leave as it was (files it could not read or parse: they stay for an operator)."""
    for result in spool.recovery_results:
        audit.emit("recording.recovered", session=result.path.name,
                   state=result.state.value, problems=result.problems[:20])
    for path, why in spool.recovery_skipped:
        audit.emit("recording.recovery_failed", session=path.name, error=why)


class BastionServer:
    """Owns the listener and what every connection shares: config, audit, spool, vault, caps."""

    def __init__(self, config: Config, audit: AuditLog, role: WorkerRole | None = None) -> None:
        self.config = config
        self.audit = audit
        self.role = role
        # Connection ids are unique within the node: a worker's carry its number.
        self._conn_prefix = f"{role.index}." if role is not None else ""
        self.local_keys = LocalKeyIndex.from_config(config)
        self.spool = Spool(config.paths.spool_dir, config.server.node_id)
        self._vault_key = load_vault_key(config.vault)
        self.identity = IdentityService.open(config, audit, self._vault_key,
                                             reload_key=self._reload_vault_key)
        self.approvals = approval_service(config, audit, self.identity)
        # Per-source and per-identity limits, shared with the other workers and nodes through
        # the state database (bastion/server/limits.py).
        self.limits = ServerLimits(config, LimitStore(self.identity.db, config.server.node_id))
        self.connections: dict[str, BastionConnection] = {}
        self._no_connections = asyncio.Event()
        self._conn_ids = (f"{self._conn_prefix}{n}" for n in itertools.count(1))
        self._acceptor: asyncssh.SSHAcceptor | ProxyListener | None = None
        self._accepting = False  # published to the other workers (server/balance.py)
        self._ssh_options: asyncssh.SSHServerConnectionOptions | None = None
        self._upkeep: asyncio.Task[None] | None = None
        self.finished_hooks: list[Callable[[SessionRecording], None]] = []
        # Evidence: seal each finished recording (signed manifest, hash chain) when configured.
        self.sealer = Sealer.from_config(config) if config.evidence is not None \
            and config.evidence.signing_key is not None else None
        self._sealing: set[asyncio.Future[None]] = set()
        if self.sealer is not None:
            self.finished_hooks.append(self._seal_finished)
        # Running sessions and kill requests in the state database (bastion sessions kill).
        self.registry = SessionRegistry(self.identity.db)
        self._registered: set[str] = set()
        # The user CA for certificate targets: loaded now, so a bad key stops the start.
        authority = (CertificateAuthority.from_config(config.ca) if config.ca is not None
                     else None)
        features = build_features(config, self.approvals)
        self.relay_services = RelayServices(
            config=config, audit=audit, spool=self.spool, credential_for=self.credential_for,
            counter=self, on_finished=self._recording_finished,
            totp_required=self._totp_required,
            stage_factories=features.stage_factories, masking=features.masking,
            certificate_authority=authority,
            upstreams=UpstreamPool(config.server.upstream_linger))

    # -- shared services -------------------------------------------------------------------
    def credential_for(self, authorization: Authorization, conn: str, user: str) -> Credential:
        """The vaulted credential for an authorized target login (read fresh each session)."""
        try:
            try:
                vault = Vault.open(self.config.vault.path, self._vault_key)
            except WrongVaultKey:
                # `bastion vault rotate-key` re-sealed the vault: the key source has the new key.
                if self._reload_vault_key() is None:
                    raise
                vault = Vault.open(self.config.vault.path, self._vault_key)
        except VaultError as exc:
            self.audit.emit("vault.refused", conn=conn, user=user, error=str(exc))
            raise
        credential = vault.get(authorization.target.name, authorization.login)
        if credential is None:
            self.audit.emit("credential.missing", conn=conn, user=user,
                            target=authorization.target.name, login=authorization.login)
            raise UpstreamError(f"no credential is stored for {authorization.login} on target "
                                f"{authorization.target.name}; ask an administrator")
        return credential

    def _reload_vault_key(self) -> Secret[bytes] | None:
        """Re-read the vault key source; the key if it is a new one (a rotation), else None."""
        try:
            key = load_vault_key(self.config.vault)
        except VaultError as exc:
            log.error("cannot re-read the vault key: %s", exc)
            return None
        new_id, old_id = key_id(key), key_id(self._vault_key)
        if new_id == old_id:
            return None
        self._vault_key = key
        self.identity.totp.rekey(key)
        self.audit.emit("vault.key_changed", old_key_id=old_id, new_key_id=new_id)
        log.info("vault key changed: key id %s -> %s", old_id, new_id)
        return key

    def _totp_required(self, identity: Identity, target: str) -> bool:
        return self.identity is not None and self.identity.totp_required(identity, target)

    async def acquire(self, identity_key: str, limit: int, holder: str) -> bool:
        """Count a session (``holder``: its connection) for an identity unless it is at its
        cap on any worker or node; StateError if the state database cannot say."""
        return await self.limits.acquire_session(identity_key, limit, holder)

    def release(self, identity_key: str, holder: str) -> None:
        """Uncount a session (the database is told in the background)."""
        self.limits.release_session(identity_key, holder)

    def admit(self, connection: BastionConnection) -> bool:
        """Register a new connection unless the global cap is reached."""
        if len(self.connections) >= self.config.server.max_connections:
            return False
        self.connections[connection.conn_id] = connection
        self._publish_load()
        return True

    def forget(self, connection: BastionConnection) -> None:
        """Drop a closed connection."""
        self.connections.pop(connection.conn_id, None)
        self._publish_load()
        if not self.connections:
            self._no_connections.set()

    def _publish_load(self) -> None:
        """Tell the other workers how many connections this one holds (server/balance.py):
        those open, and those accepted and still being set up (a login under way is in both;
        counted at once, before it reaches ``admit``, so the next look is not stale)."""
        role = self.role
        if role is None or role.loads is None:
            return
        if not self._accepting:
            role.loads.publish(role.slot, NOT_ACCEPTING)
            return
        acceptor = self._acceptor
        setting_up = acceptor.setting_up if isinstance(acceptor, ProxyListener) else 0
        role.loads.publish(role.slot, len(self.connections) + setting_up)

    async def _my_turn(self) -> None:
        role = self.role
        assert role is not None and role.loads is not None
        await role.loads.my_turn(role.slot)

    async def wait_idle(self) -> None:
        """Return once no connection is open."""
        if self.connections:
            self._no_connections.clear()
            await self._no_connections.wait()

    async def _drained(self, timeout: float) -> bool:
        """Wait until no connection is left; False if some still are after ``timeout``."""
        if not self.connections:
            return True
        self._no_connections.clear()
        try:
            await asyncio.wait_for(self._no_connections.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _recording_finished(self, recording: SessionRecording) -> None:
        for hook in self.finished_hooks:
            hook(recording)

    # -- evidence ------------------------------------------------------------------------------
    def _seal_finished(self, recording: SessionRecording) -> None:
        """Seal a finished recording off the event loop (hashing a long cast takes a while)."""
        future = asyncio.get_running_loop().run_in_executor(None, self._seal, recording.path)
        self._sealing.add(future)
        future.add_done_callback(self._sealing.discard)

    def _seal(self, path: Path) -> None:
        """Seal one session folder; a failure leaves it unsealed for ``bastion upload`` to
        report, and is logged and audited."""
        assert self.sealer is not None
        try:
            self.sealer.seal(path)
        except BastionError as exc:
            log.error("cannot seal recording %s: %s", path.name, exc)
            self.audit.emit("recording.seal_failed", session=path.name, error=str(exc))
            return
        self.audit.emit("recording.sealed", session=path.name)

    def _seal_leftovers(self) -> None:
        """Seal recovered (interrupted) sessions and any finished one a crash left unsealed."""
        assert self.sealer is not None
        sealed, failed = self.sealer.seal_spool(self.config.paths.spool_dir)
        for manifest in sealed:
            self.audit.emit("recording.sealed", session=manifest.parent.name)
        for path, error in failed:
            log.error("cannot seal recording %s: %s", path.name, error)
            self.audit.emit("recording.seal_failed", session=path.name, error=error)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port the listener is bound to."""
        assert self._acceptor is not None
        return int(self._acceptor.get_port())

    async def start(self) -> None:
        """Check the vault, take the spool, recover crashed recordings, then listen (a worker
        finds all of that done by its supervisor, and accepts on the socket it was given)."""
        cfg = self.config
        Vault.open(cfg.vault.path, self._vault_key, create=True)  # fail fast on key or file
        if self.role is not None:
            self.spool.adopt_lock(self.role.spool_lock_fd)
        else:
            self.spool.lock()
            self.registry.clear_node(cfg.server.node_id)  # rows a crash left behind
            self.recover_spool()
        # (a worker's supervisor created a missing key and said so already)
        host_keys, notes = load_host_keys(cfg.server.host_keys, create=self.role is None)
        for note in notes:
            log.warning("%s", note)
        ssh_options: dict[str, Any] = dict(
            server_host_keys=host_keys, server_version="bastion",
            # An outer bound only: each connection keeps its own, shorter login timer.
            login_timeout=cfg.server.login_timeout + cfg.identity.device_poll_timeout
            + DEVICE_LOGIN_MARGIN,
            keepalive_interval=cfg.server.keepalive_interval or None,
            keepalive_count_max=cfg.server.keepalive_count_max,
            agent_forwarding=False, x11_forwarding=False, allow_scp=False,
            line_editor=False, encoding=None, **algorithm_options(cfg.server.ciphers))
        # A worker on the shared socket takes a waiting connection when no other holds fewer
        # (server/balance.py); it accepts itself for that, as behind a load balancer.
        turn = self._my_turn if self.role is not None and self.role.loads is not None \
            and cfg.server.worker_balance is WorkerBalance.SHARED else None
        if cfg.server.proxy_protocol_from:
            # Behind a load balancer: accept TCP here, take its PROXY header off, and run
            # asyncssh on each socket with the client's real address.
            self._ssh_options = asyncssh.SSHServerConnectionOptions(**ssh_options)
            self._acceptor = ProxyListener(
                cfg.server.listen, cfg.server.port, cfg.server.proxy_protocol_from,
                self._run_ssh, self._proxy_refused, turn, self._publish_load)
            await self._acceptor.start(self.role.listener if self.role is not None else None)
        elif self.role is not None and turn is not None:
            self._ssh_options = asyncssh.SSHServerConnectionOptions(**ssh_options)
            self._acceptor = PlainListener(self._run_ssh, turn, self._publish_load)
            await self._acceptor.start(self.role.listener)
        elif self.role is not None:
            self._acceptor = await asyncssh.create_server(
                self._new_connection, sock=self.role.listener, **ssh_options)
        else:
            self._acceptor = await asyncssh.create_server(
                self._new_connection, cfg.server.listen, cfg.server.port, reuse_address=True,
                **ssh_options)
        self._upkeep = asyncio.get_running_loop().create_task(self._upkeep_loop())
        self._accepting = True
        self._publish_load()
        if self.role is not None:
            self.audit.emit("worker.start", worker=self.role.index, pid=os.getpid())
        else:
            self.audit.emit("server.start", listen=cfg.server.listen, port=self.port)
        log.info("listening on %s:%d", cfg.server.listen, self.port)

    def recover_spool(self) -> None:
        """Close the recordings a crash left open (a dead worker's, with --workers) and seal
        them and any finished recording left unsealed; each one audited."""
        self.spool.recover()
        audit_recovery(self.audit, self.spool)
        if self.sealer is not None:
            self._seal_leftovers()

    def _new_connection(self) -> BastionConnection:
        return BastionConnection(self, next(self._conn_ids))

    async def _run_ssh(self, sock: socket.socket, client: tuple[str, int]) -> None:
        """Run SSH on a socket this worker accepted itself; ``client`` is the real address
        (from a PROXY header, or the socket's peer)."""
        conn_id = next(self._conn_ids)
        try:
            await asyncssh.run_server(
                sock, options=self._ssh_options,
                server_factory=lambda: BastionConnection(self, conn_id, client))
        except (OSError, asyncssh.Error) as exc:  # refused or gone before signing in: the
            log.debug("[conn=%s] %s", conn_id, exc)  # connection object audited it already

    def _proxy_refused(self, peer: tuple[str, int], reason: str) -> None:
        self.audit.emit("connection.refused", conn=next(self._conn_ids),
                        client=f"{peer[0]}:{peer[1]}", reason=reason)

    async def _end_revoked(self) -> None:
        """End live connections whose key binding was revoked (``bastion keys revoke``).

        Bindings are only deleted by a revocation (expired rows stay until revoked), so a
        connection whose binding row is gone, or now names someone else, has lost the access it
        rests on. The query runs in a worker thread (with PostgreSQL it is a network round
        trip, and it reads every binding): the event loop does not wait for it.
        """
        watched = [c for c in self.connections.values()
                   if c.session is not None and c.auth is not None and c.auth.bound_keys]
        if not watched:
            return
        try:
            entries = await asyncio.to_thread(self.identity.bindings.entries,
                                              include_expired=True)
        except BastionError as exc:
            log.error("cannot check key revocations: %s", exc)
            return
        owner = {b.fingerprint: b.identity.key for b in entries}
        for conn in watched:
            if self.connections.get(conn.conn_id) is not conn:
                continue  # it ended while the query ran
            assert conn.auth is not None and conn.session is not None
            if all(owner.get(f) == conn.session.identity.key for f in conn.auth.bound_keys):
                continue
            self.audit.emit("session.revoked", conn=conn.conn_id,
                            user=conn.session.identity.name, keys=list(conn.auth.bound_keys))
            conn.close_with_notice("your key binding was revoked; session ended", "killed",
                                   "key binding revoked")

    async def _upkeep_loop(self) -> None:
        idle = self.config.server.idle_timeout
        rounds = 0
        while True:
            await asyncio.sleep(_UPKEEP_INTERVAL)
            rounds += 1
            if rounds % _REVOCATION_EVERY == 0:
                await self._end_revoked()
            try:
                self.spool.flush_due()
            except Exception:  # a flush error is handled by the writer on its next write
                log.exception("flushing recordings failed")
            try:
                await self.sync_sessions()
            except BastionError as exc:  # the state database is busy or gone: try again
                log.warning("session registry: %s", exc)
            if idle:
                now = time.monotonic()
                for conn in list(self.connections.values()):
                    session = conn.session
                    if session is not None and now - session.last_activity > idle:
                        self.audit.emit("session.idle_timeout", conn=conn.conn_id,
                                        user=session.identity.name)
                        conn.close_with_notice(f"idle for {idle:.0f}s; session closed",
                                               "closed", "idle timeout")

    # -- running sessions and kills ---------------------------------------------------------
    def _live_sessions(self) -> dict[str, BastionConnection]:
        live: dict[str, BastionConnection] = {}
        for conn in self.connections.values():
            session = conn.session
            if session is not None and session.recording is not None \
                    and session.upstream is not None and not session.is_closed():
                live[session.recording.session_id] = conn
        return live

    async def sync_sessions(self) -> None:
        """Keep this node's rows of running sessions current; carry out kill requests. The
        database work runs in a worker thread: the event loop never waits for it."""
        live = self._live_sessions()
        added = []
        for session_id in live.keys() - self._registered:
            session = live[session_id].session
            assert session is not None and session.authorization is not None
            added.append(RunningSession(
                session_id=session_id, node=self.config.server.node_id,
                user=session.identity.name, target=session.authorization.target.name,
                login=session.authorization.login, client=session.client.address,
                conn=session.client.conn_id, pid=os.getpid(), started=time.time()))
        gone = self._registered - live.keys()
        kills = await asyncio.get_running_loop().run_in_executor(
            None, self._sync_registry, added, gone, bool(live))
        self._registered = set(live)
        live = self._live_sessions()  # as it is now, after the wait
        for kill in kills:
            if kill.session_id in live:
                self.kill_session(live[kill.session_id], kill)

    def _sync_registry(self, added: list[RunningSession], gone: set[str],
                       any_live: bool) -> list[KillRequest]:
        for row in added:
            self.registry.register(row)
        self.registry.unregister(gone)
        return self.registry.pending_kills(self.config.server.node_id) if any_live else []

    def kill_session(self, conn: BastionConnection, kill: KillRequest) -> None:
        """End a session an analyst asked to end: a marker in its recording, the reason on
        the user's terminal, the session ended as "killed"."""
        for channel in conn.channels:
            if channel.relay is not None:  # (a failing recording ends its channel itself)
                channel.relay.marker(f"killed: {kill.reason} by {kill.requested_by}")
        self.audit.emit("session.killed", conn=conn.conn_id, session=kill.session_id,
                        by=kill.requested_by, reason=kill.reason)
        conn.close_with_notice(f"session ended by {kill.requested_by}: {kill.reason}",
                               "killed", f"killed by {kill.requested_by}: {kill.reason}")
        # Marked in a worker thread: the event loop never waits for the database.
        done = asyncio.get_running_loop().run_in_executor(None, self.registry.mark_done,
                                                          kill.session_id)
        done.add_done_callback(_log_state_failure)

    def stop_accepting(self) -> None:
        """Take no new connections (a worker replaced after a config reload: it finishes the
        sessions it runs, then stops; a login under way goes on)."""
        self._accepting = False
        self._publish_load()
        if isinstance(self._acceptor, ProxyListener):
            self._acceptor.stop_accepting()
        elif self._acceptor is not None:
            self._acceptor.close()

    @property
    def idle(self) -> bool:
        """No connection is open."""
        return not self.connections

    async def stop(self) -> None:
        """Stop listening and end every session with a notice; recordings are finished."""
        self._accepting = False
        self._publish_load()
        if self._acceptor is not None:
            self._acceptor.close()
        for conn in list(self.connections.values()):
            conn.close_with_notice("the bastion is shutting down", "closed", "shutdown")
        if self._upkeep is not None:
            self._upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._upkeep
        if self._acceptor is not None:
            await self._acceptor.wait_closed()
        # Recordings are finished as connections go: wait for them, then force the stragglers.
        if not await self._drained(_SHUTDOWN_GRACE):
            for conn in list(self.connections.values()):
                if conn.conn is not None:
                    conn.conn.abort()
            await self._drained(_SHUTDOWN_GRACE)
        if self.relay_services.upstreams is not None:
            self.relay_services.upstreams.close_all()  # parked target connections
        self.spool.flush_due()
        # Every recording's last fsyncs and session.json, then the seals they trigger.
        await asyncio.get_running_loop().run_in_executor(None, self.spool.drain)
        await asyncio.sleep(0)  # run the finished-recording callbacks the drain scheduled
        if self._sealing:
            await asyncio.gather(*self._sealing, return_exceptions=True)
        with contextlib.suppress(BastionError):
            self.registry.unregister(self._registered)
        # Every place given back has reached the state database before the process goes.
        await asyncio.to_thread(self.limits.flush, _SHUTDOWN_GRACE)
        if self.role is not None:
            self.audit.emit("worker.stop", worker=self.role.index, pid=os.getpid())
        else:
            self.audit.emit("server.stop")


def _log_state_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.warning("session registry: %s", exc)


async def serve(config: Config, audit: AuditLog, ready: Callable[[int], None] | None = None,
                role: WorkerRole | None = None) -> None:
    """Run the bastion (or one worker of it) until SIGTERM or SIGINT; a worker also stops
    after SIGUSR1 (its supervisor replaced it) once its last connection closed."""
    server = BastionServer(config, audit, role)
    await server.start()
    # What start-up made (modules, config, compiled detectors: most of the heap) lives as long
    # as the process: out of the collector's way. A full collection walked all of it, 61-68 ms
    # in a worker relaying 25 busy terminals, and every keystroke waiting meanwhile waited too.
    gc.freeze()
    if ready is not None:
        ready(server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    draining: list[asyncio.Task[None]] = []

    async def drain() -> None:
        server.stop_accepting()
        assert role is not None
        audit.emit("worker.draining", worker=role.index, connections=len(server.connections))
        await server.wait_idle()
        stop.set()

    def start_draining() -> None:
        if not draining:
            draining.append(loop.create_task(drain()))

    if role is not None:
        loop.add_signal_handler(signal.SIGUSR1, start_draining)
    try:
        await stop.wait()
    finally:
        for task in draining:
            task.cancel()
        await server.stop()
