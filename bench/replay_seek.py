"""Seek time in a one-hour recording: keyframe index build, then random seeks.

Usage: PYTHONPATH=. python3 -m bench.replay_seek [--hours 1] [--seeks 50]
Generates a synthetic shell recording (a prompt, a command, 1-40 lines of coloured output about
every 2 s, a full-screen redraw now and then), writes it as an asciicast, and measures: reading
the file, building the whole keyframe index, a cold seek to the end (index built on demand), and
random seeks once indexed. Prints the figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from bastion.replay.cast import read_cast
from bastion.replay.screens import Emulator, Timeline


def make_cast(path: Path, hours: float, rng: random.Random) -> int:
    """Write the synthetic recording; return its size in bytes."""
    lines = [json.dumps({"version": 2, "width": 120, "height": 40, "timestamp": 0,
                         "term": {"type": "xterm-256color"}})]
    t = 0.0
    end = hours * 3600
    n = 0
    while t < end:
        n += 1
        t += rng.uniform(0.2, 4.0)
        command = f"ls -la /var/log/app{n % 50}"
        lines.append(json.dumps([round(t, 6), "i", command + "\r"]))
        lines.append(json.dumps([round(t, 6), "m", f"command: {command}"]))
        out = [f"\x1b[01;34mdir{i}\x1b[0m  -rw-r--r-- 1 root root {rng.randint(1, 10**6):>8} "
               f"Nov 30 12:{i % 60:02d} file-{n}-{i}.log" for i in range(rng.randint(1, 40))]
        t += 0.05
        lines.append(json.dumps([round(t, 6), "o", command + "\r\n" + "\r\n".join(out)
                                 + "\r\n\x1b[32muser@web01\x1b[0m:~$ "]))
        if n % 150 == 0:  # a full-screen program: clear, draw, leave
            t += 0.5
            screen = "\x1b[?1049h\x1b[2J\x1b[H" + "".join(
                f"\x1b[{row};1H\x1b[7m{row:3d}\x1b[0m " + "x" * 100 for row in range(1, 41))
            lines.append(json.dumps([round(t, 6), "o", screen]))
            t += 3.0
            lines.append(json.dumps([round(t, 6), "o", "\x1b[?1049l"]))
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return len(text.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--seeks", type=int, default=50)
    parser.add_argument("--check", type=int, default=5, help="seeks compared with linear replay")
    args = parser.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "1-shell.cast"
        size = make_cast(path, args.hours, rng)
        started = time.perf_counter()
        cast = read_cast(path)
        read_s = time.perf_counter() - started
        print(f"recording: {cast.duration / 3600:.2f} h, {len(cast.events)} events, "
              f"{size / 1e6:.1f} MB; read in {read_s:.2f} s")

        cold = Timeline(cast)
        started = time.perf_counter()
        cold.emulator_at(cast.duration)
        cold_s = time.perf_counter() - started
        print(f"cold seek to the end (index built on the way): {cold_s:.2f} s, "
              f"{len(cold._keyframes)} keyframes")

        times = []
        for _ in range(args.seeks):
            t = rng.uniform(0, cast.duration)
            started = time.perf_counter()
            cold.emulator_at(t)
            times.append(time.perf_counter() - started)
        times.sort()
        print(f"seek once indexed ({args.seeks} random moments): median "
              f"{statistics.median(times) * 1000:.1f} ms, p95 "
              f"{times[int(len(times) * 0.95) - 1] * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms")

        for _ in range(args.check):  # the fast path gives the same screen as replaying it all
            t = rng.uniform(0, cast.duration)
            emu, count = cold.emulator_at(t)
            linear = Emulator(cast.width, cast.height)
            for event in cast.events[:count]:
                linear.apply(event)
            assert emu.screen.display == linear.screen.display, f"screen differs at {t}"
        print(f"{args.check} random seeks checked equal to linear replay")


if __name__ == "__main__":
    main()
