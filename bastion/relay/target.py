"""The target's end of a relayed channel: its output enters the channel's output pipeline.

Bytes move in asyncssh's callbacks with no queue in between. Back-pressure is asyncssh's own: when
the user's send buffer is full, reading from the target pauses, so SSH windows close and a slow
client slows the target instead of growing memory.

The chunks that arrive in one event-loop pass (a terminal's few KiB per read, a transfer's
32 KiB SSH packets) are joined into one write, and one recorder event, of at most about
``JOIN_MAX`` bytes: as soon as that much is held it goes on. So no buffer the relay makes grows
with the window or the file, and the user's pause takes effect within ``JOIN_MAX``: asyncssh
stops handing the target's data over as soon as reading is paused. (Before this bound, a resumed
channel handed over a whole 2 MiB window in one pass, joined and copied whole on its way, and
the bastion's heap grew by 20-40 MiB during a 1 GB download.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import asyncssh

from bastion.relay import passend, wire
from bastion.relay.pipeline import Stream

if TYPE_CHECKING:
    from bastion.relay.channel_relay import ChannelRelay

# Bytes joined into one write at most. Large enough that per-write costs (a recorder event and
# timing line, asyncssh's write, exec output masking's scan per chunk) are spread over eight
# 32 KiB packets: 500 MB rsync down took 4.0-4.5 CPU-s joined to 128-256 KiB against 5.4-5.5 s
# with each packet on its own; the recorder writes chunks of 64 KiB or more without a copy.
JOIN_MAX = 256 * 1024


class PassJoiner:
    """The chunks that arrive in one event-loop pass, handed to ``deliver`` as one at its end
    (``passend``: no timer), and at once when about ``JOIN_MAX`` bytes are held. A lone chunk
    is handed on as it is, not copied. A keystroke's echo does not wait for the pass's end
    (``ChannelRelay.echo_due``)."""

    __slots__ = ("_deliver", "_held", "_held_bytes", "_scheduled")

    def __init__(self, deliver: Callable[[bytes], None]) -> None:
        self._deliver = deliver
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._scheduled = False

    def add(self, data: bytes) -> None:
        """Hold ``data`` until the pass ends (or hand on everything held, if that is enough)."""
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= JOIN_MAX:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            passend.at_pass_end(passend.JOIN, self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Hand on what is held now (before an EOF, a signal or stderr, to keep the order)."""
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        self._held_bytes = 0
        self._deliver(data)


class TargetChannel(asyncssh.SSHClientSession[bytes]):
    """asyncssh's client session on the target; hands everything to its ``ChannelRelay``."""

    def __init__(self, relay: ChannelRelay) -> None:
        self._relay = relay
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str, str] | None = None
        # Output that arrived in this event-loop pass, handed on as one chunk at its end.
        self._joined = PassJoiner(lambda data: relay.output.feed(data, Stream.DATA))

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        wire.no_packet_log(chan)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.flush()  # keep stdout before stderr as the target sent them
            self._relay.output.feed(data, Stream.STDERR)
            return
        # One socket read from the target holds many small packets (a pty gives ~4 KiB per
        # read); joining those of one loop pass makes full-size packets to the user and one
        # recorder event: asyncssh encrypts and sends per packet, so this is most of the
        # relay's cost.
        self._joined.add(data)
        if self._relay.echo_due():  # a keystroke's echo: on to the user now (channel_relay)
            self._joined.flush()
            self._relay.flush_to_user()

    def flush(self) -> None:
        """Hand on the output held from this event-loop pass."""
        self._joined.flush()

    def eof_received(self) -> bool:
        self.flush()
        self._relay.output.end()
        return True

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = (signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:
        self._relay.pause_input("target")

    def resume_writing(self) -> None:
        self._relay.resume_input("target")

    def connection_lost(self, exc: Exception | None) -> None:
        self.flush()  # output before the exit status, as the target sent it
        self._relay.target_closed(self, exc)
