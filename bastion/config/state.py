"""The ``[state]`` section: where the shared state lives (SQLite by default, or PostgreSQL)."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass

from bastion.config.reader import Table
from bastion.secret import Secret

__all__ = ["StateConfig", "parse_state"]


@dataclass(frozen=True)
class StateConfig:
    """Where the state database is. ``url`` None: SQLite ``state.sqlite3`` in ``state_dir``."""

    url: Secret[str] | None = None  # postgresql://... (may hold a password: never logged)
    pool_size: int = 4  # connections each process keeps open to PostgreSQL at most
    connect_timeout: float = 10.0

    @property
    def backend(self) -> str:
        """"sqlite" or "postgresql"."""
        return "sqlite" if self.url is None else "postgresql"


def parse_state(t: Table) -> StateConfig:
    """Read ``[state]``: ``url`` or ``url_env`` (a variable holding the URL), pool settings."""
    url: str | None = None
    what = "a postgresql:// URL (postgresql://user@host:5432/dbname)"
    if t.has("url"):
        url = t.string("url", what=what)
        key = "url"
    if t.has("url_env"):
        if url is not None:
            raise t.error("url_env", "either url or url_env, not both")
        name = t.string("url_env", pattern=r"[A-Za-z_][A-Za-z0-9_]{0,127}",
                        what="an environment variable name")
        url = os.environ.get(name)
        if not url:
            raise t.error("url_env", f"${name} to hold the state database URL (it is unset)")
        key = "url_env"
    if url is not None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            # Never echo the value: it may hold a password.
            raise t.error(key, what, "a URL of another scheme" if parts.scheme else "no URL")
    state = StateConfig(
        url=None if url is None else Secret(url),
        pool_size=t.integer("pool_size", 4, lo=1, hi=100),
        connect_timeout=t.duration("connect_timeout", 10.0, allow_zero=False),
    )
    t.done()
    return state
