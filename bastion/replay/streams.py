"""Byte-exact exec/sftp streams and their timing file, turned into timed events.

The timing file has one line per chunk, util-linux scriptreplay's advanced format: ``I``
(stdin), ``O`` (stdout) or our ``E`` (stderr), the delay in seconds since the previous line, and
the chunk's byte count; the bytes themselves are in ``<n>-<kind>.stdin/.stdout/.stderr``. Lines
that do not parse, or counts past the end of a stream, end the reading with a ReplayError.
"""

from __future__ import annotations

import codecs
import math

from bastion.errors import ReplayError
from bastion.replay.cast import Event
from bastion.replay.session import STREAMS, Channel, SessionFolder

_CODES = {"I": ("stdin", "i"), "O": ("stdout", "o"), "E": ("stderr", "o")}


def timed_events(folder: SessionFolder, chan: Channel) -> list[Event]:
    """The channel's streams as events in recorded order (stdin as ``i``, stdout and stderr
    as ``o``), text decoded as UTF-8 (bad bytes become U+FFFD)."""
    data = {s: folder.read_stream(chan, s) or b"" for s in STREAMS}
    timing_name = next((f for f in chan.files if f.endswith(".timing")), None)
    if timing_name is None:
        return [Event(0.0, "o", data["stdout"].decode("utf-8", "replace"))] if data["stdout"] \
            else []
    path = folder.file(timing_name)
    try:
        lines = path.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror}") from None
    decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in STREAMS}
    offsets = dict.fromkeys(STREAMS, 0)
    events = []
    t = 0.0
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            stream, code = _CODES[parts[0]]
            delay, count = float(parts[1]), int(parts[2])
            if len(parts) != 3 or not math.isfinite(delay) or delay < 0 or count < 0:
                raise ValueError
        except (KeyError, IndexError, ValueError):
            raise ReplayError(f"{path}: line {number} is not 'I|O|E DELAY BYTES'") from None
        start = offsets[stream]
        if start + count > len(data[stream]):
            raise ReplayError(f"{path}: line {number} runs past the end of the {stream} stream")
        offsets[stream] = start + count
        t += delay
        text = decoders[stream].decode(data[stream][start:start + count])
        if text:
            events.append(Event(t, code, text))
    return events
