"""Key bindings and the state database: bind, look up, expire, revoke, WAL, schema version.

The tests taking ``db`` run on both backends (SQLite and a throwaway PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.state import StateBackend

from bastion.errors import StateError
from bastion.identity.bindings import KeyBindings
from bastion.identity.model import Identity
from bastion.state.db import MIGRATIONS, StateDB
from bastion.state.sqlite import SqliteStateDB

ALICE = Identity("https://idp", "sub-a", "alice", ("ops",), "alice@example.com", "oidc-device")
BOB = Identity("https://idp", "sub-b", "bob", ("dev",), None, "oidc-device")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(state_backend: StateBackend) -> StateDB:
    return state_backend.open()


def test_sqlite_db_is_wal_versioned_and_private(tmp_path: Path) -> None:
    db = StateDB.in_state_dir(tmp_path / "state")
    assert isinstance(db, SqliteStateDB)
    assert db.schema_version == len(MIGRATIONS)
    assert db.query("PRAGMA journal_mode")[0][0] == "wal"
    assert (db.path.stat().st_mode & 0o777) == 0o600
    again = StateDB(db.path)  # reopening runs no migration twice
    assert again.schema_version == len(MIGRATIONS)


def test_sqlite_newer_schema_refused(tmp_path: Path) -> None:
    db = SqliteStateDB(tmp_path / "state.sqlite3")
    with db.transaction() as cur:
        cur.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StateError, match="newer than this bastion"):
        StateDB(db.path)


def test_schema_version_checked(state_backend: StateBackend) -> None:
    db = state_backend.open()
    assert db.schema_version == len(MIGRATIONS)
    assert db.migrate() == []  # nothing runs twice
    db.check_schema()
    table = "bastion_schema SET version = ?" if state_backend.name == "postgresql" else None
    for version, message in ((len(MIGRATIONS) + 1, "newer than this bastion"),
                             (len(MIGRATIONS) - 1, "run `bastion migrate`")):
        with db.transaction() as cur:
            if table:
                cur.execute(f"UPDATE {table}", (version,))
            else:
                cur.execute(f"PRAGMA user_version = {version}")
        with pytest.raises(StateError, match=message):
            db.check_schema()


def test_bind_lookup_expire(db: StateDB) -> None:
    clock = Clock()
    kb = KeyBindings(db, clock)
    b = kb.bind("SHA256:aaa", "ssh-ed25519 AAAA", ALICE, 3600, "127.0.0.1")
    assert b.identity.method == "binding"
    found = kb.lookup("SHA256:aaa")
    assert found is not None and found.identity.key == ALICE.key
    assert found.identity.groups == ("ops",) and found.identity.email == "alice@example.com"
    assert kb.lookup("SHA256:other") is None
    kb.touch("SHA256:aaa")
    assert kb.entries()[0].last_used == clock.now
    clock.now += 3601
    assert kb.lookup("SHA256:aaa") is None
    assert kb.entries() == [] and len(kb.entries(include_expired=True)) == 1
    assert kb.purge_expired() == 1


def test_rebinding_a_key_replaces_the_old_binding(db: StateDB) -> None:
    kb = KeyBindings(db)
    kb.bind("SHA256:aaa", "k", ALICE, 60, "c")
    kb.bind("SHA256:aaa", "k", BOB, 60, "c")
    found = kb.lookup("SHA256:aaa")
    assert found is not None and found.identity.subject == "sub-b"


def test_revoke_by_key_identity_all(db: StateDB) -> None:
    kb = KeyBindings(db)
    kb.bind("SHA256:a1", "k", ALICE, 60, "c")
    kb.bind("SHA256:a2", "k", ALICE, 60, "c")
    kb.bind("SHA256:b1", "k", BOB, 60, "c")
    assert [b.fingerprint for b in kb.revoke(fingerprint="SHA256:a1")] == ["SHA256:a1"]
    assert kb.lookup("SHA256:a1") is None and kb.lookup("SHA256:a2") is not None
    assert len(kb.revoke(identity_key=ALICE.key)) == 1
    assert kb.revoke(fingerprint="SHA256:none") == []
    assert len(kb.revoke(everything=True)) == 1
    assert kb.entries() == []


def test_second_connection_sees_revocation(db: StateDB, state_backend: StateBackend) -> None:
    KeyBindings(db).bind("SHA256:a1", "k", ALICE, 60, "c")
    other = KeyBindings(state_backend.open())  # the CLI, or another node, meanwhile
    other.revoke(fingerprint="SHA256:a1")
    assert KeyBindings(db).lookup("SHA256:a1") is None
