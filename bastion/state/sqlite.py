"""The SQLite backend: one file under the state directory, WAL mode, for a single host.

The server and the CLI open it at the same time (``bastion keys revoke`` while connections come
in), so it runs in WAL mode with a busy timeout, and every change is one short immediate
transaction. ``PRAGMA user_version`` records how many migrations ran; they run on open.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bastion.errors import StateError
from bastion.state.db import MIGRATIONS, Cursor, Row, StateDB, statements


class SqliteStateDB(StateDB):
    """One SQLite connection shared by the threads of a process (serialized by a lock)."""

    backend = "sqlite"

    def __init__(self, path: Path, *, migrate: bool = True) -> None:
        self.path = path
        self.where = str(path)
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
            if migrate:  # one host, nothing to coordinate: the schema follows the code
                self.migrate()
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state database {path}: {exc}") from None
        except OSError as exc:
            raise StateError(f"cannot open state database {path}: {exc.strerror}") from None

    def migrate(self) -> list[int]:
        """Apply missing migrations in one transaction (refusing a newer schema)."""
        applied = []
        with self.transaction() as cur:
            version = cur.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StateError(f"state database {self.path} has schema {version}, newer than "
                                 f"this bastion ({len(MIGRATIONS)}); upgrade bastion")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements(script):
                    cur.execute(statement)
                cur.execute(f"PRAGMA user_version = {number}")
                applied.append(number)
        return applied

    @property
    def schema_version(self) -> int:
        """The schema version this database is at."""
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """One immediate (write-locked) transaction; rolled back if the block raises."""
        with self._lock:
            cur = self._conn.cursor()
            cur.row_factory = sqlite3.Row
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

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
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


StateDB.default_backend = SqliteStateDB
