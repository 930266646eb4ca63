"""Micro-benchmark of the masking output stage: bulk pty-like output and echo-sized chunks.

    python3 -m bench.masking [--mb 50] [--chunk 16384] [--hyperscan]

Prints MB/s of the output stage with every detector on against a pass-through stage fed the
same chunks, their ratio, and the added latency of small (echo-sized) chunks: median and p99 of
the time from ``feed`` to the chunk reaching the sink, with a real asyncio loop (chunks that
could start a secret wait for the hold timer). ``--hyperscan`` also times a Hyperscan block-mode
scan of the same detectors (if the ``hyperscan`` package is installed), the alternative engine
that was measured before choosing RE2.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Callable

from bastion.masking.engine import Scanner
from bastion.masking.timed import SharedState, UserOutputMasker
from bastion.relay.pipeline import Stage, Stream

_SCANNER = Scanner()
COLOURS = [b"\x1b[32m", b"\x1b[33m", b"\x1b[31m", b"\x1b[1;34m", b"\x1b[36m"]
SECRETS = [
    b"4111 1111 1111 1111", b"AKIAABCDEFGHIJKLMNOP", b"ghp_" + b"x1" * 18,
    b"Authorization: Bearer abc.def.ghi", b"https://bob:hunter2@db.example.com/x",
    b"export API_TOKEN=s3cr3t", b"mysql -uroot -pS3cret app",
]


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


class _Sink:
    def __init__(self) -> None:
        self.size = 0

    def __call__(self, data: bytes, stream: Stream) -> None:
        self.size += len(data)


def _run_stage(stage: Stage, chunks: list[bytes]) -> float:
    sink = _Sink()
    stage.emit = sink
    stage.emit_end = lambda: None
    start = time.perf_counter()
    for chunk in chunks:
        stage.feed(chunk, Stream.DATA)
    stage.end()
    return time.perf_counter() - start


def throughput(size_mb: int, chunk: int, numbers_every: int = 7) -> dict[str, float]:
    """MB/s of the pass-through and masking stages over the same chunks."""
    data = bulk_text(size_mb * 1_000_000, numbers_every=numbers_every)
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    results = {}

    async def run(make: Callable[[], Stage]) -> float:
        return _run_stage(make(), chunks)  # inside a loop, as in the relay (the hold timer)

    for name, make in (("pass-through", Stage), ("masking", _masking_stage)):
        best = min(asyncio.run(run(make)) for _ in range(3))
        results[name] = len(data) / best / 1e6
    return results


def _masking_stage() -> Stage:
    return UserOutputMasker(_SCANNER, SharedState(), delay=0.001)


def echo_latency(count: int = 2000) -> dict[str, float]:
    """Added delay (ms) of single keystroke echoes through the masking stage on a real loop."""
    async def measure() -> list[float]:
        stage = _masking_stage()
        arrived: list[float] = []
        stage.emit = lambda data, stream: arrived.append(time.perf_counter())
        stage.emit_end = lambda: None
        rng = random.Random(3)
        delays = []
        for _ in range(count):
            key = bytes([rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 -_")])
            arrived.clear()
            sent = time.perf_counter()
            stage.feed(key, Stream.DATA)
            while not arrived:
                await asyncio.sleep(0)
            delays.append((arrived[0] - sent) * 1000)
        stage.close()
        return delays

    delays = sorted(asyncio.run(measure()))
    return {"median_ms": statistics.median(delays),
            "p99_ms": delays[int(len(delays) * 0.99) - 1],
            "held_share": sum(1 for d in delays if d > 0.05) / len(delays)}


def hyperscan_scan(size_mb: int, chunk: int) -> float | None:
    """MB/s of the Hyperscan prefilter alone (``Scanner.maybe``; None without Hyperscan)."""
    if _SCANNER.prefilter is None:
        return None
    data = bulk_text(size_mb * 1_000_000)
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    start = time.perf_counter()
    for piece in chunks:
        _SCANNER.maybe(piece)
    return len(data) / (time.perf_counter() - start) / 1e6


def _print(name: str, value: float, unit: str) -> None:
    print(f"{name:<40} {value:10.2f} {unit}")


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=16384)
    parser.add_argument("--numbers-every", type=int, default=7,
                        help="one 16-digit number (card candidate) every N lines")
    parser.add_argument("--hyperscan", action="store_true")
    args = parser.parse_args(argv)
    res = throughput(args.mb, args.chunk, args.numbers_every)
    _print("pass-through stage", res["pass-through"], "MB/s")
    _print("masking stage (all detectors)", res["masking"], "MB/s")
    _print("masking / pass-through", res["masking"] / res["pass-through"], "x")
    _print("masking cost per MB", 1000 / res["masking"], "ms")
    echo = echo_latency()
    _print("echo added latency median", echo["median_ms"], "ms")
    _print("echo added latency p99", echo["p99_ms"], "ms")
    _print("echo chunks held for the timer", echo["held_share"] * 100, "%")
    if args.hyperscan:
        speed = hyperscan_scan(args.mb, args.chunk)
        if speed is None:
            out("hyperscan not installed")
        else:
            _print("hyperscan prefilter alone", speed, "MB/s")


if __name__ == "__main__":
    main()
