"""Opening the state database the config names (SQLite or PostgreSQL)."""

from __future__ import annotations

from bastion.config.model import Config
from bastion.state.db import DB_NAME, StateDB
from bastion.state.sqlite import SqliteStateDB


def open_state(config: Config, *, migrate: bool | None = None) -> StateDB:
    """The state database the config names, at this bastion's schema.

    ``migrate`` None: the backend's default (SQLite migrates itself on open; PostgreSQL must
    already be at this schema, else StateError saying to run ``bastion migrate``). False: open
    as it is, changing nothing (``bastion migrate --check`` and ``bastion migrate`` itself).
    """
    if config.state.url is None:
        return SqliteStateDB(config.paths.state_dir / DB_NAME, migrate=migrate is None)
    # Imported only here: psycopg and its libpq/OpenSSL copies are about 11 MB of resident
    # memory that a bastion on SQLite would otherwise carry for nothing.
    from bastion.state.postgres import PostgresStateDB

    db = PostgresStateDB(config.state.url, pool_size=config.state.pool_size,
                         connect_timeout=config.state.connect_timeout)
    if migrate is None:
        try:
            db.check_schema()
        except BaseException:
            db.close()
            raise
    return db
