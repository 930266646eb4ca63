"""Write a session channel as a sanitized asciicast v2 file for asciinema's players.

Output goes through the terminal-mode sanitizer (colours and cursor movement stay, anything that
talks to the terminal goes); markers and input become plain visible text; the header keeps only
the size, the start time and a sanitized title.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bastion.errors import ReplayError
from bastion.replay.cast import parse_size
from bastion.replay.sanitize import Mode, Sanitizer, one_line, visible_keys
from bastion.replay.session import Channel, SessionFolder
from bastion.replay.transcript import channel_events


def export_cast(folder: SessionFolder, chan: Channel, out: Path) -> int:
    """Write the sanitized recording of ``chan`` to ``out`` (never over an existing file);
    return the number of events written."""
    cast, events = channel_events(folder, chan)
    width, height = (cast.width, cast.height) if cast is not None else (80, 24)
    header = {"version": 2, "width": width, "height": height,
              "title": one_line(f"bastion {folder.session_id} channel {chan.describe()}", 200)}
    if cast is not None and isinstance(cast.header.get("timestamp"), int):
        header["timestamp"] = cast.header["timestamp"]
    clean = Sanitizer(Mode.TERMINAL)
    lines = [json.dumps(header, ensure_ascii=False)]
    for event in events:
        if event.code == "o":
            data = clean.feed(event.data)
            if not data:
                continue
        elif event.code == "r":
            width_r, height_r = parse_size(event.data)
            data = f"{width_r}x{height_r}"
        elif event.code == "i":
            data = visible_keys(event.data)
        else:
            data = one_line(event.data, 2000)
        lines.append(json.dumps([round(event.t, 6), event.code, data], ensure_ascii=False))
    content = ("\n".join(lines) + "\n").encode()  # before the file exists: nothing half-made
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ReplayError(f"cannot write {out}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
    except OSError as exc:
        out.unlink(missing_ok=True)  # a retry must not meet a partial file (O_EXCL)
        raise ReplayError(f"cannot write {out}: {exc.strerror or exc}") from None
    return len(lines) - 1
