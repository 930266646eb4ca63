"""SFTP (version 3, as OpenSSH speaks it) seen passively: framing and the fields that matter.

Pure code, no I/O. ``Framer`` cuts one direction's byte stream into packets without copying
their bulk: for each packet it collects only a *head* (the whole packet when it is small, just the
fields before the data for WRITE and DATA) and hands it to a callback that decides whether the
packet goes on; the rest of the packet is passed on as slices of the chunks it arrived in. So a
1 GB transfer costs a few slices per chunk and memory stays at one head.

The decoders turn a head into the fields a policy and an audit need (paths, open flags, handles,
status codes). Client text is untrusted: ``shown`` makes a name safe for logs and terminals.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

# Packet types (draft-ietf-secsh-filexfer-02, which OpenSSH implements).
INIT, VERSION = 1, 2
OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT = 3, 4, 5, 6, 7, 8, 9, 10
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME = 11, 12, 13, 14, 15, 16, 17, 18
READLINK, SYMLINK = 19, 20
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105
EXTENDED, EXTENDED_REPLY = 200, 201

# OPEN pflags.
FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC, FXF_EXCL = 1, 2, 4, 8, 16, 32
_FLAG_NAMES = ((FXF_READ, "read"), (FXF_WRITE, "write"), (FXF_APPEND, "append"),
               (FXF_CREAT, "create"), (FXF_TRUNC, "truncate"), (FXF_EXCL, "exclusive"))


class Status(enum.IntEnum):
    """SSH_FX_* status codes."""

    OK = 0
    EOF = 1
    NO_SUCH_FILE = 2
    PERMISSION_DENIED = 3
    FAILURE = 4
    BAD_MESSAGE = 5
    NO_CONNECTION = 6
    CONNECTION_LOST = 7
    OP_UNSUPPORTED = 8


def status_name(code: int) -> str:
    """``ok``, ``permission_denied``, ... or ``status_N`` for codes v3 does not define."""
    try:
        return Status(code).name.lower()
    except ValueError:
        return f"status_{code}"


MAX_PACKET = 4 * 1024 * 1024  # OpenSSH's sftp-server takes at most 256 KiB; beyond this is abuse
MAX_HEAD = 64 * 1024  # a request that must be read whole (paths, attributes) is never bigger
MAX_HANDLE = 256  # the spec's limit on handle strings


class ProtocolViolation(Exception):
    """The stream is not SFTP (a length no server accepts): the channel must end."""


class Malformed(Exception):
    """A packet's fields do not parse (truncated strings and the like)."""


def open_flag_names(pflags: int) -> list[str]:
    """OPEN pflags as names, for audit."""
    return [name for bit, name in _FLAG_NAMES if pflags & bit]


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(raw: bytes) -> str:
    """A client or server name made safe for logs and terminals: UTF-8, with control bytes
    (newlines, ESC, C1) and invalid bytes written as ``\\xNN``."""
    text = raw.decode("utf-8", "backslashreplace")
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def as_path(raw: bytes) -> str:
    """A path as text for policy matching (undecodable bytes kept distinct, never merged)."""
    return raw.decode("utf-8", "surrogateescape")


class Reader:
    """Reads SFTP wire fields from one packet's head (after the 5-byte length and type)."""

    def __init__(self, data: bytes, pos: int = 5) -> None:
        self.data, self.pos = data, pos

    def uint32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise Malformed("truncated uint32")
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def uint64(self) -> int:
        if self.pos + 8 > len(self.data):
            raise Malformed("truncated uint64")
        (value,) = struct.unpack_from(">Q", self.data, self.pos)
        self.pos += 8
        return int(value)

    def string(self) -> bytes:
        size = self.uint32()
        if self.pos + size > len(self.data):
            raise Malformed("truncated string")
        value = self.data[self.pos:self.pos + size]
        self.pos += size
        return value

    def cstring(self) -> bytes:
        """A string the server reads as a C string (paths, extension names), as OpenSSH's
        ``sshbuf_get_cstring`` does: one trailing NUL is dropped, any other NUL is refused (the
        server would refuse it too), so policy sees the name the server acts on."""
        value = self.string()
        if value.endswith(b"\x00"):
            value = value[:-1]
        if b"\x00" in value:
            raise Malformed("a NUL inside a name")
        return value


def encode_status(request_id: int, code: Status, message: str) -> bytes:
    """A complete STATUS packet answering ``request_id`` (what the bastion sends on a denial)."""
    text = message.encode()
    body = struct.pack(">BIII", STATUS, request_id, int(code), len(text)) + text
    body += struct.pack(">I", 0)  # empty language tag
    return struct.pack(">I", len(body)) + body


def head_need(ptype: int, length: int, head: bytes, *, from_client: bool) -> int:
    """How many bytes of a packet (counting its 4-byte length) to collect before deciding.

    ``head`` is what was collected so far (at least 5 bytes); the answer may grow as variable
    fields (a handle, a name) become known, and never exceeds the packet.
    """
    total = length + 4
    if from_client:
        if ptype == WRITE:
            # id, handle string, offset, then the data string's length: the data itself streams.
            if len(head) < 13:
                return min(total, 13)
            handle_len = int(struct.unpack_from(">I", head, 9)[0])
            return min(total, 13 + min(handle_len, MAX_HANDLE) + 12)
        return total if total <= MAX_HEAD else min(total, 9)  # oversized: id only, refused
    if ptype == DATA:
        return min(total, 13)  # id and the data length
    if ptype == NAME:
        # id, count, and the first file name (REALPATH "." answers with the start directory).
        if len(head) < 17:
            return min(total, 17)
        name_len = int(struct.unpack_from(">I", head, 13)[0])
        return min(total, 17 + min(name_len, 4096))
    if ptype in (STATUS, HANDLE, VERSION):
        return min(total, MAX_HEAD)
    return min(total, 9)  # id only (ATTRS, EXTENDED_REPLY, anything else)


Decide = Callable[[int, int, bytes], bool]  # (type, length, head) -> forward the packet?
Piece = bytes | memoryview  # what a framer passes on: bytes, or a view into the fed chunk


def join(pieces: list[Piece]) -> bytes | None:
    """The pieces as one bytes object (the chunk itself when it passed whole); None if none."""
    if not pieces:
        return None
    if len(pieces) == 1:
        piece = pieces[0]
        return piece if isinstance(piece, bytes) else piece.tobytes()
    return b"".join(pieces)


@dataclass
class _Packet:
    ptype: int
    length: int


class Framer:
    """Frames one direction; ``feed`` returns what to pass on from a chunk (holding heads).

    ``decide(type, length, head)`` sees each packet's head once and says whether it goes on; a
    packet that does not is dropped whole. ``after(packet_end)`` hooks (``inject``) put complete
    packets into this direction between two packets, never inside one.
    """

    def __init__(self, decide: Decide, *, from_client: bool, passive: bool = False) -> None:
        self._decide = decide
        self._from_client = from_client
        # Passive: every packet goes on (``decide`` only reads), so chunks pass whole and heads
        # are copied aside; a chunk is cut only to put an injected packet at a boundary.
        self._passive = passive
        self._head = bytearray()  # the current packet's head, held until decided
        self._need = 5
        self._packet: _Packet | None = None
        self._skip = 0  # bytes of the current packet's body still to pass (or drop)
        self._forward = True
        self._injected: list[bytes] = []

    @property
    def at_boundary(self) -> bool:
        """True between packets with nothing held."""
        return self._skip == 0 and not self._head

    def inject(self, packet: bytes) -> bool:
        """Queue a whole packet for this direction; True if it may be sent right now."""
        if self.at_boundary:
            return True
        self._injected.append(packet)
        return False

    def feed(self, chunk: bytes) -> list[Piece]:
        """Parse ``chunk``; return the pieces to pass on now, in order.

        Pieces of the chunk are memoryviews (no copy); ``join`` makes the bytes to send.
        """
        if self._passive:
            return self._feed_passive(chunk)
        view = memoryview(chunk)
        out: list[Piece] = []
        pos, size = 0, len(chunk)
        start = 0  # start of the current run of bytes passed on as a slice of ``chunk``
        while pos < size:
            if self._skip:
                n = min(self._skip, size - pos)
                if not self._forward:
                    start = pos + n  # dropped: the run restarts after it
                pos += n
                self._skip -= n
                if self._skip == 0:
                    self._packet_done(out, view, start, pos)
                    start = pos
                continue
            take = min(self._need - len(self._head), size - pos)
            self._head += chunk[pos:pos + take]
            pos += take
            start = pos
            if len(self._head) < self._need:
                break
            self._advance_head(out)
        if self._skip and self._forward and start < size:
            out.append(view[start:] if start else chunk)
        return out

    def _feed_passive(self, chunk: bytes) -> list[Piece]:
        cut: int | None = None  # where the queued packets go in (the first boundary)
        pos, size = 0, len(chunk)
        while pos < size:
            if self._skip:
                n = min(self._skip, size - pos)
                pos += n
                self._skip -= n
                ended = self._skip == 0
            else:
                take = min(self._need - len(self._head), size - pos)
                self._head += chunk[pos:pos + take]
                pos += take
                if len(self._head) < self._need:
                    break
                ended = self._read_head()
            if ended:
                self._packet = None
                if cut is None and self._injected:
                    cut = pos
        if cut is None:
            return [chunk]
        injected, self._injected = self._injected, []
        return [chunk[:cut], *injected, chunk[cut:]] if cut < size else [chunk, *injected]

    def _complete_head(self) -> tuple[_Packet, bytes] | None:
        """The packet and its head once all of the head that matters has arrived, else None
        (``_need`` then says how many bytes to collect)."""
        head = bytes(self._head)
        if self._packet is None:
            length, ptype = struct.unpack_from(">IB", head, 0)
            if length < 1 or length > MAX_PACKET:
                raise ProtocolViolation(f"an SFTP packet of {length} bytes")
            self._packet = _Packet(ptype, length)
        packet = self._packet
        need = head_need(packet.ptype, packet.length, head, from_client=self._from_client)
        if need > len(head):
            self._need = need
            return None
        return packet, head

    def _read_head(self) -> bool:
        """Passive: read a complete head; True if the packet ends with it."""
        complete = self._complete_head()
        if complete is None:
            return False
        packet, head = complete
        self._decide(packet.ptype, packet.length, head)
        self._head.clear()
        self._need = 5
        self._skip = packet.length + 4 - len(head)
        return self._skip == 0

    def _advance_head(self, out: list[Piece]) -> None:
        complete = self._complete_head()
        if complete is None:
            return
        packet, head = complete
        self._forward = self._decide(packet.ptype, packet.length, head)
        if self._forward:
            out.append(head)
        self._head.clear()
        self._need = 5
        self._skip = packet.length + 4 - len(head)
        if self._skip == 0:
            self._packet = None
            self._flush_injected(out)

    def _packet_done(self, out: list[Piece], view: memoryview, start: int, pos: int) -> None:
        if self._forward and pos > start:
            out.append(view[start:pos])
        self._packet = None
        self._forward = True
        self._flush_injected(out)

    def _flush_injected(self, out: list[Piece]) -> None:
        if self._injected:
            out.extend(self._injected)
            self._injected.clear()
