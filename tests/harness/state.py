"""The state database on either backend, for tests that must hold on both."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bastion.secret import Secret
from bastion.state.db import StateDB
from bastion.state.postgres import PostgresStateDB
from bastion.state.sqlite import SqliteStateDB


@dataclass
class StateBackend:
    """One empty database of one backend; ``open()`` gives another connection to it (as the
    CLI or a second node would have), migrated to this bastion's schema."""

    name: str  # "sqlite" or "postgresql"
    open: Callable[[], StateDB]
    opened: list[StateDB]
    location: str = ""  # the SQLite file or the PostgreSQL URL (for another process to open)

    def close_all(self) -> None:
        """Close every connection ``open()`` made."""
        for db in self.opened:
            db.close()


def sqlite_backend(path: Path) -> StateBackend:
    """SQLite in ``path``."""
    opened: list[StateDB] = []

    def open_db() -> StateDB:
        db = SqliteStateDB(path)
        opened.append(db)
        return db

    return StateBackend("sqlite", open_db, opened, str(path))


def postgres_backend(url: str) -> StateBackend:
    """The PostgreSQL database at ``url`` (migrated on first open, as `bastion migrate` does)."""
    opened: list[StateDB] = []

    def open_db() -> StateDB:
        db = PostgresStateDB(Secret(url), pool_size=2)
        if not opened:
            db.migrate()
        db.check_schema()
        opened.append(db)
        return db

    return StateBackend("postgresql", open_db, opened, url)
