"""PROXY protocol v2 (as HAProxy and cloud TCP load balancers send it): the real client address
of a connection that a load balancer accepted.

Trust is by the connecting address only: ``[server] proxy_protocol_from`` lists the load
balancers. A connection from a listed address must begin with a v2 header (else it is refused:
a listed balancer that does not send one is misconfigured, and guessing would let it speak for
anyone); a connection from any other address never has its header read (asyncssh refuses the
header as a bad version line, and ``looks_like_header`` lets the server say why first).

The header (spec: haproxy's doc/proxy-protocol.txt, section 2.2): the 12-byte signature, one
byte version (2) and command (0 LOCAL, 1 PROXY), one byte address family (1 INET, 2 INET6,
3 UNIX, 0 UNSPEC) and transport (1 STREAM), a 16-bit big-endian length, then that many bytes:
source and destination address and port, then TLVs (ignored). Only as many bytes as the header
holds are read from the socket, so the SSH bytes behind it stay for asyncssh.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from bastion.errors import ProxyHeaderError

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED = 16  # signature, version/command, family/transport, length
MAX_LENGTH = 1024  # addresses (at most 216 bytes, UNIX) plus TLVs; more is refused as hostile
HEADER_TIMEOUT = 5.0  # seconds a listed balancer has to send the whole header
# How long a connection from an unlisted address may take to send its first bytes before it is
# handed to asyncssh unpeeked (SSH clients speak first in practice; one that waits for the
# server's banner is delayed by this much, and only when proxy_protocol_from is set).
FIRST_BYTES_WAIT = 1.0


class Command(Enum):
    """What the balancer says the connection is."""

    LOCAL = 0  # the balancer's own connection (a health check): use the socket's address
    PROXY = 1  # relayed for a client: use the address in the header


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed v2 header; ``source`` is None for LOCAL and UNSPEC (use the socket's peer)."""

    command: Command
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int  # bytes of the whole header, signature included


def header_length(fixed: bytes) -> int:
    """The whole header's length from its first 16 bytes (checking what they can tell)."""
    if len(fixed) < FIXED:
        raise ProxyHeaderError("PROXY header truncated")
    if fixed[:12] != SIGNATURE:
        raise ProxyHeaderError("no PROXY v2 header from a load balancer address")
    if fixed[12] >> 4 != 2:
        raise ProxyHeaderError(f"PROXY header version {fixed[12] >> 4}, expected 2")
    length = int.from_bytes(fixed[14:16], "big")
    if length > MAX_LENGTH:
        raise ProxyHeaderError(f"PROXY header of {length} bytes is too long")
    return FIXED + length


def parse_header(data: bytes) -> ProxyHeader:
    """Parse one complete v2 header (``data`` holds exactly the header)."""
    total = header_length(data[:FIXED])
    if len(data) != total:
        raise ProxyHeaderError("PROXY header truncated" if len(data) < total
                               else "PROXY header length does not match")
    try:
        command = Command(data[12] & 0x0F)
    except ValueError:
        raise ProxyHeaderError(f"PROXY header command {data[12] & 0x0F} is unknown") from None
    family, transport = data[13] >> 4, data[13] & 0x0F
    body = data[FIXED:]
    if command is Command.LOCAL or family == 0:
        return ProxyHeader(command, None, None, total)
    if transport != 1:
        raise ProxyHeaderError("PROXY header is not for a stream (TCP) connection")
    if family == 1:
        if len(body) < 12:
            raise ProxyHeaderError("PROXY header too short for IPv4 addresses")
        src: str = str(ipaddress.IPv4Address(body[0:4]))
        dst: str = str(ipaddress.IPv4Address(body[4:8]))
        sport, dport = struct.unpack("!HH", body[8:12])
    elif family == 2:
        if len(body) < 36:
            raise ProxyHeaderError("PROXY header too short for IPv6 addresses")
        src6, dst6 = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
        # An IPv4 client seen through an IPv6 balancer: show and limit it as IPv4.
        src, dst = str(src6.ipv4_mapped or src6), str(dst6.ipv4_mapped or dst6)
    elif family == 3:
        raise ProxyHeaderError("PROXY header names a unix socket, not a client address")
    else:
        raise ProxyHeaderError(f"PROXY header address family {family} is unknown")
    return ProxyHeader(command, (src, int(sport)), (dst, int(dport)), total)


def looks_like_header(sock: socket.socket) -> bool:
    """Whether bytes already received on ``sock`` begin a PROXY header (peeked, not read)."""
    try:
        start = sock.recv(len(SIGNATURE), socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing received yet (BlockingIOError), or the peer is gone
        return False
    return len(start) >= 5 and SIGNATURE.startswith(start)


async def read_header(sock: socket.socket, timeout: float = HEADER_TIMEOUT) -> ProxyHeader:
    """Read exactly one v2 header from a non-blocking socket (nothing after it)."""
    loop = asyncio.get_running_loop()

    async def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = await loop.sock_recv(sock, count - len(data))
            if not chunk:
                raise ProxyHeaderError("connection closed inside the PROXY header")
            data += chunk
        return data

    try:
        async with asyncio.timeout(timeout):
            fixed = await exactly(FIXED)
            rest = await exactly(header_length(fixed) - FIXED)
    except TimeoutError:
        raise ProxyHeaderError("no complete PROXY header within "
                               f"{timeout:g}s from a load balancer address") from None
    return parse_header(fixed + rest)


def trusted(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
            ) -> bool:
    """Whether ``address`` is in one of the balancer networks."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


ConnectionStarter = Callable[[socket.socket, tuple[str, int]], Awaitable[None]]
Refusal = Callable[[tuple[str, int], str], None]


async def _readable(sock: socket.socket, timeout: float | None) -> bool:
    """Whether ``sock`` has bytes to read (or EOF, or a connection to accept) within
    ``timeout`` seconds (None: however long it takes)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(ready, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


class ProxyListener:
    """Accepts TCP itself (instead of asyncssh) to take the PROXY header off connections from
    the listed balancers, then hands each socket to ``start`` with the client's address.

    ``turn``, if given, is awaited when a connection waits, before taking it: a worker's
    share of the node's connections (``balance.WorkerLoads.my_turn``); ``changed`` is called
    when ``setting_up`` changes."""

    def __init__(self, host: str, port: int,
                 networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
                 start: ConnectionStarter, refuse: Refusal,
                 turn: Callable[[], Awaitable[None]] | None = None,
                 changed: Callable[[], None] | None = None) -> None:
        self._host, self._port = host, port
        self._networks = networks
        self._start, self._refuse = start, refuse
        self._turn, self._changed = turn, changed
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, sock: socket.socket | None = None) -> None:
        """Bind and listen (the address asyncssh would have used), or use the listening
        ``sock`` a supervisor handed down, then accept in a task."""
        if sock is not None:
            sock.setblocking(False)
            self._sock = sock
            self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())
            return
        family, kind, proto, _, address = socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())

    def get_port(self) -> int:
        """The port listened on."""
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    async def _accept_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        while True:
            await _readable(sock, None)  # a connection waits (every worker is woken)
            if self._turn is not None:
                await self._turn()
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another worker took it
            except OSError:  # out of descriptors, a reset before accept: keep accepting
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = loop.create_task(self._handle(conn, (str(address[0]), int(address[1]))))
            self._handlers.add(task)
            task.add_done_callback(self._set_up)
            if self._changed is not None:
                self._changed()

    @property
    def setting_up(self) -> int:
        """Connections accepted and not yet signed in (or given up)."""
        return len(self._handlers)

    def _set_up(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        if self._changed is not None:
            self._changed()

    async def _handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            if trusted(peer[0], self._networks):
                header = await read_header(conn)
                client = header.source or peer
            elif await _readable(conn, FIRST_BYTES_WAIT) and looks_like_header(conn):
                raise ProxyHeaderError("PROXY header from an address not in "
                                       "server.proxy_protocol_from")
            else:
                client = peer
        except ProxyHeaderError as exc:
            self._refuse(peer, str(exc))
            conn.close()
            return
        await self._start(conn, client)

    def stop_accepting(self) -> None:
        """Take no new connections; those being set up (a login under way) go on."""
        sock = self._sock
        if sock is None:
            return
        if self._accepting is not None and not self._accepting.done():
            # Closed once the loop has let go of it (the task's own cleanup runs first).
            self._accepting.add_done_callback(lambda _task: sock.close())
            self._accepting.cancel()
        else:
            sock.close()

    def close(self) -> None:
        """Stop accepting; connections being set up are dropped."""
        self.stop_accepting()
        for task in list(self._handlers):
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait for the accept task and the set-up tasks to end."""
        tasks = [t for t in (self._accepting, *self._handlers) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


class PlainListener(ProxyListener):
    """A worker's own accept loop without PROXY headers: each socket goes to ``start`` with
    its peer's address (asyncssh's listener would take every waiting connection at once,
    however many this worker already holds)."""

    def __init__(self, start: ConnectionStarter, turn: Callable[[], Awaitable[None]],
                 changed: Callable[[], None]) -> None:
        super().__init__("", 0, (), start, lambda peer, reason: None, turn, changed)

    async def _handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        await self._start(conn, peer)
