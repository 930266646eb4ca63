"""Micro-benchmark of masking: a channel pipeline with masking against the same without it.

    python3 -m bench.masking [--mb 50] [--chunk 1048576] [--text plain,log,cards,binary]

Bulk: the relay's channel pipeline (bastion.relay.pipeline, the server's masking feature) fed
the same chunks with and without masking; prints the CPU time per MB of each and what masking
adds. CPU time (not wall time) because the machine is shared: other work moves wall time by 2-3x
between runs. The relay hands bulk output over in chunks of 1-2 MB (it reads while the previous
write drains), so the default chunk is 1 MiB; ``--chunk 4096`` shows the per-chunk overhead.

- plain: the text bench/run's pty figure cats (95 printable characters and CRLF per line).
- log: log lines with ANSI colours, git SHAs, UUIDs and a secret every 997 lines.
- cards: the same with a 16-digit number every 7 lines (card candidates, 1 in 10 Luhn-valid).
- binary: random bytes through an exec channel (scanned and counted, not changed).

Echo: one typed key and its echo through the whole pty pipeline on a real event loop (keystroke
recorder, user output stage, echo watcher, recorded copy), masking against none: added p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from bastion.config.masking import MaskingConfig
from bastion.config.model import Target
from bastion.masking import MaskingFactory
from bastion.masking.engine import Scanner
from bastion.masking.escapes import strip
from bastion.masking.prefilter import matches
from bastion.relay.pipeline import ChannelInfo, ChannelKind, Pipeline, Stream
from bastion.server.features import masking_feature

MB = 1_000_000
COLOURS = [b"\x1b[32m", b"\x1b[33m", b"\x1b[31m", b"\x1b[1;34m", b"\x1b[36m"]
SECRETS = [
    b"4111 1111 1111 1111", b"AKIAABCDEFGHIJKLMNOP", b"ghp_" + b"x1" * 18,
    b"Authorization: Bearer abc.def.ghi", b"https://bob:hunter2@db.example.com/x",
    b"export API_TOKEN=s3cr3t", b"mysql -uroot -pS3cret app",
]
TEXTS = ("plain", "log", "cards", "binary")


def bulk_text(size: int, seed: int = 7, numbers_every: int = 7) -> bytes:
    """Log-like lines with ANSI colours, git SHAs, UUIDs, a rare secret, and a 16-digit number
    every ``numbers_every`` lines (card candidates: about 1 in 10 passes the Luhn check)."""
    rng = random.Random(seed)
    words = [b"GET", b"POST", b"/api/v1/users", b"200", b"404", b"took", b"ms", b"cache",
             b"miss", b"worker", b"started", b"listening", b"on", b"port", b"request", b"id"]
    out = bytearray()
    line = 0
    while len(out) < size:
        line += 1
        colour = rng.choice(COLOURS)
        parts = [b"2026-11-30T13:%02d:%02d.%03dZ" % (line % 60, rng.randrange(60),
                                                       rng.randrange(1000)),
                 colour + rng.choice([b"INFO", b"WARN", b"DEBUG"]) + b"\x1b[0m"]
        parts += [rng.choice(words) for _ in range(rng.randrange(4, 10))]
        kind = line % 7
        if line % numbers_every == 0:
            parts.append(b"%016d" % rng.getrandbits(52))  # a long number, rarely Luhn-valid
        if kind == 0:
            parts.append(b"%040x" % rng.getrandbits(160))  # a git SHA
        elif kind == 1:
            parts.append(b"%08x-%04x-4%03x-a%03x-%012x" % (
                rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(12),
                rng.getrandbits(12), rng.getrandbits(48)))
        if line % 997 == 0:
            parts.append(rng.choice(SECRETS))
        out += b" ".join(parts) + b"\r\n"
    return bytes(out[:size])


def payload(text: str, size: int) -> bytes:
    """``size`` bytes of one kind of output (see the module doc)."""
    if text == "plain":  # bench/measure.py's payload, as a pty shows it (LF -> CRLF)
        line = bytes(range(0x21, 0x7F)) + b"\r\n"
        return (line * (size // len(line) + 1))[:size]
    if text == "binary":
        return os.urandom(size)
    return bulk_text(size, numbers_every=7 if text == "cards" else 10**9)


class _Context:
    """What the stages ask of a channel's StageContext (nothing is kept)."""

    def __init__(self, info: ChannelInfo) -> None:
        self.info = info

    def marker(self, label: str) -> None: ...
    def audit(self, event: str, **fields: Any) -> None: ...
    def notify_user(self, text: str) -> None: ...
    def send_to_target(self, data: bytes) -> None: ...
    def note_command(self, line: str, verdict: str, rule: str | None = None) -> None: ...
    def pause_input(self) -> None: ...
    def resume_input(self) -> None: ...
    def end_channel(self, reason: str) -> None: ...


def pipeline(masked: bool, pty: bool, to_user: Callable[[bytes, Stream], None]) -> Pipeline:
    """A channel pipeline with the server's masking feature (or no feature at all)."""
    info = ChannelInfo(kind=ChannelKind.SHELL if pty else ChannelKind.EXEC, pty=pty,
                       term="xterm" if pty else None, width=80, height=24, command=None,
                       subsystem=None, session_id="bench", channel=1, user="bench",
                       identity_key="k", groups=(), target=Target(name="web01", host="h"),
                       login="bench")
    features = [masking_feature(MaskingFactory(MaskingConfig()))] if masked else []
    return Pipeline.build(features, info, _Context(info), to_target=lambda d, s: None,
                          target_end=lambda: None, record_input=lambda d, s: None,
                          record_output=lambda d, s: None, to_user=to_user,
                          user_end=lambda: None)


def bulk_cpu(text: str, size_mb: float, chunk: int, repeat: int = 3) -> dict[str, float]:
    """CPU ms per MB of the output direction with and without masking (best of ``repeat``)."""
    data = payload(text, int(size_mb * MB))
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]

    async def once(masked: bool) -> float:  # inside a loop, as in the relay (the hold timer)
        chain = pipeline(masked, text != "binary", lambda d, s: None)
        start = time.process_time()
        for piece in chunks:
            chain.output.feed(piece, Stream.DATA)
        chain.output.end()
        return time.process_time() - start

    result = {}
    for name, masked in (("without", False), ("masked", True)):
        best = min(asyncio.run(once(masked)) for _ in range(repeat))
        result[name] = best * 1000 / (len(data) / MB)
    result["added"] = result["masked"] - result["without"]
    return result


def echo_latency(count: int = 2000) -> dict[str, float]:
    """Added delay (ms) of a typed key and its echo through the pty pipeline (real loop)."""
    async def measure(masked: bool) -> list[float]:
        arrived: list[float] = []
        chain = pipeline(masked, True, lambda d, s: arrived.append(time.perf_counter()))
        rng = random.Random(3)
        delays = []
        chain.output.feed(b"$ ", Stream.DATA)
        for _ in range(count):
            key = bytes([rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 -_")])
            arrived.clear()
            sent = time.perf_counter()
            chain.input.feed(key, Stream.DATA)  # the key (its recorded copy waits for the echo)
            chain.output.feed(key, Stream.DATA)  # its echo
            while not arrived:
                await asyncio.sleep(0)
            delays.append((arrived[0] - sent) * 1000)
        for stage in chain.all_stages():
            stage.close()
        return sorted(delays)

    masked, plain = asyncio.run(measure(True)), asyncio.run(measure(False))

    def at(values: list[float], share: float) -> float:
        return values[int(len(values) * share) - 1]

    return {"p50_ms": statistics.median(masked) - statistics.median(plain),
            "p99_ms": at(masked, 0.99) - at(plain, 0.99),
            "held_share": sum(1 for d in masked if d > 0.5) / len(masked)}


def prefilter_speed(text: str, size_mb: float) -> dict[str, float]:
    """MB/s of the raw and the visible Hyperscan prefilter alone (empty without Hyperscan)."""
    scanner = Scanner()
    data = payload(text, int(size_mb * MB))
    visible = strip(data)
    out = {}
    for name, database, over in (("raw", scanner.raw_prefilter, data),
                                 ("visible", scanner.prefilter, visible)):
        if database is not None:
            start = time.process_time()
            matches(database, over)
            out[name] = len(over) / MB / max(time.process_time() - start, 1e-9)
    return out


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--chunk", type=int, default=1 << 20)
    parser.add_argument("--text", default=",".join(TEXTS), help=f"some of {','.join(TEXTS)}")
    parser.add_argument("--echo", type=int, default=2000, help="keys typed (0: no echo run)")
    parser.add_argument("--hyperscan", action="store_true", help="the prefilters alone too")
    args = parser.parse_args(argv)
    out(f"CPU ms per MB of the output direction, chunks of {args.chunk} bytes, {args.mb} MB"
        " (the relay itself costs about 15 ms/MB of pty text: bench/run)")
    out(f"{'text':<8} {'no masking':>11} {'masking':>9} {'added':>9}")
    for text in args.text.split(","):
        res = bulk_cpu(text, args.mb, args.chunk)
        out(f"{text:<8} {res['without']:11.3f} {res['masked']:9.3f} {res['added']:9.3f}")
        if args.hyperscan:
            speeds = prefilter_speed(text, args.mb)
            out("         prefilter alone (to the first possible match): " + ", ".join(
                f"{name} {speed:.0f} MB/s" for name, speed in speeds.items()))
    if args.echo:
        echo = echo_latency(args.echo)
        out(f"echo (key + echo through the pty pipeline), added by masking: "
            f"p50 {echo['p50_ms']:.4f} ms, p99 {echo['p99_ms']:.4f} ms, "
            f"held for the timer {echo['held_share'] * 100:.1f}%")


if __name__ == "__main__":
    main()
