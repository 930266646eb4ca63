"""One socket write per event-loop pass for an SSH connection, instead of one per SSH packet.

asyncssh writes every packet it sends to its transport on its own, and sends an empty
``MSG_IGNORE`` packet before every packet once encryption is on: a bulk transfer to a user is two
``send()`` calls per 32 KiB, each a trip through the kernel's TCP stack (and on loopback through
the receiver's too). Profiled during a 1 GB sftp download, those calls were a third of the
bastion's busy time. ``coalesce_writes`` puts a ``CoalescingTransport`` between one asyncssh
connection and its transport: what the connection writes during one pass of the event loop goes
to the transport as one ``writelines`` at the end of that pass (``call_soon``; no timer, so a
keystroke's echo waits for microseconds, not for more data).

Nothing else changes: bytes and their order are the same, the transport keeps its own buffer and
flow control, and what is held is only what asyncssh wrote within the pass (bounded by the
channels' windows). A close or abort first hands over what is held (asyncssh writes its
DISCONNECT just before it aborts).

asyncssh keeps its transport in the private attribute ``_transport`` and gives no public way to
wrap it; ``coalesce_writes`` replaces that attribute on one connection object (as
``forwarding.watch_channel_requests`` wraps two of its methods), and leaves a connection alone
(returns False) if an asyncssh version no longer has it: then packets go out one by one, as
before. tests/unit/test_relay_wire.py holds the installed asyncssh to this.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncssh

_ATTRIBUTE = "_transport"  # asyncssh.connection.SSHConnection's transport (asyncssh 2.x)


class CoalescingTransport:
    """A transport's stand-in that joins the writes of one event-loop pass into one."""

    __slots__ = ("_held", "_loop", "_scheduled", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        """Hold ``data`` until the end of this event-loop pass."""
        self._held.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Hand everything held to the transport now, in one call."""
        held = self._held
        if not held:
            return
        self._held = []
        if self.transport.is_closing():
            return  # what asyncssh's own write would have done: nothing goes out any more
        try:
            if len(held) == 1:
                self.transport.write(held[0])
            else:
                self.transport.writelines(held)
        except ConnectionError:  # as asyncssh's _send: the connection is going away
            pass

    def get_write_buffer_size(self) -> int:
        """Bytes held here and in the transport's own buffer."""
        return sum(map(len, self._held)) + self.transport.get_write_buffer_size()

    def close(self) -> None:
        """Hand over what is held, then close the transport."""
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        """Hand over what is held (the last packet, often a DISCONNECT), then abort."""
        self.flush()
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        # Everything else (get_extra_info, is_closing, pause_reading, ...) is the transport's.
        return getattr(self.transport, name)


def coalesce_writes(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> bool:
    """Make ``conn`` write each event-loop pass's packets at once; False if it cannot be done.

    Call it from the connection's ``connection_made`` callback (or any time after it).
    """
    transport = getattr(conn, _ATTRIBUTE, None)
    if isinstance(transport, CoalescingTransport):
        return True
    if transport is None or not callable(getattr(transport, "write", None)) \
            or not callable(getattr(transport, "writelines", None)):
        return False
    setattr(conn, _ATTRIBUTE, CoalescingTransport(transport, asyncio.get_running_loop()))
    return True


# What a connection's transport may hold before it says "pause writing" (asyncio's default is
# 64 KiB; bigger keeps a bulk transfer from pausing and resuming its source every pass).
WRITE_HIGH_WATER = 1024 * 1024


def couple_backpressure(a: asyncssh.SSHServerConnection | asyncssh.SSHClientConnection,
                        b: asyncssh.SSHServerConnection | asyncssh.SSHClientConnection) -> bool:
    """While either connection's socket cannot take more, do not read the other's socket.

    The SSH window bounds what a peer may be sent, but the peer sets it: a client that grants
    a large window and then stops reading its socket left everything the target sent in the
    bastion's memory (a 400 MB file: 387 MiB). asyncssh ignores its transport's
    ``pause_writing`` ("Do nothing with this for now"), so it is taken here, as a TCP proxy
    would: the relayed connection's socket is not read until this one's buffer drains. A peer
    that stays stalled is then ended by its keepalives. False if either connection does not
    have the transport this module installs (nothing is changed then).
    """
    ta, tb = getattr(a, _ATTRIBUTE, None), getattr(b, _ATTRIBUTE, None)
    if not isinstance(ta, CoalescingTransport) or not isinstance(tb, CoalescingTransport):
        return False
    _pause_other_while_full(a, ta, tb)
    _pause_other_while_full(b, tb, ta)
    return True


def _pause_other_while_full(conn: Any, own: CoalescingTransport,
                            other: CoalescingTransport) -> None:
    with contextlib.suppress(AttributeError, NotImplementedError):
        own.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
    pause, resume, lost = conn.pause_writing, conn.resume_writing, conn.connection_lost

    def pause_writing() -> None:  # called by the transport: its buffer passed the high mark
        pause()
        if not other.transport.is_closing():
            other.transport.pause_reading()

    def resume_writing() -> None:  # ... and fell below the low one
        resume()
        if not other.transport.is_closing():
            other.transport.resume_reading()

    def connection_lost(exc: Exception | None) -> None:
        # A socket that went away while full must not leave the other one unread.
        try:
            lost(exc)
        finally:
            if not other.transport.is_closing():
                other.transport.resume_reading()

    # Instance attributes: the transport calls its protocol's methods by name (as
    # forwarding.watch_channel_requests wraps two of asyncssh's).
    conn.pause_writing = pause_writing
    conn.resume_writing = resume_writing
    conn.connection_lost = connection_lost
