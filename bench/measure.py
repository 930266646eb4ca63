"""The measurements: bulk output, keystroke echo latency, idle sessions, login rate.

OpenSSH's ``ssh`` drives bulk and latency runs on every path; the concurrency and login-rate
runs use asyncssh clients in this process (no fork per session) against direct and bastion.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import select
import shlex
import signal
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh

CHUNK = 1 << 20
# 50 "other sessions streaming": each prints an 80-byte line every 10 ms (8 KB/s, 100 packets/s).
STREAM_COMMAND = "exec python3 -c " + shlex.quote(
    "import os, time\nwhile True:\n    os.write(1, b'%s\\n')\n    time.sleep(0.01)" % ("." * 79))
ECHO_COMMAND = "stty raw -echo; printf BENCH-READY; exec cat"


def make_payloads(folder: Path, size: int) -> tuple[Path, Path]:
    """A text file (printable lines) and a random binary file, ``size`` bytes each."""
    folder.mkdir(parents=True, exist_ok=True)
    text, binary = folder / "payload.txt", folder / "payload.bin"
    if not text.exists() or text.stat().st_size != size:
        line = bytes(range(0x21, 0x7F)) + b"\n"  # 95 printable characters and a newline
        # No path compresses (OpenSSH's default, asyncssh told so): repeating is fine.
        block = (line * (CHUNK // len(line) + 1))[:CHUNK]
        _write_repeated(text, block, size)
    if not binary.exists() or binary.stat().st_size != size:
        _write_repeated(binary, os.urandom(8 * CHUNK), size)
    return text, binary


def _write_repeated(path: Path, block: bytes, size: int) -> None:
    with path.open("wb") as out:
        left = size
        while left > 0:
            left -= out.write(block[:left])


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``, forked by any of its threads (empty if /proc cannot
    tell: the process is gone, or the kernel lacks CONFIG_PROC_CHILDREN)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (``bastion serve`` is a supervisor and its workers)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children(current)
    return found


def _cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:  # it ended meanwhile
        return 0.0
    # utime + stime, and cutime + cstime: what its children that ended used
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by a process and all its descendants."""
    return sum(_cpu_of(p) for p in process_tree(pid))


def _rss_of(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int) -> int:
    """Resident set size of a process and its descendants, added up (pages the workers
    still share with the supervisor are counted in each)."""
    return sum(_rss_of(p) for p in process_tree(pid))


def max_process_rss_bytes(pid: int) -> int:
    """The largest resident set of one process among ``pid`` and its descendants."""
    return max(_rss_of(p) for p in process_tree(pid))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- 1. bulk output ----------------------------------------------------------------------------
@dataclass
class BulkRun:
    seconds: float
    received: int
    exit_status: int


def bulk(argv: list[str], timeout: float) -> BulkRun:
    """Run ``argv`` (an ssh printing a payload), count what arrives, time it to the exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    received = 0
    fd = proc.stdout.fileno()
    deadline = start + timeout
    try:
        while time.perf_counter() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                data = os.read(fd, CHUNK)
                if not data:
                    break
                received += len(data)
        status = proc.wait(max(1.0, deadline - time.perf_counter()))
    except subprocess.TimeoutExpired:
        status = -1
    finally:
        _stop(proc)
        proc.stdout.close()
    return BulkRun(time.perf_counter() - start, received, status)


def upload(argv: list[str], payload: Path, timeout: float) -> BulkRun:
    """Run ``argv`` (an ssh writing its stdin to a file) fed with ``payload``; time it to the
    exit. ``received`` is the payload's size when ssh exits 0 (the caller checks the file)."""
    start = time.perf_counter()
    with payload.open("rb") as data:
        proc = subprocess.Popen(argv, stdin=data, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            status = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            status = -1
        finally:
            _stop(proc)
    size = payload.stat().st_size if status == 0 else 0
    return BulkRun(time.perf_counter() - start, size, status)


# -- 2. keystroke echo latency -------------------------------------------------------------------
def _read_until(fd: int, needle: bytes, timeout: float) -> bool:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            data = os.read(fd, 4096)
            if not data:
                return False
            seen = (seen + data)[-4096:]
    return True


def echo_latency(argv: list[str], samples: int, gap: float) -> list[float]:
    """Seconds from one byte written to ``ssh -tt`` to its echo read back, ``samples`` times.

    The remote end is ``stty raw -echo; cat`` on the target's pty: every byte comes straight
    back, so the time is the path's round trip for one keystroke.
    """
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    out, inp = proc.stdout.fileno(), proc.stdin.fileno()
    results: list[float] = []
    try:
        if not _read_until(out, b"BENCH-READY", 60):
            raise RuntimeError("the echo session did not start")
        for _ in range(samples):
            t0 = time.perf_counter()
            os.write(inp, b"k")
            got = b""
            while b"k" not in got:
                ready, _, _ = select.select([out], [], [], 10)
                if not ready:
                    raise RuntimeError("no echo within 10 s")
                got = os.read(out, 64)
                if not got:
                    raise RuntimeError("the echo session ended")
            results.append(time.perf_counter() - t0)
            time.sleep(gap)
    finally:
        _stop(proc)
        proc.stdin.close()
        proc.stdout.close()
    return results


class Streamers:
    """``count`` sessions through a path, each streaming output; drained by threads."""

    def __init__(self, argv: list[str], count: int) -> None:
        self.argv = argv
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []
        self.received = [0] * count
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Streamers:
        # A few at a time, each batch streaming before the next: sshd's default MaxStartups
        # (10) drops connections beyond ten unauthenticated ones.
        for first in range(0, self.count, self.BATCH):
            batch = range(first, min(first + self.BATCH, self.count))
            for index in batch:
                self._start(index)
            for _attempt in range(3):
                self._await(batch)
                dead = [i for i in batch if not self.received[i]
                        and self.procs[i].poll() is not None]
                if not dead:
                    break
                for index in dead:
                    self._start(index)
        return self

    BATCH = 5

    def _start(self, index: int) -> None:
        proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        if index < len(self.procs):
            _stop(self.procs[index])
            self.procs[index] = proc
        else:
            self.procs.append(proc)
        thread = threading.Thread(target=self._drain, args=(index, proc), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _await(self, batch: range) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(self.received[i] or self.procs[i].poll() is not None for i in batch):
                return
            time.sleep(0.02)

    @property
    def streaming(self) -> int:
        """How many of the sessions have delivered output."""
        return sum(1 for n in self.received if n)

    def _drain(self, index: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.received[index] += len(data)

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            _stop(proc)
        for thread in self._threads:
            thread.join(5)
        for proc in self.procs:
            if proc.stdout is not None:
                proc.stdout.close()


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(fraction * len(ordered)))) - 1]


# -- 3. idle sessions ------------------------------------------------------------------------
class _FirstOutput(asyncssh.SSHClientSession[bytes]):
    def __init__(self) -> None:
        self.started = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if not self.started.done():
            self.started.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.started.done():
            self.started.set_exception(exc or ConnectionError("session closed"))


@dataclass
class IdleResult:
    requested: int
    opened: int
    failures: dict[str, int]
    open_seconds: float
    rss_before: int
    rss_after: int
    cpu_idle_percent: float
    stopped_early: str | None


async def idle_sessions(options: dict[str, object], count: int, parallel: int, pid: int,
                        idle_seconds: float, min_available: int = 2 << 30) -> IdleResult:
    """Open ``count`` interactive pty shells through the bastion and hold them; measure it."""
    rss_before = rss_bytes(pid)
    conns: list[asyncssh.SSHClientConnection] = []
    failures: dict[str, int] = {}
    stopped: str | None = None
    gate = asyncio.Semaphore(parallel)

    async def one() -> None:
        nonlocal stopped
        async with gate:
            if stopped is not None:
                return
            if _mem_available() < min_available:
                stopped = "stopped opening: less than 2 GiB of memory left on the machine"
                return
            try:
                conn = await asyncio.wait_for(asyncssh.connect(**options), 60)
                conns.append(conn)
                _, session = await conn.create_session(_FirstOutput, term_type="xterm",
                                                       term_size=(80, 24), encoding=None)
                assert isinstance(session, _FirstOutput)
                await asyncio.wait_for(session.started, 60)
            except (OSError, asyncssh.Error, TimeoutError, ConnectionError) as exc:
                name = type(exc).__name__
                failures[name] = failures.get(name, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    open_seconds = time.perf_counter() - start
    opened = len(conns) - sum(failures.values())
    await asyncio.sleep(2.0)  # let the bastion settle (flushes, first upkeep passes)
    rss_after = rss_bytes(pid)
    cpu0 = cpu_seconds(pid)
    await asyncio.sleep(idle_seconds)
    cpu_idle = (cpu_seconds(pid) - cpu0) / idle_seconds * 100
    for conn in conns:
        conn.close()
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
    return IdleResult(count, max(0, opened), failures, open_seconds, rss_before, rss_after,
                      cpu_idle, stopped)


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


# -- 4. login rate ---------------------------------------------------------------------------
async def login_rate(options: dict[str, object], seconds: float, parallel: int,
                     ) -> tuple[float, int, int]:
    """Sessions per second opened, used (exec ``true``) and closed; (rate, done, failed)."""
    done = failed = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, failed
        while time.perf_counter() < deadline:
            try:
                async with asyncssh.connect(**options) as conn:
                    await conn.run("true", check=True)
                done += 1
            except (OSError, asyncssh.Error):
                failed += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    elapsed = time.perf_counter() - start
    return done / elapsed, done, failed


def median(values: list[float]) -> float:
    """The median (of the rounds)."""
    return statistics.median(values)
