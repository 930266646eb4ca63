"""The transfers figure: scp (SFTP mode and -O), sftp and rsync of one large file, up and down.

Each method moves the same random file to web01 and back, through the bastion and through the
OpenSSH jump host (ProxyJump) in the same run; the figure is the time of each, the ratio
bastion / jump (the issue's bar: at most 1.2), the bastion's peak RSS during its transfers
(sampled from /proc every 0.2 s; the largest of its processes) and the CPU seconds the bastion's
processes spent on each transfer (less at the mercy of other load on the machine than the wall
clock, so a change to the relay shows there first). Every copy is checked by SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import measure
from bench.paths import BenchEnv

MB = 1_000_000
RATIO_MAX = 1.2
RSS_MAX_MB = 100.0
PATHS = ("jump", "bastion")
BLOCK = 4 * 1024 * 1024


def _random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        left = size
        while left:
            block = os.urandom(min(BLOCK, left))
            digest.update(block)
            fh.write(block)
            left -= len(block)
    return digest.hexdigest()


def _sha(path: Path) -> str | None:
    if not path.exists():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


class _PeakRss:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.peak = max(self.peak, measure.max_process_rss_bytes(self.pid))
            except OSError:
                return

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _commands(env: BenchEnv, path: str, local: Path, remote: Path, back: Path
              ) -> dict[str, dict[str, list[str]]]:
    """method -> direction -> argv, for one path (a Host of the bench's ssh_config)."""
    cfg = str(env.ssh_config)
    sftp = ["sftp", "-F", cfg, "-b", "-", path]
    rsh = f"ssh -F {shlex.quote(cfg)}"
    return {
        "scp": {"up": ["scp", "-F", cfg, str(local), f"{path}:{remote}"],
                "down": ["scp", "-F", cfg, f"{path}:{remote}", str(back)]},
        "scp -O": {"up": ["scp", "-O", "-F", cfg, str(local), f"{path}:{remote}"],
                   "down": ["scp", "-O", "-F", cfg, f"{path}:{remote}", str(back)]},
        "sftp": {"up": [*sftp, f"put {local} {remote}"],  # the batch line is the last item
                 "down": [*sftp, f"get {remote} {back}"]},
        "rsync": {"up": ["rsync", "-e", rsh, "--whole-file", str(local), f"{path}:{remote}"],
                  "down": ["rsync", "-e", rsh, "--whole-file", f"{path}:{remote}", str(back)]},
    }


def _run(argv: list[str], timeout: float) -> tuple[float, int, str]:
    batch = None
    if argv[0] == "sftp":
        argv, batch = argv[:-1], argv[-1] + "\n"
    start = time.perf_counter()
    try:
        result = subprocess.run(argv, input=batch, capture_output=True, text=True,
                                timeout=timeout, check=False,
                                stdin=None if batch else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, -1, "timed out"
    said = (result.stderr.strip().splitlines() or [""])[-1][:200]
    return time.perf_counter() - start, result.returncode, said


def run(env: BenchEnv, workdir: Path, size: int, rounds: int,
        log: Callable[[str], None]) -> dict[str, Any]:
    """Every method, both directions, both paths; the figure as a dict."""
    folder = workdir / "transfers"
    folder.mkdir(parents=True, exist_ok=True)
    local, remote, back = folder / "payload.bin", folder / "remote.bin", folder / "back.bin"
    expected = _random_file(local, size)
    timeout = max(300.0, size / MB * 2)
    out: dict[str, Any] = {"bytes": size, "rounds": rounds, "methods": {}}
    peak_rss = 0
    try:
        for path in PATHS:
            if path not in env.paths:
                out.setdefault("failures", {})[path] = "path not running"
        for method in ("scp", "scp -O", "sftp", "rsync"):
            figures: dict[str, Any] = {}
            for direction in ("up", "down"):
                seconds: dict[str, list[float]] = {p: [] for p in PATHS}
                bastion_cpu: list[float] = []
                failures: dict[str, str] = {}
                row_rss = 0
                for round_no in range(rounds):
                    for path in PATHS if round_no % 2 == 0 else PATHS[::-1]:
                        if path not in env.paths or path in failures:
                            continue
                        if direction == "down" and _sha(remote) != expected:
                            _run(_commands(env, "direct", local, remote, back)["scp"]["up"],
                                 timeout)  # the file to fetch, put there without measuring
                        back.unlink(missing_ok=True)
                        argv = _commands(env, path, local, remote, back)[method][direction]
                        log(f"transfers {method} {direction} round {round_no + 1}: {path}")
                        cpu_before = measure.cpu_seconds(env.bastion_pid)
                        with _PeakRss(env.bastion_pid) as rss:
                            took, status, said = _run(argv, timeout)
                        cpu = measure.cpu_seconds(env.bastion_pid) - cpu_before
                        if path == "bastion":
                            peak_rss = max(peak_rss, rss.peak)
                            row_rss = max(row_rss, rss.peak)
                        got = _sha(remote if direction == "up" else back)
                        env.clear_recordings()
                        if status != 0 or got != expected:
                            failures[path] = f"exit {status}, checksum " \
                                f"{'ok' if got == expected else 'wrong'}: {said}"
                            continue
                        seconds[path].append(took)
                        if path == "bastion":
                            bastion_cpu.append(cpu)
                med = {p: round(measure.median(v), 3) for p, v in seconds.items() if v}
                ratio = round(med["bastion"] / med["jump"], 3) \
                    if "bastion" in med and "jump" in med and med["jump"] else None
                figures[direction] = {
                    "seconds": med, "mb_per_s": {p: round(size / MB / s, 1)
                                                 for p, s in med.items()},
                    "ratio_vs_jump": ratio, "failures": failures,
                    "bastion_cpu_seconds": round(measure.median(bastion_cpu), 2)
                    if bastion_cpu else None,
                    "bastion_peak_rss_mib": round(row_rss / 2**20, 1)}
            out["methods"][method] = figures
    finally:
        for file in (local, remote, back):
            file.unlink(missing_ok=True)
    out["bastion_peak_rss_mib"] = round(peak_rss / 2**20, 1)
    return out


def verdicts(figure: dict[str, Any]) -> dict[str, Any]:
    """The issue's bars: each ratio at most 1.2; the bastion's RSS under 100 MB."""
    out: dict[str, Any] = {}
    for method, directions in figure["methods"].items():
        for direction, f in directions.items():
            ratio = f["ratio_vs_jump"]
            out[f"transfer_{method.replace(' ', '')}_{direction}_vs_jump"] = {
                "value": ratio, "target": f"<= {RATIO_MAX}",
                "met": None if ratio is None else ratio <= RATIO_MAX}
    rss = figure["bastion_peak_rss_mib"]
    out["transfer_bastion_peak_rss_mb"] = {"value": round(rss * 2**20 / MB, 1),
                                           "target": f"< {RSS_MAX_MB:.0f}",
                                           "met": rss * 2**20 / MB < RSS_MAX_MB}
    return out


def table(figure: dict[str, Any]) -> list[str]:
    """The figure as markdown lines."""
    lines = [f"\nfile transfers ({figure['bytes'] // MB} MB, median of {figure['rounds']}; "
             f"bastion peak RSS {figure['bastion_peak_rss_mib']} MiB)\n",
             "| method | direction | jump s | bastion s | bastion MB/s | x jump | RSS MiB "
             "| bastion CPU s |",
             "|---|---|---|---|---|---|---|---|"]
    for method, directions in figure["methods"].items():
        for direction, f in directions.items():
            secs = f["seconds"]
            failed = "; ".join(f"{p}: {why}" for p, why in f["failures"].items())
            lines.append(f"| {method} | {direction} | {secs.get('jump', '-')} | "
                         f"{secs.get('bastion', failed or '-')} | "
                         f"{f['mb_per_s'].get('bastion', '-')} | "
                         f"{f['ratio_vs_jump'] if f['ratio_vs_jump'] is not None else '-'} | "
                         f"{f.get('bastion_peak_rss_mib', '-')} | "
                         f"{f.get('bastion_cpu_seconds') or '-'} |")
    return lines
