"""The PostgreSQL backend: several bastion nodes (and their CLIs) share one database.

psycopg 3 with psycopg_pool, not asyncpg: every caller of the state database is synchronous
(key bindings, TOTP, the session registry; the CLI; the server calls it from worker threads or
for one short primary-key lookup), and psycopg's synchronous API with a thread-safe pool fits
them as they are, where asyncpg would need an event loop in every caller and a second API.

Transactions run at READ COMMITTED. Read-modify-write that must not race between nodes is
written as a conditional UPDATE (TOTP steps) or an upsert, which PostgreSQL makes atomic.
The schema version lives in the one-row table ``bastion_schema``; ``migrate`` takes a
transaction-scoped advisory lock so two nodes running ``bastion migrate`` at once take turns.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import psycopg
import psycopg.conninfo
import psycopg_pool

from bastion.errors import StateError
from bastion.secret import Secret
from bastion.state.db import MIGRATIONS, Cursor, Row, StateDB, postgresql_dialect, statements

MIGRATE_LOCK = 0x62617374  # pg_advisory_xact_lock key of `bastion migrate` ("bast")
RECONNECT_WINDOW = 10.0  # seconds one series of reconnection attempts lasts (see the pool)


class PgRow:
    """A row answering to column names and positions, like sqlite3.Row."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str, /) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        """The column names."""
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: PgRow(values, index)


@functools.lru_cache(maxsize=512)
def to_pyformat(sql: str) -> str:
    """``?`` parameters as psycopg's ``%s`` (and a literal ``%`` escaped)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PgCursor:
    """A psycopg cursor that takes ``?`` parameters (the interface's style)."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor:
        if params:
            self._cursor.execute(cast(Any, to_pyformat(sql)), params)
        else:
            self._cursor.execute(cast(Any, sql))
        return self

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> Cursor:
        self._cursor.executemany(cast(Any, to_pyformat(sql)), params)
        return self

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cursor)


def describe(url: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL, for messages (never the password)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        raise StateError("state.url is not a valid PostgreSQL URL") from None
    host = str(info.get("host") or "localhost")
    return f"postgresql {host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class PostgresStateDB(StateDB):
    """A pool of connections to the shared PostgreSQL database."""

    backend = "postgresql"

    def __init__(self, url: Secret[str], pool_size: int = 4,
                 connect_timeout: float = 10.0) -> None:
        self.where = describe(url.reveal())
        # One direct connection first: it fails at once with libpq's reason (refused, no such
        # database, authentication) where the pool would retry quietly until its timeout.
        try:
            psycopg.connect(url.reveal(), connect_timeout=max(1, int(connect_timeout))).close()
        except psycopg.Error as exc:
            raise StateError(f"cannot connect to state database {self.where}: "
                             f"{_first_line(exc)}") from None
        self._pool = psycopg_pool.ConnectionPool(
            url.reveal(), min_size=1, max_size=pool_size, open=False, timeout=connect_timeout,
            # A connection is checked as it is taken from the pool: after a database restart
            # or failover the first operations get a fresh connection instead of an error.
            check=psycopg_pool.ConnectionPool.check_connection,
            # psycopg_pool retries a lost connection with exponential backoff (1, 2, 4, ... s)
            # until reconnect_timeout; after a long outage the next try could then be a minute
            # away while the database is back. A short window ends that series soon, and the
            # next login that needs a connection starts a fresh one at once.
            reconnect_timeout=RECONNECT_WINDOW,
            kwargs={"autocommit": True, "row_factory": _row_factory,
                    "connect_timeout": max(1, int(connect_timeout))},
            name="bastion-state")
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except (psycopg_pool.PoolTimeout, psycopg.Error) as exc:
            self._pool.close()
            raise StateError(f"cannot connect to state database {self.where} "
                             f"within {connect_timeout:g}s ({_first_line(exc)})") from None

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """One transaction on a pooled connection; rolled back if the block raises."""
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as raw:
                yield _PgCursor(raw)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StateError(f"state database {self.where}: {_first_line(exc)}") from None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Rows of a read-only query (one statement, autocommit)."""
        try:
            with self._pool.connection() as conn, conn.cursor() as raw:
                return cast(list[Row], _PgCursor(raw).execute(sql, params).fetchall())
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StateError(f"state database {self.where}: {_first_line(exc)}") from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One change, committed on its own (autocommit: one round trip, not BEGIN and
        COMMIT around it); the number of rows it changed."""
        try:
            with self._pool.connection() as conn, conn.cursor() as raw:
                return _PgCursor(raw).execute(sql, params).rowcount
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StateError(f"state database {self.where}: {_first_line(exc)}") from None

    @property
    def schema_version(self) -> int:
        """How many migrations ran (0 on an empty database)."""
        if self.query("SELECT to_regclass('bastion_schema') IS NOT NULL AS present")[0][0]:
            rows = self.query("SELECT version FROM bastion_schema")
            return int(rows[0][0]) if rows else 0
        return 0

    def migrate(self) -> list[int]:
        """Apply missing migrations in one transaction (refusing a newer schema)."""
        applied = []
        with self.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATE_LOCK,))
            cur.execute("CREATE TABLE IF NOT EXISTS bastion_schema (version INTEGER NOT NULL)")
            row = cur.execute("SELECT version FROM bastion_schema").fetchone()
            if row is None:
                cur.execute("INSERT INTO bastion_schema (version) VALUES (0)")
            version = 0 if row is None else int(row[0])
            if version > len(MIGRATIONS):
                raise StateError(f"state database {self.where} has schema {version}, newer "
                                 f"than this bastion ({len(MIGRATIONS)}); upgrade bastion")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements(postgresql_dialect(script)):
                    cur.execute(statement)
                applied.append(number)
            if applied:
                cur.execute("UPDATE bastion_schema SET version = ?", (applied[-1],))
        return applied

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.close()
