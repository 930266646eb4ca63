"""What the bastion changes in how asyncssh moves bytes on its two connections of a session.

Three changes, each measured on bulk transfers (docs/performance.md), none changing a byte or
its order on the wire:

- **One socket write per event-loop pass** (``coalesce_writes``). asyncssh writes every packet
  to its transport on its own: two ``send()`` calls per 32 KiB, each a trip through the kernel's
  TCP stack (on loopback through the receiver's too), a third of the bastion's busy time on a
  1 GB sftp download. A ``CoalescingTransport`` between the connection and its transport hands
  what was written during one pass over as one ``writelines`` at its end (``passend``; no
  timer; a keystroke and its echo are written at once, ``flush_writes``). The transport keeps
  its own buffer and flow control; a close or abort first hands over what is held (asyncssh
  writes its DISCONNECT just before it aborts).
- **Reads parsed in pieces** (``read_in_pieces``): asyncssh recopies its input buffer twice
  per packet, which made a 256 KiB read cost nine copies.
- **No padding packets** (``drop_ignore_padding``): the empty ``MSG_IGNORE`` asyncssh sends
  before every packet is a counter to a CBC attack, and no CBC cipher is offered.
- And ``couple_backpressure``: a full socket stops the session's other socket being read.

asyncssh keeps its transport in the private attribute ``_transport`` and gives no public way to
wrap it; this module replaces that attribute, and sets ``data_received``, ``send_packet`` and
``set_extra_info`` on one connection object (as ``forwarding.watch_channel_requests`` wraps two
of its methods). It leaves a connection alone (returns False) if an asyncssh version no longer
has what it needs: then the connection works as asyncssh ships it. tests/unit/test_relay_wire.py
holds the installed asyncssh to this.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncssh
from asyncssh.constants import MSG_IGNORE

from bastion.relay import keepalive, passend

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
            passend.at_pass_end(passend.WRITE, self._flush_soon, self._loop)

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


def flush_writes(chan: asyncssh.SSHServerChannel[bytes] | asyncssh.SSHClientChannel[bytes]
                 ) -> None:
    """Write what ``chan``'s connection holds now, not at the end of the pass."""
    transport = getattr(chan.get_extra_info("connection"), _ATTRIBUTE, None)
    if isinstance(transport, CoalescingTransport):
        transport.flush()


# The most of a socket read handed to asyncssh at once (about one 32 KiB data packet).
READ_PIECE = 32 * 1024


def read_in_pieces(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> bool:
    """Hand ``conn`` what its socket reads in pieces of ``READ_PIECE`` bytes.

    asyncssh appends each read to a ``bytes`` buffer and slices the rest of that buffer off
    twice per packet it takes out: a 256 KiB read of eight packets is copied about nine times
    over (0.31-0.53 s per 300 MB in a model of it). Fed one packet's worth at a time it copies
    a few small buffers that stay in the cache (0.04 s); a 300 MB ``scp -O`` upload took 2.46
    bastion CPU-seconds against 2.59 without it (six runs each).
    Bytes and their order are the same. Call it where ``coalesce_writes`` is called; False if
    the connection has no transport yet (nothing changes then).
    """
    transport = getattr(conn, _ATTRIBUTE, None)
    if isinstance(transport, CoalescingTransport):
        transport = transport.transport
    set_protocol = getattr(transport, "set_protocol", None)
    if transport is None or not callable(set_protocol):
        return False
    receive = conn.data_received

    def data_received(data: bytes, datatype: Any = None) -> None:
        if len(data) <= READ_PIECE:
            receive(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), READ_PIECE):
            # A packet in this read may have closed the connection: the rest is not its.
            if transport.is_closing():
                return
            receive(view[start:start + READ_PIECE])  # type: ignore[arg-type]

    conn.data_received = data_received  # type: ignore[method-assign]
    # uvloop keeps the protocol's data_received bound method from when it was set: set again.
    set_protocol(conn)
    return True


# The body of asyncssh's padding MSG_IGNORE: String(b"").
_EMPTY_STRING = b"\x00\x00\x00\x00"


def drop_ignore_padding(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> bool:
    """Do not send the empty ``MSG_IGNORE`` asyncssh puts before every packet, unless the
    cipher is CBC.

    The padding packet is RFC 4251's counter to an attack on CBC's chained IVs (section 9.3.1);
    asyncssh sends it whatever the cipher, and neither side of the bastion offers CBC (the
    hardened lists). OpenSSH does not send it. It cost a second encryption, packet and Python
    call chain per data packet: about a tenth of the bastion's CPU on a 300 MB ``scp -O``
    upload (docs/performance.md). asyncssh sends it through ``self.send_packet``, so the
    instance attribute set here sees it; every other packet goes through unchanged.
    """
    send = getattr(conn, "send_packet", None)
    set_extra_info = getattr(conn, "set_extra_info", None)
    if not callable(send) or not callable(set_extra_info):
        return False
    # Decided when a key exchange names the cipher (asyncssh records it with set_extra_info
    # as it switches keys), not per packet: reading it back took about 2 % of the worker on a
    # download. Until a cipher is named the padding is kept (no packet is encrypted then).
    keep = [True]

    def note_cipher(**info: Any) -> None:
        cipher = info.get("send_cipher")
        if cipher is not None:
            keep[0] = str(cipher).endswith("-cbc")
        set_extra_info(**info)

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == MSG_IGNORE and not keep[0] and args == (_EMPTY_STRING,):
            return
        send(pkttype, *args, handler=handler)

    conn.set_extra_info = note_cipher  # type: ignore[method-assign]
    conn.send_packet = send_packet  # type: ignore[method-assign]
    return True


def _not_logged(pkttype: int, pktid: int | None, packet: object, note: str = "") -> None:
    """In place of asyncssh's per-packet log call: no packet is ever logged."""


def no_packet_log(handler: object) -> bool:
    """Make a connection or channel skip asyncssh's packet log call for every packet.

    asyncssh formats a packet's name and size for its packet log before it looks whether that
    log is on (``asyncssh.set_debug_level(3)``): 2-3 % of the worker on a download. That log
    holds whole payloads (keystrokes, the password the bastion logs in to a target with), so
    the bastion never turns it on; this only saves the formatting.
    """
    if not all(callable(getattr(handler, name, None))
               for name in ("log_sent_packet", "log_received_packet")):
        return False
    handler.log_sent_packet = handler.log_received_packet = _not_logged  # type: ignore[attr-defined]
    return True


def install(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """Everything this module does to one of the bastion's connections (from its
    ``connection_made`` callback): coalesced writes, reads in pieces, no padding packets, no
    packet log calls (its channels get ``no_packet_log`` from theirs), and a keepalive timer
    that is not remade for every read (``keepalive.py``)."""
    coalesce_writes(conn)
    read_in_pieces(conn)
    drop_ignore_padding(conn)
    no_packet_log(conn)
    keepalive.lazy_keepalive(conn)


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

    A connection coupled before (a target connection taken from the upstream pool for its
    next session) is coupled to the new one instead.
    """
    ta, tb = getattr(a, _ATTRIBUTE, None), getattr(b, _ATTRIBUTE, None)
    if not isinstance(ta, CoalescingTransport) or not isinstance(tb, CoalescingTransport):
        return False
    _pause_other_while_full(a, ta, tb)
    _pause_other_while_full(b, tb, ta)
    return True


def decouple_backpressure(conn: asyncssh.SSHServerConnection | asyncssh.SSHClientConnection,
                          ) -> None:
    """``conn`` no longer holds back or is held back by the connection it was coupled to (its
    session ended; the upstream pool parks it). Its own socket is read again."""
    link = getattr(conn, _COUPLING, None)
    if isinstance(link, _Coupling) and link.other is not None:
        link.other = None
        transport = getattr(conn, _ATTRIBUTE, None)
        if isinstance(transport, CoalescingTransport) and not transport.transport.is_closing():
            transport.transport.resume_reading()


_COUPLING = "_bastion_coupling"  # the _Coupling of a connection, set on the connection object


class _Coupling:
    """The transport a connection's full socket stops reading (None: decoupled)."""

    __slots__ = ("other",)

    def __init__(self, other: CoalescingTransport) -> None:
        self.other: CoalescingTransport | None = other

    def read_other(self, reading: bool) -> None:
        """Pause or resume reading the coupled connection's socket (if any, and open)."""
        peer = self.other
        if peer is not None and not peer.transport.is_closing():
            if reading:
                peer.transport.resume_reading()
            else:
                peer.transport.pause_reading()


def _pause_other_while_full(conn: Any, own: CoalescingTransport,
                            other: CoalescingTransport) -> None:
    link = getattr(conn, _COUPLING, None)
    if isinstance(link, _Coupling):  # coupled before: to the new peer now
        link.other = other
        return
    link = _Coupling(other)
    setattr(conn, _COUPLING, link)
    with contextlib.suppress(AttributeError, NotImplementedError):
        own.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
    pause, resume, lost = conn.pause_writing, conn.resume_writing, conn.connection_lost

    def pause_writing() -> None:  # called by the transport: its buffer passed the high mark
        pause()
        link.read_other(False)

    def resume_writing() -> None:  # ... and fell below the low one
        resume()
        link.read_other(True)

    def connection_lost(exc: Exception | None) -> None:
        # A socket that went away while full must not leave the other one unread.
        try:
            lost(exc)
        finally:
            link.read_other(True)

    # Instance attributes: the transport calls its protocol's methods by name (as
    # forwarding.watch_channel_requests wraps two of asyncssh's).
    conn.pause_writing = pause_writing
    conn.resume_writing = resume_writing
    conn.connection_lost = connection_lost
