"""The state database: one interface, two backends (SQLite for one host, PostgreSQL for several).

Callers (key bindings, TOTP, the running-session registry, approvals) write SQL in the subset
both backends speak: ``?`` parameters, ``INSERT ... ON CONFLICT (...) DO UPDATE``, the column
types TEXT, INTEGER, REAL and BLOB, and no ``?`` or ``%`` inside SQL text. Rows answer to column
names and positions alike. Every change is one short ``transaction()``; reads are ``query()``.

Schema changes are appended to ``MIGRATIONS`` (never edited once released: a migration that ran
stays run) and only add tables, columns and indexes, so that nodes still on the previous version
keep working on a migrated shared database during a node-by-node upgrade. The schema version is
the number of migrations applied. SQLite applies them when the file is opened (one host,
nothing to coordinate); PostgreSQL only through ``bastion migrate``, and a server refuses a
database whose schema is older or newer than its own (see
``bastion.state.backends.open_state``), so several nodes never race to change a shared schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

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
        "user"     TEXT NOT NULL,     -- quoted: a reserved word in PostgreSQL
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
    # 4: command approval requests (bastion/approvals/store.py); decided by any process
    """
    CREATE TABLE approvals (
        id             TEXT PRIMARY KEY,   -- short random id shown to user and approver
        state          TEXT NOT NULL,      -- pending, approved, denied, expired, cancelled
        created        REAL NOT NULL,
        expires        REAL NOT NULL,
        node           TEXT NOT NULL,      -- the bastion node holding the command
        session_id     TEXT NOT NULL,
        channel        INTEGER NOT NULL,
        requester      TEXT NOT NULL,      -- Identity.key of the user who typed the command
        requester_name TEXT NOT NULL,
        target         TEXT NOT NULL,
        login          TEXT NOT NULL,
        command        TEXT NOT NULL,      -- masked command line
        rule           TEXT,
        decided_by     TEXT,               -- Identity.key of the approver
        decided_name   TEXT,
        decided_at     REAL,
        reason         TEXT
    );
    CREATE INDEX approvals_state ON approvals (state, created);
    """,
    # 5: places held under a limit, shared by the worker processes and nodes (session cap per
    # identity, unauthenticated connections per source, device logins per source per minute);
    # see bastion/state/limits.py
    """
    CREATE TABLE limit_holds (
        scope   TEXT NOT NULL,        -- which limit: session, unauthenticated, device_login
        subject TEXT NOT NULL,        -- whose: Identity.key, node|address, address
        slot    INTEGER NOT NULL,     -- 0 .. limit-1: the primary key keeps the count exact
        node    TEXT NOT NULL,        -- the holder: node id, process id, id in the process
        pid     INTEGER NOT NULL,
        holder  TEXT NOT NULL,
        lease   INTEGER NOT NULL,     -- 1: renewed while its process lives, 0: a rate entry
        expires REAL NOT NULL,        -- free from then on (unix time)
        PRIMARY KEY (scope, subject, slot)
    );
    CREATE INDEX limit_holds_process ON limit_holds (node, pid);
    CREATE INDEX limit_holds_expires ON limit_holds (expires);
    """,
)


class Row(Protocol):
    """A result row: ``row["column"]`` or ``row[0]``."""

    def __getitem__(self, key: int | str, /) -> Any: ...


class Cursor(Protocol):
    """The cursor a transaction hands out (a DB-API cursor with ``?`` parameters)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> Cursor: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class StateDB:
    """A connection (or pool) to the state database, safe to share between threads.

    ``StateDB(path)`` still opens the SQLite file at ``path`` (what callers and tests did before
    there were two backends); ``open_state(config)`` picks the backend the config names.
    """

    backend: str  # "sqlite" or "postgresql"
    where: str  # the file or host/database, for messages (never a password)

    # The SQLite class, set when bastion.state.sqlite is imported (the package does that), so
    # that this module need not import its own backends.
    default_backend: type[StateDB] | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> StateDB:
        if cls is StateDB:
            assert StateDB.default_backend is not None, "bastion.state.sqlite not imported"
            return super().__new__(StateDB.default_backend)
        return super().__new__(cls)

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> StateDB:
        """Open (creating and migrating if needed) the SQLite database in ``state_dir``."""
        return StateDB(state_dir / DB_NAME)

    def transaction(self) -> AbstractContextManager[Cursor]:
        """One write transaction; committed when the block ends, rolled back if it raises."""
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Rows of a read-only query."""
        raise NotImplementedError

    @property
    def schema_version(self) -> int:
        """The number of migrations applied to this database."""
        raise NotImplementedError

    def migrate(self) -> list[int]:
        """Apply the migrations this database lacks; return their numbers."""
        raise NotImplementedError

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One change in a transaction of its own; the number of rows it changed."""
        with self.transaction() as cur:
            return cur.execute(sql, params).rowcount

    def close(self) -> None:
        """Close the connection(s)."""
        raise NotImplementedError

    def check_schema(self) -> None:
        """Refuse a database whose schema is not this bastion's."""
        version, wanted = self.schema_version, len(MIGRATIONS)
        if version > wanted:
            raise StateError(f"state database {self.where} has schema {version}, newer than "
                             f"this bastion ({wanted}); upgrade bastion")
        if version < wanted:
            raise StateError(f"state database {self.where} has schema {version}, this bastion "
                             f"needs {wanted}; run `bastion migrate`")


def statements(script: str) -> list[str]:
    """The statements of a migration script (no ``;`` inside comments or strings, by rule)."""
    return [s for s in (part.strip() for part in script.split(";")) if s]


_PG_TYPES = {"REAL": "DOUBLE PRECISION", "BLOB": "BYTEA"}


def postgresql_dialect(script: str) -> str:
    """A migration script for PostgreSQL: REAL is 8-byte there only as DOUBLE PRECISION (a
    4-byte REAL would round timestamps to minutes), BLOB is BYTEA."""
    return re.sub(r"\b(REAL|BLOB)\b", lambda m: _PG_TYPES[m.group(1)], script)
