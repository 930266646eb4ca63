"""A throwaway PostgreSQL cluster for tests and the benchmark: initdb in a temp dir, one server
on a free port on 127.0.0.1 (its unix socket in the temp dir), stopped by pid and removed
afterwards.

PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres`` user that
Debian's package creates (the processes are started with ``user=`` and nothing else changes).
Authentication is ``trust``: the cluster lives for one test run and listens on loopback only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

from bastion.demo.procs import ProcessFailed, free_port, port_open

SUPERUSER = "bastion"


def postgres_bin() -> Path:
    """Debian's PostgreSQL programs (/usr/lib/postgresql/<major>/bin, newest major)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise ProcessFailed("PostgreSQL is not installed (scripts/setup installs Debian's "
                            "postgresql)")
    return Path(found[-1]).parent


class ThrowawayPostgres:
    """``with ThrowawayPostgres() as pg: pg.new_database()`` -> a postgresql:// URL."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="bastion-pg-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._user: str | None = "postgres" if os.geteuid() == 0 else None

    def _run_as(self) -> dict[str, object]:
        return {"user": self._user} if self._user else {}

    def start(self) -> ThrowawayPostgres:
        """initdb, start the server, wait until it accepts connections."""
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        data = self.dir / "data"
        subprocess.run([str(self.bin / "initdb"), "-D", str(data), "-U", SUPERUSER,
                        "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"],
                       check=True, capture_output=True, cwd=self.dir, **self._run_as())  # type: ignore[call-overload]
        return self.resume()

    def resume(self) -> ThrowawayPostgres:
        """(Re)start the server on the cluster's port and wait until it takes connections."""
        data = self.dir / "data"
        log = (self.dir / "server.log").open("ab")
        self.proc = subprocess.Popen(  # type: ignore[call-overload]
            [str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port),
             "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=self.dir, **self._run_as())
        log.close()
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.dir / "server.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise ProcessFailed(f"PostgreSQL did not start:\n{tail}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        if not port_open("127.0.0.1", self.port):
            return False
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:  # still starting up
            return False

    def url(self, dbname: str) -> str:
        """The URL of a database in this cluster."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """Create an empty database; return its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown by pid (SIGINT), SIGKILL to the group if it lingers; remove the dir."""
        self.pause()
        shutil.rmtree(self.dir, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server (an outage), keeping the cluster for ``resume()``."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
