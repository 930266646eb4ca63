"""TOTP second factor: enrollment, checking (±1 step, each code once, rate-limited), policy.

Secrets are sealed at rest with AES-256-GCM under a key derived (HKDF) from the vault key, with
the identity as associated data, so a secret copied to another identity's row does not open.
"""

from __future__ import annotations

import hmac
import os
import re
import time
from collections.abc import Callable

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bastion.config.model import TotpPolicy
from bastion.errors import StateError, TotpError
from bastion.identity.model import Identity
from bastion.secret import Secret
from bastion.state.db import StateDB

STEP = 30  # seconds per TOTP time step (RFC 6238 default, what authenticator apps use)
DIGITS = 6
MAX_FAILURES = 5  # wrong codes per identity within FAILURE_WINDOW before refusing all
FAILURE_WINDOW = 300.0
_CODE = re.compile(r"\d{6}")
_HKDF_INFO = b"bastion totp secrets v1"


def totp_required(policy: TotpPolicy, identity: Identity, target: str | None) -> bool:
    """Whether policy asks this identity, going to this target, for a TOTP code."""
    return (policy.all or bool(set(policy.groups) & set(identity.groups))
            or (target is not None and target in policy.targets))


class TotpStore:
    """TOTP secrets and attempt counters in the state database."""

    def __init__(self, db: StateDB, vault_key: Secret[bytes],
                 clock: Callable[[], float] = time.time, issuer_name: str = "bastion",
                 reload_key: Callable[[], Secret[bytes] | None] | None = None) -> None:
        self._db = db
        self._aead = _aead(vault_key)
        self._clock = clock
        self._issuer_name = issuer_name
        # After `bastion vault rotate-key` the secrets are sealed under the new key: a running
        # server re-reads its key source (this callback) once when a secret does not open.
        self._reload_key = reload_key

    def rekey(self, vault_key: Secret[bytes]) -> None:
        """Use another vault key from now on (the running server, after a rotation)."""
        self._aead = _aead(vault_key)

    def reseal_all(self, new_key: Secret[bytes], before_commit: Callable[[], None]) -> int:
        """Re-seal every secret under ``new_key`` in one transaction; ``before_commit`` runs
        inside it (the vault rewrite), so either both change or neither. Returns the count."""
        new_aead = _aead(new_key)
        with self._db.transaction() as cur:
            rows = cur.execute("SELECT identity, sealed FROM totp_secrets").fetchall()
            for identity_key, sealed in rows:
                secret = self._open_with(self._aead, identity_key, sealed)
                nonce = os.urandom(12)
                cur.execute("UPDATE totp_secrets SET sealed = ? WHERE identity = ?",
                            (nonce + new_aead.encrypt(nonce, secret.encode(),
                                                      identity_key.encode()), identity_key))
            before_commit()
        self._aead = new_aead
        return len(rows)

    # -- enrollment -------------------------------------------------------------------------
    def enrolled(self, identity_key: str) -> bool:
        """Whether this identity has a TOTP secret."""
        return bool(self._db.query("SELECT 1 FROM totp_secrets WHERE identity = ?",
                                   (identity_key,)))

    def enroll(self, identity_key: str, label: str, replace: bool = False) -> Secret[str]:
        """Create a secret for an identity and return its otpauth:// URI (shown once)."""
        secret = pyotp.random_base32()
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, secret.encode(), identity_key.encode())
        with self._db.transaction() as cur:
            exists = cur.execute("SELECT 1 FROM totp_secrets WHERE identity = ?",
                                 (identity_key,)).fetchone()
            if exists and not replace:
                raise TotpError(f"{label} already has a TOTP secret; reset it first")
            cur.execute("INSERT INTO totp_secrets (identity, sealed, created, last_step)"
                        " VALUES (?, ?, ?, -1) ON CONFLICT (identity) DO UPDATE SET"
                        " sealed = excluded.sealed, created = excluded.created, last_step = -1",
                        (identity_key, sealed, self._clock()))
            cur.execute("DELETE FROM totp_failures WHERE identity = ?", (identity_key,))
        uri = pyotp.TOTP(secret, digits=DIGITS, interval=STEP).provisioning_uri(
            name=label, issuer_name=self._issuer_name)
        return Secret(uri)

    def remove(self, identity_key: str) -> bool:
        """Delete an identity's secret; return whether it had one."""
        with self._db.transaction() as cur:
            cur.execute("DELETE FROM totp_secrets WHERE identity = ?", (identity_key,))
            return bool(cur.rowcount)

    # -- checking ---------------------------------------------------------------------------
    def verify(self, identity_key: str, code: str) -> None:
        """Accept a current code once (±1 step); raise TotpError saying why not otherwise."""
        now = self._clock()
        code = code.strip().replace(" ", "")
        with self._db.transaction() as cur:
            cur.execute("DELETE FROM totp_failures WHERE at < ?", (now - FAILURE_WINDOW,))
            failures = cur.execute("SELECT COUNT(*) FROM totp_failures WHERE identity = ?",
                                   (identity_key,)).fetchone()[0]
            if failures >= MAX_FAILURES:
                raise TotpError("too many wrong TOTP codes; wait a few minutes and try again")
            row = cur.execute("SELECT sealed, last_step FROM totp_secrets WHERE identity = ?",
                              (identity_key,)).fetchone()
            if row is None:
                raise TotpError("no TOTP secret is enrolled for you; ask an administrator")
            totp = pyotp.TOTP(self._open(identity_key, row[0]), digits=DIGITS, interval=STEP)
            step_now = int(now // STEP)
            matched = None
            if _CODE.fullmatch(code):
                for step in (step_now - 1, step_now, step_now + 1):
                    if hmac.compare_digest(totp.at(step * STEP), code):
                        matched = step
            if matched is None:
                cur.execute("INSERT INTO totp_failures (identity, at) VALUES (?, ?)",
                            (identity_key, now))
                reason = "wrong TOTP code"
            elif matched <= row[1]:
                cur.execute("INSERT INTO totp_failures (identity, at) VALUES (?, ?)",
                            (identity_key, now))
                reason = "this TOTP code was used already; wait for the next one"
            elif cur.execute("UPDATE totp_secrets SET last_step = ? WHERE identity = ?"
                             " AND last_step < ?", (matched, identity_key, matched)).rowcount:
                return  # conditional: of two nodes checking one code at once, only one wins
            else:
                reason = "this TOTP code was used already; wait for the next one"
        raise TotpError(reason)

    def _open(self, identity_key: str, sealed: bytes) -> str:
        try:
            return self._open_with(self._aead, identity_key, sealed)
        except StateError:
            new_key = self._reload_key() if self._reload_key is not None else None
            if new_key is None:
                raise
            self.rekey(new_key)
            return self._open_with(self._aead, identity_key, sealed)

    @staticmethod
    def _open_with(aead: AESGCM, identity_key: str, sealed: bytes) -> str:
        try:
            return aead.decrypt(sealed[:12], sealed[12:], identity_key.encode()).decode()
        except (InvalidTag, ValueError):
            raise StateError("a TOTP secret does not decrypt with this vault key "
                             "(was the vault key rotated?)") from None


def _aead(vault_key: Secret[bytes]) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=_HKDF_INFO).derive(vault_key.reveal()))
