"""The state database: one SQLite file under the state directory, WAL mode, versioned schema.

The server and the CLI open it at the same time (``bastion keys revoke`` while connections come
in), so it runs in WAL mode with a busy timeout, and every change is one short transaction.
Schema changes are appended to ``MIGRATIONS``; ``PRAGMA user_version`` records how many ran.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bastion.errors import StateError

DB_NAME = "state.sqlite3"

MIGRATIONS: tuple[str, ...] = (
    # 1: key bindings (a public key bound to an OIDC identity until `expires`)
    """
    CREATE TABLE key_bindings (
        fingerprint TEXT PRIMARY KEY,      -- SHA256:... of the public key
        public_key  TEXT NOT NULL,         -- OpenSSH public key line
        issuer      TEXT NOT NULL,
        subject     TEXT NOT NULL,
        name        TEXT NOT NULL,
        email       TEXT,
        groups_json TEXT NOT NULL,         -- groups seen at login, JSON list
        client      TEXT NOT NULL,         -- address the login came from
        created     REAL NOT NULL,
        expires     REAL NOT NULL,
        last_used   REAL
    );
    CREATE INDEX key_bindings_identity ON key_bindings (issuer, subject);
    """,
    # 2: TOTP secrets (sealed with AES-GCM) and failed attempts for rate limiting
    """
    CREATE TABLE totp_secrets (
        identity  TEXT PRIMARY KEY,        -- Identity.key: issuer|subject
        sealed    BLOB NOT NULL,           -- nonce || AES-GCM(secret), AAD = identity
        created   REAL NOT NULL,
        last_step INTEGER NOT NULL DEFAULT -1  -- newest time step accepted: codes work once
    );
    CREATE TABLE totp_failures (
        identity TEXT NOT NULL,
        at       REAL NOT NULL
    );
    CREATE INDEX totp_failures_identity ON totp_failures (identity, at);
    """,
    # 3: running sessions (written by each node's server) and kill requests (bastion sessions
    # kill); see bastion/state/sessions.py
    """
    CREATE TABLE running_sessions (
        session_id TEXT PRIMARY KEY,
        node       TEXT NOT NULL,
        user       TEXT NOT NULL,
        target     TEXT NOT NULL,
        login      TEXT NOT NULL,
        client     TEXT NOT NULL,
        conn       TEXT NOT NULL,      -- connection number within the node's server
        pid        INTEGER NOT NULL,   -- the server process (shown, never signalled)
        started    REAL NOT NULL
    );
    CREATE TABLE session_kills (
        session_id   TEXT PRIMARY KEY,
        reason       TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        requested    REAL NOT NULL,
        done         REAL               -- set by the server once the session was ended
    );
    """,
)


class StateDB:
    """A connection to the state database, safe to share between threads of one process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            new = not path.exists()
            self._conn = sqlite3.connect(path, timeout=10.0, isolation_level=None,
                                         check_same_thread=False)
            if new:
                os.chmod(path, 0o600)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state database {path}: {exc}") from None
        except OSError as exc:
            raise StateError(f"cannot open state database {path}: {exc.strerror}") from None

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> StateDB:
        """Open (creating if needed) the database in ``state_dir``."""
        return cls(state_dir / DB_NAME)

    def _migrate(self) -> None:
        with self.transaction() as cur:
            version = cur.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StateError(f"state database {self.path} has schema {version}, newer than "
                                 f"this bastion ({len(MIGRATIONS)}); upgrade bastion")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    cur.execute(statement)
                cur.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        """The schema version this database is at."""
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """One immediate (write-locked) transaction; rolled back if the block raises."""
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                yield cur
                cur.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.rollback()
                raise StateError(f"state database {self.path}: {exc}") from None
            except BaseException:
                self._conn.rollback()
                raise
            finally:
                cur.close()

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """Rows of a read-only query."""
        with self._lock:
            try:
                cur = self._conn.cursor()
                cur.row_factory = sqlite3.Row
                return list(cur.execute(sql, params))
            except sqlite3.Error as exc:
                raise StateError(f"state database {self.path}: {exc}") from None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()
