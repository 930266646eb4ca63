"""Target connections kept open for a few seconds after a session, for the same person's next
session to the same target and login.

A bastion login is also a whole login to the target: its TCP handshake, key exchange and
authentication, about 45 ms of a 105 ms login through the bastion in the bench (and sshd's fork
and re-exec on the target). A CI job or an ansible run opens many short sessions in a row, so a
connection whose session ended cleanly is parked for ``[server] upstream_linger`` seconds and
the next session with the same key takes it, as OpenSSH's ``ControlPersist`` does for one user
and JumpServer's connection reuse does for its users. Each session is still authorized,
counted, recorded and sealed on its own; only the target's login is shared.

The key is the person, the target as configured (host, port, pinned keys: any change dials
anew), the login and a digest of the vaulted credential (a rotated credential dials anew). Never
parked: certificate logins (each certificate names one session in its key id), a connection
with a channel still open, one that is closing, and one whose session did not end cleanly. A
parked connection is used only after the target answered a keepalive request on it
(``responsive``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import asyncssh

from bastion.config.model import Target
from bastion.credentials.vault import Credential
from bastion.masking.timed import CallLater, TimerHandle, loop_call_later
from bastion.relay import wire
from bastion.relay.upstream import Upstream

# The most connections one worker keeps parked, and under one key; the oldest goes first.
MAX_PARKED = 256
MAX_PER_KEY = 8


@dataclass(frozen=True)
class PoolKey:
    """Which later session may take a parked connection."""

    identity: str  # Identity.key: the person, never only the SSH user name
    target: Target
    login: str
    credential: bytes  # SHA-256 of the vaulted secret (kept in memory only)

    @classmethod
    def of(cls, identity: str, target: Target, login: str, credential: Credential) -> PoolKey:
        digest = hashlib.sha256(credential.secret.reveal().encode("utf-8")).digest()
        return cls(identity, target, login, digest)

    def __repr__(self) -> str:  # no digest of a secret in a log line
        return f"PoolKey({self.identity!r}, {self.target.name!r}, {self.login!r})"


def idle(upstream: Upstream) -> bool:
    """Whether ``upstream`` can carry another session: open, no certificate, no channel."""
    if upstream.certificate is not None or upstream.conn.is_closed():
        return False
    # asyncssh keeps a connection's channels in ``_channels`` until both sides closed them; an
    # asyncssh without it parks nothing.
    channels = getattr(upstream.conn, "_channels", None)
    return isinstance(channels, dict) and not channels


# How long a parked connection may take to answer before it is given up for a new login.
PROBE_TIMEOUT = 2.0


async def responsive(upstream: Upstream, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the target still answers on ``upstream``: one keepalive request and its reply.

    A target that went away without closing the connection (a partition, a frozen host) would
    otherwise hold the next session's channel open until keepalives gave up, a minute or more;
    one round trip tells, and the session dials anew instead.
    """
    conn = upstream.conn
    request = getattr(conn, "_make_global_request", None)  # asyncssh's, as its keepalives use
    if request is None or conn.is_closed():
        return False
    try:
        await asyncio.wait_for(request(b"keepalive@openssh.com"), timeout)
    except (TimeoutError, OSError, asyncssh.Error):
        return False
    return not conn.is_closed()


class UpstreamPool:
    """The parked connections of one worker process (one event loop): for each key, up to
    ``MAX_PER_KEY`` (parallel sessions of one person, such as ansible's forks, each park one)."""

    def __init__(self, linger: float, call_later: CallLater = loop_call_later,
                 is_idle: Callable[[Upstream], bool] = idle) -> None:
        self.linger = linger
        self._call_later = call_later
        self._is_idle = is_idle
        self._parked: dict[PoolKey, list[tuple[Upstream, TimerHandle]]] = {}

    def __len__(self) -> int:
        return sum(map(len, self._parked.values()))

    def take(self, key: PoolKey) -> Upstream | None:
        """A connection parked under ``key`` that can still carry a session, else None."""
        entries = self._parked.get(key)
        while entries:
            upstream, timer = entries.pop()  # the most recent: the least likely to be stale
            timer.cancel()
            if self._is_idle(upstream):
                if not entries:
                    del self._parked[key]
                return upstream
            upstream.close()
        self._parked.pop(key, None)
        return None

    def park(self, key: PoolKey | None, upstream: Upstream) -> bool:
        """Keep ``upstream`` for ``linger`` seconds under ``key``, or close it (no key, linger
        0, or not idle). True if parked."""
        wire.decouple_backpressure(upstream.conn)  # its user's connection is gone
        if key is None or self.linger <= 0 or not self._is_idle(upstream):
            upstream.close()
            return False
        entries = self._parked.get(key, [])
        if len(entries) >= MAX_PER_KEY:
            self._close(key, entries[0])
        while len(self) >= MAX_PARKED:  # the key parked longest ago gives up its oldest
            oldest = next(iter(self._parked))
            self._close(oldest, self._parked[oldest][0])
        timer = self._call_later(self.linger, lambda: self._expire(key, upstream))
        self._parked.setdefault(key, []).append((upstream, timer))
        return True

    def _expire(self, key: PoolKey, upstream: Upstream) -> None:
        for entry in self._parked.get(key, []):
            if entry[0] is upstream:
                self._close(key, entry)
                return

    def _close(self, key: PoolKey, entry: tuple[Upstream, TimerHandle]) -> None:
        entries = self._parked[key]
        entries.remove(entry)
        if not entries:
            del self._parked[key]
        entry[1].cancel()
        entry[0].close()

    def close_all(self) -> None:
        """Close every parked connection (the worker stops)."""
        for key in list(self._parked):
            for entry in list(self._parked.get(key, [])):
                self._close(key, entry)

    def __repr__(self) -> str:
        return f"UpstreamPool(linger={self.linger}, parked={len(self)})"
