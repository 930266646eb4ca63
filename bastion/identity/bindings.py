"""Key bindings: public keys a person proved during a device login, bound to them for a TTL.

A binding stores the identity and the groups seen at login, so a connection with a bound key
needs no browser until the binding expires or is revoked (revocation counts from the next
connection). Only keys whose signature the client made during that connection are bound.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bastion.identity.model import Identity
from bastion.state.db import StateDB


@dataclass(frozen=True)
class KeyBinding:
    """One bound key: who it belongs to, since when and until when."""

    fingerprint: str
    public_key: str
    identity: Identity  # method "binding"
    client: str
    created: float
    expires: float
    last_used: float | None

    def audit_fields(self) -> dict[str, Any]:
        """The binding as it appears in audit events (no key material beyond the fingerprint)."""
        return {"key": self.fingerprint, "issuer": self.identity.issuer,
                "subject": self.identity.subject, "expires": _rfc3339(self.expires)}


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class KeyBindings:
    """The key_bindings table."""

    def __init__(self, db: StateDB, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def bind(self, fingerprint: str, public_key: str, identity: Identity, ttl: float,
             client: str) -> KeyBinding:
        """Bind a key to ``identity`` for ``ttl`` seconds (replacing any binding of that key)."""
        now = self._clock()
        with self._db.transaction() as cur:
            cur.execute(
                "INSERT INTO key_bindings (fingerprint, public_key, issuer, subject,"
                " name, email, groups_json, client, created, expires, last_used)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)"
                " ON CONFLICT (fingerprint) DO UPDATE SET public_key = excluded.public_key,"
                " issuer = excluded.issuer, subject = excluded.subject, name = excluded.name,"
                " email = excluded.email, groups_json = excluded.groups_json,"
                " client = excluded.client, created = excluded.created,"
                " expires = excluded.expires, last_used = NULL",
                (fingerprint, public_key, identity.issuer, identity.subject, identity.name,
                 identity.email, json.dumps(list(identity.groups)), client, now, now + ttl))
        return KeyBinding(fingerprint, public_key, _as_binding(identity), client, now, now + ttl,
                          None)

    def lookup(self, fingerprint: str) -> KeyBinding | None:
        """The live binding of a key, or None if it has none or it expired."""
        rows = self._db.query("SELECT * FROM key_bindings WHERE fingerprint = ? AND expires > ?",
                              (fingerprint, self._clock()))
        return _row(rows[0]) if rows else None

    def touch(self, fingerprint: str) -> None:
        """Record that a binding was used now."""
        with self._db.transaction() as cur:
            cur.execute("UPDATE key_bindings SET last_used = ? WHERE fingerprint = ?",
                        (self._clock(), fingerprint))

    def entries(self, include_expired: bool = False) -> list[KeyBinding]:
        """Bindings, newest first."""
        where = "" if include_expired else " WHERE expires > ?"
        params: tuple[object, ...] = () if include_expired else (self._clock(),)
        rows = self._db.query(f"SELECT * FROM key_bindings{where} ORDER BY created DESC",  # noqa: S608
                              params)
        return [_row(r) for r in rows]

    def revoke(self, *, fingerprint: str | None = None, identity_key: str | None = None,
               everything: bool = False) -> list[KeyBinding]:
        """End bindings of one key, of one identity (``issuer|subject``), or all; return them."""
        params: tuple[str, ...]
        if fingerprint is not None:
            where, params = "fingerprint = ?", (fingerprint,)
        elif identity_key is not None:
            issuer, _, subject = identity_key.rpartition("|")
            where, params = "issuer = ? AND subject = ?", (issuer, subject)
        elif everything:
            where, params = "1 = 1", ()
        else:
            raise ValueError("revoke what? give a fingerprint, an identity or everything=True")
        with self._db.transaction() as cur:
            found = [_row(r) for r in cur.execute(
                f"SELECT * FROM key_bindings WHERE {where}", params)]  # noqa: S608
            cur.execute(f"DELETE FROM key_bindings WHERE {where}", params)  # noqa: S608
        return found

    def purge_expired(self) -> int:
        """Delete expired bindings; return how many."""
        with self._db.transaction() as cur:
            cur.execute("DELETE FROM key_bindings WHERE expires <= ?", (self._clock(),))
            return int(cur.rowcount)


def _as_binding(identity: Identity) -> Identity:
    return Identity(issuer=identity.issuer, subject=identity.subject, name=identity.name,
                    groups=identity.groups, email=identity.email, method="binding")


def _row(row: Any) -> KeyBinding:
    groups = json.loads(row["groups_json"])
    identity = Identity(issuer=row["issuer"], subject=row["subject"], name=row["name"],
                        groups=tuple(g for g in groups if isinstance(g, str)),
                        email=row["email"], method="binding")
    return KeyBinding(row["fingerprint"], row["public_key"], identity, row["client"],
                      row["created"], row["expires"], row["last_used"])
