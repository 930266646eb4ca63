"""Figure 6, scale-out (issue 14): what worker processes buy, in one run.

The bastion is restarted with each setting in turn (``--workers`` N with the shared socket,
N with SO_REUSEPORT, and 1), and for each, and for the OpenSSH jump host in the same run:

- keystroke echo p99 with ``load_sessions`` other sessions streaming (added over direct);
- aggregate throughput of ``parallel`` bulk exec sessions started together (binary ``cat``),
  and how the sessions spread over the workers (from the audit log).

With each figure, the machine's load meanwhile: the whole machine's busy share, the cores the
bastion used, and the direct path's echo under the same streaming load. On a machine whose
cores also run the clients, sshds and load generators, these say how much of a figure is the
relay and how much the machine.

The parallel bulk figure is then taken again with each worker held to ``worker_share`` of a
core (its own CPU cgroup, ``WorkerCap``), 1 worker against one per CPU: with the workers the
bound and the machine's other cores free for the clients and sshds, it shows what a worker
adds, which the shared cores of the figure above cannot (on 2 cores shared with 8 ssh clients
and 8 sshds, one worker already carries about what the machine can; docs/performance.md).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import measure
from bench.paths import BenchEnv

MB = 1024 * 1024


def _cpu_ticks() -> tuple[int, int]:
    """All and idle (with iowait) CPU time of the machine so far, in ticks (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return sum(values), values[3] + values[4]


class MachineLoad:
    """How busy the whole machine was, and how many cores ``pid``'s tree used, over a span."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.figures: dict[str, float] = {}

    def __enter__(self) -> MachineLoad:
        self._ticks = _cpu_ticks()
        self._wall = time.perf_counter()
        self._cpu = measure.cpu_seconds(self.pid) if self.pid else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        total, idle = _cpu_ticks()
        wall = time.perf_counter() - self._wall
        busy = 1 - (idle - self._ticks[1]) / max(total - self._ticks[0], 1)
        self.figures["machine_busy_pct"] = round(100 * busy, 1)
        if self.pid:
            self.figures["bastion_cores"] = round(
                (measure.cpu_seconds(self.pid) - self._cpu) / wall, 2)


class CapUnavailable(Exception):
    """The machine gives no CPU cgroup this bench may use (not root, no cpu controller)."""


_CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
_CGROUP_V2 = Path("/sys/fs/cgroup")
CAP_PERIOD_US = 10_000  # short: a capped worker runs in 10 ms rounds, not 100 ms bursts


class WorkerCap:
    """Each of ``pids`` held to ``share`` of one core, in a CPU cgroup of its own (v1 ``cpu``
    controller or v2 ``cpu.max``); put back in the root group on exit."""

    def __init__(self, pids: list[int], share: float) -> None:
        self.pids = pids
        self.quota = max(1000, int(share * CAP_PERIOD_US))
        self.groups: list[Path] = []
        if (_CGROUP_V2 / "cgroup.controllers").exists():
            self.root = _CGROUP_V2
            if "cpu" not in (_CGROUP_V2 / "cgroup.subtree_control").read_text().split():
                raise CapUnavailable("cgroup v2 without the cpu controller enabled at the root")
        elif (_CGROUP_V1 / "cpu.cfs_quota_us").exists():
            self.root = _CGROUP_V1
        else:
            raise CapUnavailable("no CPU cgroup controller mounted")

    def __enter__(self) -> WorkerCap:
        try:
            for pid in self.pids:
                group = self.root / f"bastion-bench-{uuid.uuid4().hex[:8]}"
                group.mkdir()
                self.groups.append(group)
                if self.root is _CGROUP_V2:
                    (group / "cpu.max").write_text(f"{self.quota} {CAP_PERIOD_US}")
                else:
                    (group / "cpu.cfs_period_us").write_text(str(CAP_PERIOD_US))
                    (group / "cpu.cfs_quota_us").write_text(str(self.quota))
                (group / "cgroup.procs").write_text(str(pid))  # the worker and its threads
        except OSError as exc:
            self.__exit__()
            raise CapUnavailable(f"cannot make a CPU cgroup: {exc.strerror or exc}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        for pid in self.pids:
            try:
                (self.root / "cgroup.procs").write_text(str(pid))
            except OSError:
                continue  # gone already
        for group in self.groups:
            try:
                group.rmdir()
            except OSError:
                continue
        self.groups = []


def parallel_bulk(argv: list[str], count: int, size: int, timeout: float,
                  pid: int | None = None) -> dict[str, Any]:
    """``count`` copies of ``argv`` (each printing ``size`` bytes) at once: aggregate MB/s,
    with the machine's load meanwhile (and the cores ``pid``'s processes used)."""
    runs: list[measure.BulkRun | None] = [None] * count

    def one(index: int) -> None:
        runs[index] = measure.bulk(argv, timeout)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    start = time.perf_counter()
    with MachineLoad(pid) as load:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    seconds = time.perf_counter() - start
    complete = [r for r in runs if r is not None and r.exit_status == 0 and r.received == size]
    return {"sessions": count, "complete": len(complete), "seconds": round(seconds, 3),
            "aggregate_mb_per_s": round(sum(r.received for r in complete) / MB / seconds, 1),
            **load.figures}


def loaded_echo(env: BenchEnv, path: str, samples: int, load_sessions: int,
                pid: int | None = None) -> dict[str, Any]:
    """Echo p50/p99 through ``path`` with ``load_sessions`` others streaming through it, and
    the machine's load meanwhile.

    Through a path other than direct, the direct path's echo is also taken under that same
    load: what the busy machine alone adds, with no relay in the keystroke's way (on shared
    cores the relay's CPU slows every process, the measuring ssh client and sshd included).
    """
    argv = env.ssh(path, measure.ECHO_COMMAND, tty=True)
    floor: list[float] = []
    try:
        with measure.Streamers(env.ssh(path, measure.STREAM_COMMAND, tty=True),
                               load_sessions) as load, MachineLoad(pid) as machine:
            values = measure.echo_latency(argv, samples, 0.005)
            if path != "direct":
                floor = measure.echo_latency(env.ssh("direct", measure.ECHO_COMMAND, tty=True),
                                             samples, 0.005)
            streaming = load.streaming
    except RuntimeError as exc:
        return {"error": str(exc)}
    out = {"p50_ms": round(measure.percentile(values, 0.5) * 1000, 3),
           "p99_ms": round(measure.percentile(values, 0.99) * 1000, 3),
           "streaming_sessions": streaming, **machine.figures}
    if floor:
        out["direct_under_this_load_p99_ms"] = round(measure.percentile(floor, 0.99) * 1000, 3)
    return out


def _spread(audit: Path, since: float) -> dict[str, int]:
    """Sessions started per worker since ``since`` (audit ``session.start`` events)."""
    counts: Counter[str] = Counter()
    for line in audit.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event["event"] == "session.start" and event.get("worker") is not None:
            stamp = dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
            if stamp >= since:
                counts[str(event["worker"])] += 1
    return dict(sorted(counts.items()))


def run(env: BenchEnv, workdir: Path, args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """The scale figure; see the module docstring."""
    cpus = os.cpu_count() or 1
    count = args.parallel_sessions
    size = int(min(args.size_mb, 50) * MB)
    _, binary = measure.make_payloads(workdir / "scale-payload", size)
    command = f"cat {shlex.quote(str(binary))}"
    timeout = max(120.0, size / MB * count)
    settings = [("bastion_workers_cpus", cpus, "shared"),
                ("bastion_workers_cpus_reuseport", cpus, "reuseport"),
                ("bastion_one_worker", 1, "shared")]
    out: dict[str, Any] = {"cpus": cpus, "parallel_sessions": count,
                           "bytes_per_session": size, "load_sessions": args.load_sessions,
                           "samples": args.samples}
    audit = env.stack.state_dir / "audit.jsonl"
    log("scale: direct and jump host")
    out["direct"] = {"loaded_echo": loaded_echo(env, "direct", args.samples,
                                                args.load_sessions)}
    out["jump"] = {"loaded_echo": loaded_echo(env, "jump", args.samples, args.load_sessions),
                   "parallel_bulk": parallel_bulk(env.ssh("jump", command), count, size,
                                                  timeout)}
    for name, workers, balance in settings:
        log(f"scale: bastion with {workers} worker(s), {balance}")
        env.restart_bastion(workers=workers, balance=balance)
        since = time.time() - 1
        figure: dict[str, Any] = {"workers": workers, "balance": balance}
        figure["parallel_bulk"] = parallel_bulk(env.ssh("bastion", command), count, size,
                                                timeout, env.bastion_pid)
        figure["parallel_bulk"]["sessions_per_worker"] = _spread(audit, since)
        env.clear_recordings()
        figure["loaded_echo"] = loaded_echo(env, "bastion", args.samples, args.load_sessions,
                                            env.bastion_pid)
        env.clear_recordings()
        out[name] = figure
    if args.worker_share > 0:
        out["capped"] = capped_bulk(env, command, count, size, timeout, args.worker_share,
                                    cpus, log)
    env.restart_bastion(workers=0, balance="shared")  # as shipped, for what runs next
    direct = out["direct"]["loaded_echo"].get("p99_ms")
    one = out["bastion_one_worker"]["parallel_bulk"]["aggregate_mb_per_s"]
    for name in ("jump", *(s[0] for s in settings)):
        p99 = out[name]["loaded_echo"].get("p99_ms")
        out[name]["loaded_echo_added_p99_ms"] = round(p99 - direct, 3) \
            if p99 is not None and direct is not None else None
        floor = out[name]["loaded_echo"].get("direct_under_this_load_p99_ms")
        out[name]["machine_added_p99_ms"] = round(floor - direct, 3) \
            if floor is not None and direct is not None else None
        rate = out[name]["parallel_bulk"]["aggregate_mb_per_s"]
        out[name]["parallel_bulk_vs_one_worker"] = round(rate / one, 2) if one else None
    return out


def capped_bulk(env: BenchEnv, command: str, count: int, size: int, timeout: float,
                share: float, cpus: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Parallel bulk with 1 worker and with one per CPU, each worker held to ``share`` of a
    core (``WorkerCap``); ``vs_one_worker`` is the second's throughput over the first's."""
    out: dict[str, Any] = {"worker_share": share}
    for name, workers in (("one_worker", 1), ("workers_cpus", cpus)):
        log(f"scale: bastion with {workers} worker(s), each held to {share} of a core")
        env.restart_bastion(workers=workers, balance="shared")
        pids = measure.children(env.bastion_pid)  # the supervisor's workers
        try:
            if not pids:
                raise CapUnavailable("cannot list the workers of bastion serve in /proc")
            with WorkerCap(pids, share):
                out[name] = parallel_bulk(env.ssh("bastion", command), count, size, timeout,
                                          env.bastion_pid)
        except CapUnavailable as exc:
            return {"worker_share": share, "error": str(exc)}
        out[name]["workers"] = len(pids)
        env.clear_recordings()
    one = out["one_worker"]["aggregate_mb_per_s"]
    out["vs_one_worker"] = round(out["workers_cpus"]["aggregate_mb_per_s"] / one, 2) \
        if one else None
    return out


def verdicts(r: dict[str, Any]) -> dict[str, Any]:
    """Issue 14's targets: loaded echo p99 and parallel scaling with a worker per CPU."""
    full = r["bastion_workers_cpus"]
    added = full.get("loaded_echo_added_p99_ms")
    scaling = full.get("parallel_bulk_vs_one_worker")
    return {
        "scale_loaded_echo_added_p99_ms": {
            "value": added, "target": "<= 5", "met": None if added is None else added <= 5.0},
        "scale_parallel_bulk_vs_one_worker": {
            "value": scaling, "target": ">= 1.6",
            "met": None if scaling is None else scaling >= 1.6}}


def table(r: dict[str, Any]) -> list[str]:
    """The scale figure as a markdown table."""
    lines = [f"\nscale-out ({r['cpus']} CPUs): loaded echo ({r['load_sessions']} sessions "
             f"streaming, {r['samples']} samples) and {r['parallel_sessions']} bulk sessions "
             f"at once ({r['bytes_per_session'] // MB} MB each). 'direct, same load': the "
             "direct path's echo p99 added while the load streams through this path (what the "
             "busy machine alone adds); 'busy': the whole machine's CPU, 'cores': the "
             "bastion's\n",
             "| path | echo p99 ms | added p99 ms | direct, same load: added p99 ms | busy % | "
             "parallel MB/s | x one worker | busy % | cores | sessions per worker |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("direct", "jump", "bastion_one_worker", "bastion_workers_cpus",
                 "bastion_workers_cpus_reuseport"):
        figure = r.get(name, {})
        echo = figure.get("loaded_echo", {})
        bulk = figure.get("parallel_bulk", {})
        lines.append(f"| {name} | {echo.get('p99_ms', echo.get('error', '-'))} | "
                     f"{figure.get('loaded_echo_added_p99_ms', '-')} | "
                     f"{figure.get('machine_added_p99_ms', '-')} | "
                     f"{echo.get('machine_busy_pct', '-')} | "
                     f"{bulk.get('aggregate_mb_per_s', '-')} | "
                     f"{figure.get('parallel_bulk_vs_one_worker', '-')} | "
                     f"{bulk.get('machine_busy_pct', '-')} | {bulk.get('bastion_cores', '-')} | "
                     f"{bulk.get('sessions_per_worker', '-')} |")
    capped = r.get("capped")
    if capped:
        lines.append(f"\nparallel bulk with each worker held to {capped['worker_share']} of a "
                     "core (the workers the bound):\n")
        if "error" in capped:
            lines.append(f"not measured: {capped['error']}")
            return lines
        lines += ["| workers | parallel MB/s | x one worker | busy % | cores |",
                  "|---|---|---|---|---|"]
        for name in ("one_worker", "workers_cpus"):
            bulk = capped[name]
            ratio = capped["vs_one_worker"] if name == "workers_cpus" else 1.0
            lines.append(f"| {bulk['workers']} | {bulk['aggregate_mb_per_s']} | {ratio} | "
                         f"{bulk['machine_busy_pct']} | {bulk.get('bastion_cores', '-')} |")
    return lines
