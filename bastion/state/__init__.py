"""Shared state: key bindings, TOTP, running sessions, approvals (SQLite or PostgreSQL)."""

# StateDB(path) opens SQLite: importing the backend registers it as the default.
from bastion.state import sqlite as _sqlite  # noqa: F401
