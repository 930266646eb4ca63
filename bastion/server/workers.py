"""``bastion serve --workers N``: a supervisor and N worker processes on one listening port.

One Python event loop relays every byte of its sessions, so one process uses one core. The
supervisor does what must happen once per node (lock the spool, recover and seal what a crash
left, clear the node's stale rows, bind the port) and forks the workers; each worker is a whole
bastion (``server.app.serve``) accepting on the port. Workers are forked, not spawned: they
start in milliseconds with every module already imported. The supervisor never runs an event
loop or a thread, so forking from it is safe.

- A worker that dies is replaced; its recordings are recovered and sealed as interrupted (the
  per-session liveness locks of ``recording.liveness`` tell its folders from the live ones of
  the other workers), its rows in the running-session registry and its limit holds are dropped.
- SIGTERM/SIGINT: every worker stops gracefully (sessions end with a notice), then the
  supervisor. A worker dies with its supervisor (PR_SET_PDEATHSIG), as if the node crashed.
- SIGHUP: the config is read again; if it loads, new workers start with it and the old ones
  stop accepting and exit when their last session ends (SIGUSR1). A config that does not load
  changes nothing (logged, audited). Paths and the node id need a restart.

Evidence: every worker seals into the node's one hash chain; sealing is serialized by the
chain's flock (``evidence.seal``), so the chain stays one ordered chain per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import enum
import gc
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bastion.audit import AuditLog
from bastion.config import load_config
from bastion.config.model import Config, WorkerBalance
from bastion.credentials.hostkeys import load_host_keys
from bastion.credentials.vault import Vault, load_vault_key
from bastion.errors import BastionError, ConfigError, WorkerStartFailed
from bastion.evidence.seal import Sealer
from bastion.recording import Spool
from bastion.server.app import BastionServer, WorkerRole, audit_recovery, serve
from bastion.server.balance import NOT_ACCEPTING, WorkerLoads
from bastion.server.preflight import preflight
from bastion.state.backends import open_state
from bastion.state.limits import LimitStore
from bastion.state.sessions import SessionRegistry

log = logging.getLogger("bastion.server")

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_READY_TIMEOUT = 60.0  # seconds a worker has to start listening
_STOP_TIMEOUT = 30.0  # seconds workers have to stop gracefully before they are killed
_RESTART_WINDOW = 60.0  # a worker slot that dies this often within this window...
_RESTART_LIMIT = 5  # ...stops the node: something is wrong that restarting will not fix
_PR_SET_PDEATHSIG = 1
EXIT_FAILED = 1
_LOCK_WAIT = 10.0  # seconds to wait for the spool lock (the workers of a crashed node dying)


def worker_count(config: Config, requested: int | None) -> int:
    """Workers to run: ``--workers``, else ``server.workers``, where 0 means one per CPU."""
    wanted = requested if requested is not None else config.server.workers
    return wanted if wanted > 0 else (os.cpu_count() or 1)


class Phase(enum.Enum):
    """Where a worker is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"  # replaced by a reload: finishing its sessions


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why the node stops: a line to print (None: the worker printed its own) and the exit
    status."""

    message: str | None
    code: int


@dataclasses.dataclass
class Worker:
    index: int
    generation: int
    pid: int
    ready_fd: int  # read end of the pipe the worker writes one byte to once it listens
    slot: int  # its place in the supervisor's WorkerLoads
    phase: Phase = Phase.STARTING


def bind_listener(config: Config) -> socket.socket:
    """The node's listening socket (what asyncssh would have bound), inherited by workers.

    With ``worker_balance = "reuseport"`` it is one of a group: each worker binds its own
    socket to the same port and the kernel spreads connections over them by address hash."""
    family, kind, proto, _, address = socket.getaddrinfo(
        config.server.listen, config.server.port, type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if config.server.worker_balance is WorkerBalance.REUSEPORT:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if config.server.worker_balance is WorkerBalance.SHARED:
            sock.listen(1024)  # (a reuseport socket that listened would take its share)
    except OSError:
        sock.close()
        raise
    return sock


def _own_listener(shared: socket.socket) -> socket.socket:
    """A worker's own socket on the shared one's port (``reuseport`` balance)."""
    host, port = shared.getsockname()[:2]
    sock = socket.socket(shared.family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when the supervisor dies (a crash of the node)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


class Supervisor:
    """Runs and watches the workers of one node; see the module docstring."""

    def __init__(self, config_path: Path, config: Config, audit: AuditLog,
                 requested_workers: int | None,
                 announce: Callable[[int, int], None]) -> None:
        self.config_path = config_path
        self.config = config
        self.audit = audit
        self.requested_workers = requested_workers
        self.announce = announce  # (port, workers): the "listening on" line
        self.spool = Spool(config.paths.spool_dir, config.server.node_id)
        self.listener: socket.socket | None = None
        self.workers: dict[int, Worker] = {}  # by pid
        # Open connections per worker, for the shared socket's balance (server/balance.py):
        # mapped here, before any fork, so that every worker shares it (a reload may switch
        # worker_balance, so it is there either way).
        self.loads = WorkerLoads()
        self.generation = 0
        self._deaths: dict[int, list[float]] = {}  # worker index -> recent death times
        self._restart: list[int] = []  # worker indexes waiting to be started again
        self._stopping = False
        # Called (in a short-lived child) with the config and pid of a worker that ended.
        self.on_worker_gone: list[Callable[[Config, int], None]] = []

    # -- once per node ------------------------------------------------------------------------
    def _prepare_node(self) -> None:
        """Check that a worker can start, lock the spool, recover and seal what a crash left,
        clear stale rows (as one process would at start), and bind the port."""
        self._probe_worker()
        # Created once here, not raced by the workers: a missing vault file, host key.
        Vault.open(self.config.vault.path, load_vault_key(self.config.vault), create=True)
        _, notes = load_host_keys(self.config.server.host_keys, create=True)
        for note in notes:
            log.warning("%s", note)
        self.spool.lock(wait=_LOCK_WAIT)
        self._in_child(self._recover)
        self._in_child(lambda: self._forget_rows(None))
        try:
            self.listener = bind_listener(self.config)
        except OSError as exc:
            server = self.config.server
            raise ConfigError(f"cannot listen on {server.listen}:{server.port}: "
                              f"{exc.strerror or exc}") from None

    def _recover(self) -> None:
        """Recover the recordings no live process holds and seal what is finished."""
        recovered = self.spool.recover()
        audit_recovery(self.audit, self.spool)
        if self.config.evidence is None or self.config.evidence.signing_key is None:
            return
        sealed, failed = Sealer.from_config(self.config).seal_spool(self.config.paths.spool_dir)
        for manifest in sealed:
            self.audit.emit("recording.sealed", session=manifest.parent.name)
        for path, error in failed:
            log.error("cannot seal recording %s: %s", path.name, error)
            self.audit.emit("recording.seal_failed", session=path.name, error=error)
        if recovered:
            log.info("recovered %d recording(s)", len(recovered))

    def _forget_rows(self, pid: int | None) -> None:
        """Drop the running-session rows and the limit holds (session places, connections
        not signed in) of the node (pid None) or of one dead worker."""
        node = self.config.server.node_id
        try:
            db = open_state(self.config)
        except BastionError as exc:
            log.warning("session registry: %s", exc)
            return
        try:
            registry, limits = SessionRegistry(db), LimitStore(db, node)
            if pid is None:  # the node starts: what its previous run left
                registry.clear_node(node)
                limits.forget_node(node)
            else:
                registry.clear_process(node, pid)
                limits.forget_process(node, pid)
        except BastionError as exc:
            log.warning("session registry: %s", exc)
        finally:
            db.close()

    def _in_child(self, work: Callable[[], None]) -> None:
        """Run ``work`` in a forked child and wait for it: database pools and executor threads
        are never created in the supervisor, which must stay safe to fork from."""
        sys.stdout.flush()
        sys.stderr.flush()
        # The supervisor's objects out of the collector's way before the fork: a worker's
        # collections then leave the pages it shares with the supervisor unwritten (the
        # gc module's documentation for fork without exec).
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                work()
                code = 0
            except BaseException:
                log.exception("node upkeep failed")
            finally:
                os._exit(code)
        os.waitpid(pid, 0)

    def _probe_worker(self) -> None:
        """Build a worker's services once in a child (state database, vault key, CA, signing
        key, features) so that what stops every worker stops the start with its one line."""
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            code = 1
            try:
                server = BastionServer(self.config, self.audit)
                server.identity.db.close()
                code = 0
            except BastionError as exc:
                os.write(write_fd, str(exc).encode())
                code = exc.exit_code
            except BaseException:
                log.exception("a worker cannot start")
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as said:
            message = said.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise WorkerStartFailed(message or "a worker cannot start (see the log above)",
                                    code if code > 0 else EXIT_FAILED)

    # -- workers ------------------------------------------------------------------------------
    def _fork_worker(self, index: int) -> Worker:
        assert self.listener is not None
        config, listener, lock_fd = self.config, self.listener, self.spool.lock_fd
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        slot = self.loads.free_slot({w.slot for w in self.workers.values()})
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker; never returns
            os.close(read_fd)
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor's to act on
                _die_with_parent(parent)
                role = WorkerRole(index, lock_fd, listener, self.loads, slot)
                code = run_worker(config, role, write_fd, self.audit)
            except BaseException:  # a worker must never fall back into the supervisor's code
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        os.close(write_fd)
        worker = Worker(index, self.generation, pid, read_fd, slot)
        self.workers[pid] = worker
        return worker

    def _await_ready(self, started: list[Worker]) -> Failure | None:
        """Wait until each started worker listens; what went wrong if one dies or hangs
        first (a worker that fails to start has printed its one line already)."""
        deadline = time.monotonic() + _READY_TIMEOUT
        waiting = {w.ready_fd: w for w in started}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                index = next(iter(waiting.values())).index
                return Failure(f"worker {index} did not start listening", EXIT_FAILED)
            readable, _, _ = select.select(list(waiting), [], [], left)
            for fd in readable:
                worker = waiting.pop(fd)
                if not os.read(fd, 1):
                    self.workers.pop(worker.pid, None)
                    os.close(worker.ready_fd)
                    _, status = os.waitpid(worker.pid, 0)
                    return Failure(None, os.waitstatus_to_exitcode(status) or EXIT_FAILED)
                worker.phase = Phase.RUNNING
        return None

    def _start_generation(self, count: int) -> Failure | None:
        self.generation += 1
        started = [self._fork_worker(i) for i in range(1, count + 1)]
        failure = self._await_ready(started)
        if failure is not None:
            for worker in started:
                self._signal(worker, signal.SIGKILL)
        return failure

    def _signal(self, worker: Worker, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, sig)

    def _reap(self) -> list[tuple[Worker, int]]:
        """Collect exited workers: (worker, wait status)."""
        gone = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self.workers.pop(pid, None)
            if worker is not None:
                os.close(worker.ready_fd)
                # (a worker killed could not say it stopped accepting)
                self.loads.publish(worker.slot, NOT_ACCEPTING)
                gone.append((worker, status))
        return gone

    def _worker_exited(self, worker: Worker, status: int) -> None:
        how = (f"signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
               else f"exit status {os.waitstatus_to_exitcode(status)}")
        replaced = worker.generation == self.generation and not self._stopping
        if replaced:
            log.warning("worker %d (pid %d) ended: %s", worker.index, worker.pid, how)
        self.audit.emit("worker.exited", worker=worker.index, pid=worker.pid, how=how,
                        replaced=replaced)
        pid, config = worker.pid, self.config

        def clean_up() -> None:
            self._recover()
            self._forget_rows(pid)
            for hook in self.on_worker_gone:
                hook(config, pid)

        self._in_child(clean_up)
        if replaced:
            self._restart.append(worker.index)

    def _restart_due(self) -> Failure | None:
        now = time.monotonic()
        for index in self._restart:
            deaths = [t for t in self._deaths.get(index, []) if now - t < _RESTART_WINDOW]
            deaths.append(now)
            self._deaths[index] = deaths
            if len(deaths) > _RESTART_LIMIT:
                return Failure(f"worker {index} died {len(deaths)} times within "
                               f"{_RESTART_WINDOW:.0f}s; stopping", EXIT_FAILED)
            worker = self._fork_worker(index)
            failure = self._await_ready([worker])
            if failure is not None:
                return failure
            self.audit.emit("worker.restarted", worker=index, pid=worker.pid)
        self._restart.clear()
        return None

    # -- reload ------------------------------------------------------------------------------
    def _reload(self) -> None:
        try:
            config = load_config(self.config_path)
            problems = preflight(config)
            if problems:
                raise BastionError(problems[0])
            if (config.paths, config.server.node_id) != (self.config.paths,
                                                          self.config.server.node_id):
                raise BastionError("[paths] and server.node_id change only with a restart")
        except BastionError as exc:
            log.error("config reload refused: %s", exc)
            self.audit.emit("server.reload_failed", error=str(exc))
            return
        old, old_listener = self.config, self.listener
        assert old_listener is not None
        bound = int(old_listener.getsockname()[1])
        # (port 0 in the old config: the port it got stays; the same port given now too)
        moved = (config.server.listen, config.server.worker_balance) != \
            (old.server.listen, old.server.worker_balance) \
            or config.server.port not in (0, bound)
        self.config = config
        try:
            if moved:
                self.listener = bind_listener(config)
        except OSError as exc:
            self.config = old
            log.error("config reload refused: cannot listen: %s", exc.strerror)
            self.audit.emit("server.reload_failed", error=f"cannot listen: {exc.strerror}")
            return
        previous = [w for w in self.workers.values() if w.generation == self.generation]
        failure = self._start_generation(worker_count(config, self.requested_workers))
        if failure is not None:
            self.config, self.generation = old, self.generation - 1
            if moved and self.listener is not None:
                self.listener.close()
            self.listener = old_listener
            problem = failure.message or "a new worker failed to start"
            log.error("config reload refused: %s", problem)
            self.audit.emit("server.reload_failed", error=problem)
            return
        for worker in previous:
            worker.phase = Phase.DRAINING
            self._signal(worker, signal.SIGUSR1)
        if moved and old_listener is not None:
            old_listener.close()  # the draining workers closed their copies already
        self.audit.emit("server.reloaded", generation=self.generation,
                        workers=worker_count(config, self.requested_workers))
        log.info("config reloaded: %d new worker(s); %d finishing their sessions",
                 worker_count(config, self.requested_workers), len(previous))

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM/SIGINT (0) or a failure that restarting cannot fix (1)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        self._prepare_node()
        assert self.listener is not None
        count = worker_count(self.config, self.requested_workers)
        failure = self._start_generation(count)
        if failure is None:
            port = int(self.listener.getsockname()[1])
            self.audit.emit("server.start", listen=self.config.server.listen, port=port,
                            workers=count, balance=self.config.server.worker_balance.value)
            self.announce(port, count)
            failure = self._supervise()
        if failure is not None and failure.message is not None:
            print(f"bastion: {failure.message}", file=sys.stderr)
        self._stop_all()
        self.audit.emit("server.stop")
        self.spool.unlock()
        return 0 if failure is None else failure.code

    def _supervise(self) -> Failure | None:
        while True:
            info = signal.sigtimedwait(_SIGNALS, 1.0)
            for worker, status in self._reap():
                self._worker_exited(worker, status)
            if info is None:
                continue
            if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                return None
            if info.si_signo == signal.SIGHUP:
                self._reload()
            failure = self._restart_due()
            if failure is not None:
                return failure

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait for them (graceful stop), kill the stragglers."""
        self._stopping = True
        for worker in list(self.workers.values()):
            self._signal(worker, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while self.workers and time.monotonic() < deadline:
            signal.sigtimedwait({signal.SIGCHLD}, 0.5)
            for worker, status in self._reap():
                self._worker_exited(worker, status)
        for worker in list(self.workers.values()):
            self._signal(worker, signal.SIGKILL)
        while self.workers:
            pid, status = os.waitpid(-1, 0)
            if (ended := self.workers.pop(pid, None)) is not None:
                os.close(ended.ready_fd)
                self._worker_exited(ended, status)


def run_worker(config: Config, role: WorkerRole, ready_fd: int, parent_audit: AuditLog) -> int:
    """The body of a forked worker: a fresh audit writer and event loop, then ``serve``."""
    parent_audit.close()  # the worker's own writer names the worker in each event
    audit = AuditLog(config.paths.audit_log, config.server.node_id, worker=role.index)
    if config.server.worker_balance is WorkerBalance.REUSEPORT:
        own = _own_listener(role.listener)
        role.listener.close()
        role = dataclasses.replace(role, listener=own)

    def ready(_port: int) -> None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)

    try:
        import uvloop  # faster event loop for the relay; optional

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(config, audit, ready, role))
    except BastionError as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        audit.close()
    return 0
