"""Port forwarding by policy: ``ssh -L`` to allowed destinations; everything else refused.

A local forward (a ``direct-tcpip`` channel) is allowed only when a ``[[forwarding]]`` rule lets
this identity reach that ``host:port`` via the session's target. It is opened from the target
(``open_from = "target"``: a channel through the target's sshd, which must allow TCP forwarding)
or from the bastion itself (``"bastion"``). Every forwarded connection is audited when it opens
and when it closes, with the bytes each way. Remote forwards (``-R``), agent forwarding (``-A``)
and X11 are refused and audited as ``channel.refused``.

Bytes are relayed in asyncssh's and asyncio's callbacks with their flow control: when one side
cannot take more, the other stops reading, so a fast sender never grows the bastion's memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, Protocol, cast

import asyncssh

from bastion.errors import BastionError
from bastion.policy.transfers import ForwardGrant, forward_grant
from bastion.relay import wire
from bastion.relay.session import ConnectionSession

log = logging.getLogger("bastion.relay")

_MAX_HOST = 255


def _bad_destination(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be a destination, or None. The SSH message carries any 32-bit
    port and any string; the resolver raises on the rest (OverflowError, UnicodeError,
    ValueError), which must be a refused forward, not a dropped connection."""
    if not 1 <= port <= 65535:
        return f"port {port} is out of range"
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not bare or len(bare) > _MAX_HOST or not bare.isprintable() or " " in bare:
        return "the host name is not valid"
    if ":" not in bare:  # not an IPv6 literal: a name the resolver encodes with IDNA
        try:
            bare.encode("idna")
        except UnicodeError:
            return "the host name is not valid"
    return None


class _Peer(Protocol):
    """The destination side of a forward, whichever way it was opened."""

    def write(self, data: bytes) -> None: ...
    def write_eof(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


def refused(session: ConnectionSession, kind: str, reason: str, **fields: Any) -> None:
    """Audit a refused channel or request (``channel.refused``, as for subsystems)."""
    session.services.audit.emit("channel.refused", conn=session.client.conn_id,
                                user=session.identity.name, kind=kind, reason=reason, **fields)


class Forward:
    """One forwarded TCP connection: both sides, the byte counts, one close."""

    def __init__(self, session: ConnectionSession, dest: str, origin: str,
                 grant: ForwardGrant) -> None:
        self.session = session
        self.dest = dest
        self.origin = origin
        self.grant = grant
        self.user: UserSide = UserSide(self)
        self.peer: _Peer | None = None
        self.bytes_up = 0  # user -> destination
        self.bytes_down = 0  # destination -> user
        self._opened = time.monotonic()
        self._closed = False
        self._early: list[bytes] = []  # destination bytes before the user's channel is up
        self._early_eof = False

    def audit(self, event: str, **fields: Any) -> None:
        """An audit event about this forward."""
        session = self.session
        recording = session.recording
        self.session.services.audit.emit(
            event, conn=session.client.conn_id, user=session.identity.name,
            session=recording.session_id if recording is not None else None,
            target=session.request.target if session.request else None,
            dest=self.dest, origin=self.origin, open_from=self.grant.open_from,
            rule=self.grant.rule, **fields)

    # -- data both ways ----------------------------------------------------------------------
    def from_user(self, data: bytes) -> None:
        self.bytes_up += len(data)
        self.session.touch()
        if self.peer is not None:
            self.peer.write(data)

    def from_dest(self, data: bytes) -> None:
        self.bytes_down += len(data)
        self.session.touch()
        if self.user.chan is None:
            self._early.append(data)
            if self.peer is not None:
                self.peer.pause_reading()  # until the user's channel takes it
            return
        self.user.chan.write(data)

    def dest_eof(self) -> None:
        if self.user.chan is None:
            self._early_eof = True
        else:
            self.user.chan.write_eof()

    def user_ready(self) -> None:
        """The user's channel is open: hand over what the destination sent meanwhile."""
        chan = self.user.chan
        assert chan is not None
        for data in self._early:
            chan.write(data)
        self._early.clear()
        if self._early_eof:
            chan.write_eof()
        elif self.peer is not None:
            self.peer.resume_reading()

    def close(self, why: str, exc: Exception | None = None) -> None:
        """Either side went away: close the other and audit the totals once."""
        if self._closed:
            return
        self._closed = True
        if self.peer is not None:
            self.peer.close()
        if self.user.chan is not None:
            self.user.chan.close()
        self.audit("forward.close", bytes_up=self.bytes_up, bytes_down=self.bytes_down,
                   seconds=round(time.monotonic() - self._opened, 3), closed_by=why,
                   error=str(exc) if exc else None)


class UserSide(asyncssh.SSHTCPSession[bytes]):
    """The user's ``direct-tcpip`` channel."""

    def __init__(self, forward: Forward) -> None:
        self._forward = forward
        self.chan: asyncssh.SSHTCPChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.chan = chan
        wire.no_packet_log(chan)
        self._forward.user_ready()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._forward.from_user(data)

    def eof_received(self) -> bool:
        if self._forward.peer is not None:
            self._forward.peer.write_eof()
        return True  # half-close: the destination may still answer

    def pause_writing(self) -> None:
        if self._forward.peer is not None:
            self._forward.peer.pause_reading()

    def resume_writing(self) -> None:
        if self._forward.peer is not None:
            self._forward.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forward.close("user", exc)


class _DestinationEvents:
    """What either kind of destination connection tells its forward (target's sshd or TCP)."""

    _forward: Forward

    def eof_received(self) -> bool:
        self._forward.dest_eof()
        return True

    def pause_writing(self) -> None:
        if self._forward.user.chan is not None:
            self._forward.user.chan.pause_reading()

    def resume_writing(self) -> None:
        if self._forward.user.chan is not None:
            self._forward.user.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forward.close("destination", exc)


class TargetSide(_DestinationEvents, asyncssh.SSHTCPSession[bytes]):
    """The destination reached through the target's sshd (a ``direct-tcpip`` channel there)."""

    def __init__(self, forward: Forward) -> None:
        self._forward = forward

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        wire.no_packet_log(chan)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._forward.from_dest(data)


class _ChannelPeer:
    """An asyncssh channel as a ``_Peer``."""

    def __init__(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._chan = chan

    def write(self, data: bytes) -> None:
        self._chan.write(data)

    def write_eof(self) -> None:
        self._chan.write_eof()

    def pause_reading(self) -> None:
        self._chan.pause_reading()

    def resume_reading(self) -> None:
        self._chan.resume_reading()

    def close(self) -> None:
        self._chan.close()


class BastionSide(_DestinationEvents, asyncio.Protocol):
    """The destination reached from the bastion itself (a TCP connection from here)."""

    def __init__(self, forward: Forward) -> None:
        self._forward = forward
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's does not subclass asyncio.Transport, so no isinstance).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._forward.from_dest(data)

    # _Peer
    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def local_forward(session: ConnectionSession, dest_host: str, dest_port: int,
                  orig_host: str, orig_port: int) -> Awaitable[UserSide]:
    """Decide an ``ssh -L`` channel; refused ones raise ChannelOpenError (and are audited)."""
    shown_host = "".join(c if c.isprintable() else "?" for c in dest_host[:_MAX_HOST])
    dest = f"{shown_host}:{dest_port}"
    request = session.request
    if session.refusal is not None or request is None or request.target is None:
        refused(session, "direct-tcpip", "no target in the user name", dest=dest)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        "bastion: forwarding needs a target")
    bad = _bad_destination(dest_host, dest_port)
    if bad is not None:
        refused(session, "direct-tcpip", bad, dest=dest, target=request.target)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                        f"bastion: cannot forward to {dest}: {bad}")
    identity = session.identity
    grant = forward_grant(session.services.config, identity.rule_names,
                          identity.groups, request.target, dest_host, dest_port)
    if grant is None:
        refused(session, "direct-tcpip", "no [[forwarding]] rule allows it", dest=dest,
                target=request.target)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        f"bastion: forwarding to {dest} is not allowed")
    forward = Forward(session, dest, f"{orig_host[:_MAX_HOST]}:{orig_port}", grant)
    return _open(forward, dest_host, dest_port)


async def _open(forward: Forward, host: str, port: int) -> UserSide:
    session = forward.session
    try:
        # Authorizes the target now (policy may have changed) and opens the recording.
        upstream = await session.connect(session.request)
        if forward.grant.open_from == "target":
            chan, _ = await upstream.conn.create_connection(
                lambda: TargetSide(forward), host, port)
            forward.peer = _ChannelPeer(chan)
        else:
            _, protocol = await asyncio.get_running_loop().create_connection(
                lambda: BastionSide(forward), host, port)
            forward.peer = protocol
    except BastionError as exc:
        forward.audit("forward.failed", reason=str(exc))
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, f"bastion: {exc}") from None
    except asyncssh.ChannelOpenError as exc:
        forward.audit("forward.failed", reason=f"the target refused: {exc.reason}")
        raise asyncssh.ChannelOpenError(exc.code, f"bastion: the target refused: {exc.reason}",
                                        ) from None
    except (OSError, ValueError, OverflowError) as exc:
        # ValueError (UnicodeError among them) and OverflowError: a destination the resolver
        # cannot take; uncaught, asyncssh would end the user's whole connection.
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        forward.audit("forward.failed", reason=reason)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                        f"bastion: cannot connect: {reason}") from None
    forward.audit("forward.open")
    return forward.user


def refuse_remote_forward(session: ConnectionSession | None, listen_host: str,
                          listen_port: int) -> bool:
    """``ssh -R``: refused (audited); the bastion does not listen for anyone."""
    if session is not None:
        shown_host = "".join(c if c.isprintable() else "?" for c in listen_host[:_MAX_HOST])
        refused(session, "tcpip-forward", "remote forwarding is not enabled",
                listen=f"{shown_host}:{listen_port}")
    return False


def watch_channel_requests(conn: asyncssh.SSHServerConnection,
                           session_of: Any) -> None:
    """Audit agent and X11 forwarding requests, which asyncssh refuses without asking us.

    asyncssh answers ``auth-agent-req`` and ``x11-req`` inside the connection (no server
    callback), so these two connection methods are wrapped on this one connection object to
    refuse, as before, and to audit. ``session_of()`` gives the connection's session (or None).
    """
    async def agent_listener() -> bool:
        session = session_of()
        if session is not None:
            refused(session, "agent", "agent forwarding is not enabled")
        return False

    async def x11_listener(*args: Any) -> str | None:
        session = session_of()
        if session is not None:
            refused(session, "x11", "X11 forwarding is not enabled")
        return None

    conn.create_agent_listener = agent_listener  # type: ignore[method-assign]
    conn.attach_x11_listener = x11_listener  # type: ignore[method-assign,assignment]
