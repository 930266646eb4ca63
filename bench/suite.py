"""bench/run: bastion against direct OpenSSH, an OpenSSH jump host, tlog and ssh-mitm.

Prints a table of medians with ratios measured in the same run; --json FILE writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.config.model import ServerConfig
from bench import measure, scale, transfers
from bench.install import ensure_py_spy
from bench.paths import ALL_PATHS, UNMASKED, BenchEnv

MB = 1_000_000
TARGETS = {
    "bulk_vs_jump_max": 1.0, "bulk_vs_peers_max": 0.5,
    "added_p50_ms_max": 1.0, "added_p99_ms_max": 5.0,
    "idle_sessions": 1000, "rss_per_session_kib_max": 256, "logins_per_s_min": 50,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a small version in about a minute (20 MB, few samples/sessions)")
    parser.add_argument("--json", dest="json_path", type=Path, help="write the figures here")
    parser.add_argument("--paths", default=",".join(ALL_PATHS),
                        help=f"comma-separated subset of {','.join(ALL_PATHS)}")
    parser.add_argument("--size-mb", type=float, help="bulk payload size (default 200, quick 20)")
    parser.add_argument("--rounds", type=int, help="rounds per bulk figure (default 3, quick 1)")
    parser.add_argument("--samples", type=int, help="echo samples (default 1000, quick 200)")
    parser.add_argument("--load-sessions", type=int,
                        help="streaming sessions during the loaded echo run (default 50, quick 10)")
    parser.add_argument("--sessions", type=int,
                        help="idle sessions held through the bastion (default 1000, quick 50)")
    parser.add_argument("--login-seconds", type=float,
                        help="seconds per login-rate run (default 10, quick 3)")
    parser.add_argument("--commands", choices=("on", "off"), default="on",
                        help="command control with the demo's rules (default on)")
    parser.add_argument("--state", default="sqlite", choices=["sqlite", "postgresql"],
                        help="the bastion's state backend (postgresql: a throwaway cluster)")
    parser.add_argument("--masking", choices=("on", "off", "both"), default="on",
                        help="the bastion's output masking (default on, as shipped; both: "
                             f"also the path {UNMASKED}, the same bastion with masking off "
                             "for its target, for the ratio in one run)")
    parser.add_argument("--transfer-mb", type=float,
                        help="file size of the transfers figure (default 1000, quick 20)")
    parser.add_argument("--skip", default="",
                        help="comma-separated: bulk,echo,idle,login,transfers,scale")
    parser.add_argument("--workers", type=int, default=0,
                        help="the bastion's worker processes (default 0: one per CPU, as "
                        "shipped); the scale figure tries 1 and one per CPU itself")
    parser.add_argument("--parallel-sessions", type=int, default=8,
                        help="bulk sessions run at once in the scale figure (default 8)")
    parser.add_argument("--worker-share", type=float, default=0.3,
                        help="the scale figure's capped bulk: each worker held to this share "
                             "of a core by a CPU cgroup (needs root; default 0.3, 0: skip)")
    parser.add_argument("--profile", type=Path,
                        help="write py-spy profiles of the bastion's bulk runs to this dir")
    parser.add_argument("--profile-format", default="flamegraph",
                        choices=["flamegraph", "raw", "speedscope"],
                        help="py-spy output: flamegraph (.svg) or raw collapsed stacks (.txt)")
    parser.add_argument("--workdir", type=Path, help="keep the work files here (default: temp)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.size_mb = args.size_mb or (20 if quick else 200)
    args.transfer_mb = args.transfer_mb or (20 if quick else 1000)
    args.rounds = args.rounds or (1 if quick else 3)
    args.samples = args.samples or (200 if quick else 1000)
    args.load_sessions = args.load_sessions if args.load_sessions is not None else (
        10 if quick else 50)
    args.sessions = args.sessions or (50 if quick else 1000)
    args.login_seconds = args.login_seconds or (3.0 if quick else 10.0)
    wanted = tuple(p.strip() for p in args.paths.split(",") if p.strip())
    unknown = set(wanted) - set(ALL_PATHS)
    if unknown:
        parser.error(f"unknown path(s): {', '.join(sorted(unknown))}")
    if "bastion" not in wanted or "direct" not in wanted:
        parser.error("--paths must include direct and bastion")
    args.wanted = wanted
    args.skipped = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


def machine() -> dict[str, Any]:
    """What this ran on."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = next((int(line.split()[1]) * 1024 for line in
                Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), 0)
    import asyncssh

    try:
        uv: str | None = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        uv = None
    ssh_v = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False).stderr
    return {"nproc": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "asyncssh": asyncssh.__version__, "uvloop": uv, "openssh": ssh_v.strip(),
            "loadavg_at_start": os.getloadavg()}


def _field_default(cls: type, name: str) -> Any:
    """The shipped default of one field of a config dataclass."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _ratios(values: dict[str, float], base: str) -> dict[str, float | None]:
    if base not in values or not values[base]:
        return {}
    return {path: round(v / values[base], 3) for path, v in values.items()}


class Suite:
    """Runs the measurements selected on the command line and collects the figures."""

    def __init__(self, args: argparse.Namespace, env: BenchEnv, workdir: Path) -> None:
        self.args = args
        self.env = env
        self.workdir = workdir
        self.result: dict[str, Any] = {}

    def log(self, text: str) -> None:
        """Progress on stderr."""
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    # -- 1 ----------------------------------------------------------------------------------------
    def bulk(self) -> None:
        """200 MB of text through a pty (cat) and 200 MB of binary through exec, per path."""
        size = int(self.args.size_mb * MB)
        text, binary = measure.make_payloads(self.workdir / "payload", size)
        received = self.workdir / "payload" / "uploaded.bin"
        kinds = {"bulk_pty_text": (f"cat {shlex.quote(str(text))}", True),
                 "bulk_exec_binary": (f"cat {shlex.quote(str(binary))}", False),
                 # The other way: the binary piped into a file on the target (exec stdin).
                 "bulk_exec_upload": (f"cat > {shlex.quote(str(received))}", False)}
        paths = self.env.paths
        for name, (command, tty) in kinds.items():
            seconds: dict[str, list[float]] = {p: [] for p in paths}
            bastion_cpu: list[float] = []
            unmasked_cpu: list[float] = []
            failures: dict[str, str] = {}
            for round_no in range(self.args.rounds):
                order = paths[round_no % len(paths):] + paths[:round_no % len(paths)]
                for path in order:
                    if path in failures:
                        continue
                    self.log(f"{name} round {round_no + 1}: {path}")
                    profiler = self._profiler(name) if path == "bastion" and round_no == 0 \
                        else None
                    cpu0 = measure.cpu_seconds(self.env.bastion_pid)
                    argv = self.env.ssh(path, command, tty=tty)
                    limit = max(120.0, size / MB * 3)
                    if name == "bulk_exec_upload":
                        run = measure.upload(argv, binary, timeout=limit)
                        if run.exit_status == 0 and received.stat().st_size != size:
                            run = measure.BulkRun(run.seconds, received.stat().st_size, 1)
                        received.unlink(missing_ok=True)
                    else:
                        run = measure.bulk(argv, timeout=limit)
                    if path == "bastion":
                        bastion_cpu.append(measure.cpu_seconds(self.env.bastion_pid) - cpu0)
                    elif path == UNMASKED:
                        unmasked_cpu.append(measure.cpu_seconds(self.env.bastion_pid) - cpu0)
                    if profiler is not None:
                        profiler()
                    self.env.clear_recordings()
                    # A pty turns each \n into \r\n, so text arrives larger than it left.
                    if run.exit_status != 0 or run.received < size:
                        failures[path] = (f"exit {run.exit_status}, {run.received} of {size} "
                                          "bytes arrived")
                        continue
                    seconds[path].append(run.seconds)
            med = {p: round(measure.median(v), 3) for p, v in seconds.items() if v}
            self.result[name] = {
                "bytes": size, "rounds": self.args.rounds, "seconds": med,
                "mb_per_s": {p: round(size / MB / s, 1) for p, s in med.items()},
                "all_seconds": {p: [round(x, 3) for x in v] for p, v in seconds.items()},
                "ratio_vs_jump": _ratios(med, "jump"), "ratio_vs_direct": _ratios(med, "direct"),
                "bastion_cpu_seconds": round(measure.median(bastion_cpu), 2)
                if bastion_cpu else None,
                **({"unmasked_cpu_seconds": round(measure.median(unmasked_cpu), 2)}
                   if unmasked_cpu else {}),
                "failures": failures}

    def _profiler(self, name: str) -> Callable[[], None] | None:
        if self.args.profile is None:
            return None
        spy = ensure_py_spy()
        if spy is None:
            self.log("py-spy unavailable; no profile")
            return None
        self.args.profile.mkdir(parents=True, exist_ok=True)
        fmt = self.args.profile_format
        suffix = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[fmt]
        proc = subprocess.Popen(
            [spy, "record", "--rate", "250", "--nonblocking", "--subprocesses", "--format", fmt,
             "-o",
             str(self.args.profile / f"{name}.{suffix}"), "--pid", str(self.env.bastion_pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attaches

        def stop() -> None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return stop

    # -- 2 ----------------------------------------------------------------------------------------
    def echo(self) -> None:
        """Keystroke echo latency per path, idle and with other sessions streaming."""
        out: dict[str, Any] = {"samples": self.args.samples,
                               "load_sessions": self.args.load_sessions}
        gap = 0.002 if self.args.quick else 0.005
        for condition in ("idle", "loaded"):
            figures: dict[str, Any] = {}
            for path in self.env.paths:
                self.log(f"echo {condition}: {path}")
                argv = self.env.ssh(path, measure.ECHO_COMMAND, tty=True)
                try:
                    if condition == "idle":
                        samples = measure.echo_latency(argv, self.args.samples, gap)
                        streaming = 0
                    else:
                        with measure.Streamers(
                                self.env.ssh(path, measure.STREAM_COMMAND, tty=True),
                                self.args.load_sessions) as load:
                            streaming = load.streaming
                            samples = measure.echo_latency(argv, self.args.samples, gap)
                except RuntimeError as exc:
                    figures[path] = {"error": str(exc)}
                    continue
                figures[path] = {
                    "p50_ms": round(measure.percentile(samples, 0.5) * 1000, 3),
                    "p99_ms": round(measure.percentile(samples, 0.99) * 1000, 3),
                    "samples": len(samples), "streaming_sessions": streaming}
                self.env.clear_recordings()
            direct = figures.get("direct", {})
            added = {path: {"p50_ms": round(f["p50_ms"] - direct["p50_ms"], 3),
                            "p99_ms": round(f["p99_ms"] - direct["p99_ms"], 3)}
                     for path, f in figures.items() if "p50_ms" in f and "p50_ms" in direct}
            out[condition] = {"paths": figures, "added_over_direct": added}
        self.result["echo_latency"] = out

    # -- 3 ----------------------------------------------------------------------------------------
    def idle(self) -> None:
        """N idle interactive sessions through the bastion: held, RSS each, idle CPU."""
        self.log(f"idle sessions: opening {self.args.sessions} through the bastion")
        res = asyncio.run(measure.idle_sessions(
            self.env.asyncssh_options("bastion"), self.args.sessions, parallel=8,
            pid=self.env.bastion_pid, idle_seconds=3.0 if self.args.quick else 10.0))
        per = (res.rss_after - res.rss_before) / res.opened if res.opened else None
        self.result["idle_sessions"] = {
            "requested": res.requested, "held": res.opened,
            "success_rate": round(res.opened / res.requested, 4),
            "failures": res.failures, "open_seconds": round(res.open_seconds, 1),
            "bastion_rss_before_mib": round(res.rss_before / 2**20, 1),
            "bastion_rss_after_mib": round(res.rss_after / 2**20, 1),
            "rss_per_session_kib": round(per / 1024, 1) if per is not None else None,
            "bastion_cpu_idle_percent": round(res.cpu_idle_percent, 2),
            "stopped_early": res.stopped_early}
        self.env.clear_recordings()

    # -- 4 ----------------------------------------------------------------------------------------
    def login(self) -> None:
        """Sessions per second (connect, key auth, exec true, close): direct and bastion."""
        out: dict[str, Any] = {"parallel": 4, "seconds": self.args.login_seconds}
        rates: dict[str, float] = {}
        for path in ("direct", "bastion"):
            self.log(f"login rate: {path}")
            out[path] = self._logins(path)
            rates[path] = out[path]["per_second"]
        # The same with every session a new login on the target (upstream_linger = 0): the
        # figure above has each session after the first take a target connection parked by
        # the one before (bastion/relay/upstream_pool.py), as repeated sessions of one person do.
        shipped = _field_default(ServerConfig, "upstream_linger")
        self.log("login rate: bastion, upstream_linger = 0")
        self.env.reconfigure_bastion({"upstream_linger": 0})
        try:
            out["bastion_new_target_login"] = self._logins("bastion")
        finally:
            self.env.reconfigure_bastion({"upstream_linger": shipped})
        rates["bastion_new_target_login"] = out["bastion_new_target_login"]["per_second"]
        out["ratio_vs_direct"] = _ratios(rates, "direct")
        self.result["login_rate"] = out
        self.env.clear_recordings()

    def _logins(self, path: str) -> dict[str, Any]:
        """One login-rate run through ``path``; through the bastion also its CPU per login."""
        cpu0 = measure.cpu_seconds(self.env.bastion_pid)
        rate, done, failed = asyncio.run(measure.login_rate(
            self.env.asyncssh_options(path), self.args.login_seconds, parallel=4))
        figures: dict[str, Any] = {"per_second": round(rate, 1), "done": done, "failed": failed}
        if path == "bastion" and done:
            # The bastion's own ceiling: logins per CPU-second of the bastion process.
            cpu = measure.cpu_seconds(self.env.bastion_pid) - cpu0
            figures["bastion_cpu_ms_per_login"] = round(cpu / done * 1000, 2)
            figures["bastion_cpu_bound_per_second"] = round(done / cpu, 1) if cpu else None
        return figures

    # -- 5 ----------------------------------------------------------------------------------------
    def transfers(self) -> None:
        """scp (both modes), sftp and rsync of one file up and down: bastion vs jump host."""
        self.result["transfers"] = transfers.run(
            self.env, self.workdir, int(self.args.transfer_mb * MB), self.args.rounds, self.log)

    # -- 6 ----------------------------------------------------------------------------------------
    def scale(self) -> None:
        """Worker processes: loaded echo and parallel bulk at 1 and one per CPU (issue 14)."""
        self.result["scale"] = scale.run(self.env, self.workdir, self.args, self.log)

    def run(self) -> dict[str, Any]:
        """All selected measurements, then the verdicts against the issue's targets."""
        steps = {"bulk": self.bulk, "echo": self.echo, "idle": self.idle, "login": self.login,
                 "transfers": self.transfers, "scale": self.scale}
        for name, step in steps.items():
            if name not in self.args.skipped:
                step()
        self.result["targets"] = verdicts(self.result)
        return self.result


def verdicts(r: dict[str, Any]) -> dict[str, Any]:
    """Each target of issue 5: the figure and whether it is met (None: not measured)."""
    out: dict[str, Any] = {}
    # Issue 9: text through a pty at most as slow as a jump host, binary either way within 1.2x
    # (every byte recorded byte-exact on the way).
    limits = {"bulk_pty_text": 1.0, "bulk_exec_binary": 1.2, "bulk_exec_upload": 1.2}
    for name, limit in limits.items():
        figures = r.get(name)
        if not figures:
            continue
        vs_jump = figures["ratio_vs_jump"].get("bastion")
        out[f"{name}_vs_jump"] = {"value": vs_jump, "target": f"<= {limit}",
                                  "met": None if vs_jump is None else vs_jump <= limit}
        secs = figures["seconds"]
        for peer in ("tlog", "ssh-mitm"):
            if peer in secs and "bastion" in secs:
                ratio = round(secs["bastion"] / secs[peer], 3)
                out[f"{name}_vs_{peer}"] = {"value": ratio, "target": "<= 0.5",
                                            "met": ratio <= 0.5}
    out.update(masking_verdicts(r))
    echo = r.get("echo_latency")
    if echo:
        for condition in ("idle", "loaded"):
            added = echo[condition]["added_over_direct"].get("bastion")
            if added:
                out[f"echo_{condition}_added_p50_ms"] = {
                    "value": added["p50_ms"], "target": "<= 1", "met": added["p50_ms"] <= 1.0}
                out[f"echo_{condition}_added_p99_ms"] = {
                    "value": added["p99_ms"], "target": "<= 5", "met": added["p99_ms"] <= 5.0}
    idle = r.get("idle_sessions")
    if idle:
        out["idle_sessions_held"] = {"value": idle["held"], "target": ">= 1000 held",
                                     "met": idle["held"] >= 1000}
        per = idle["rss_per_session_kib"]
        out["rss_per_session_kib"] = {"value": per, "target": "<= 256",
                                      "met": None if per is None else per <= 256}
    login = r.get("login_rate")
    if login:
        rate = login["bastion"]["per_second"]
        out["logins_per_s"] = {"value": rate, "target": ">= 50", "met": rate >= 50}
        ratio = login["ratio_vs_direct"].get("bastion")
        if ratio is not None:  # issue 14: at least direct OpenSSH's rate on the same machine
            out["logins_vs_direct"] = {"value": ratio, "target": ">= 1.0", "met": ratio >= 1.0}
    if r.get("transfers"):
        out.update(transfers.verdicts(r["transfers"]))
    if r.get("scale"):
        out.update(scale.verdicts(r["scale"]))
    return out


def masking_verdicts(r: dict[str, Any]) -> dict[str, Any]:
    """Issue 11 (--masking both): masked pty text keeps >= 80% of the unmasked throughput of
    the same run; masking adds at most 1 ms to the echo p99."""
    out: dict[str, Any] = {}
    secs = r.get("bulk_pty_text", {}).get("seconds", {})
    if "bastion" in secs and UNMASKED in secs:
        kept = round(secs[UNMASKED] / secs["bastion"], 3)
        out["bulk_pty_text_masked_keeps"] = {"value": kept, "target": ">= 0.8",
                                             "met": kept >= 0.8}
    for condition in ("idle", "loaded"):
        figures = r.get("echo_latency", {}).get(condition, {}).get("paths", {})
        masked, unmasked = figures.get("bastion", {}), figures.get(UNMASKED, {})
        if "p99_ms" in masked and "p99_ms" in unmasked:
            added = round(masked["p99_ms"] - unmasked["p99_ms"], 3)
            out[f"echo_{condition}_masking_added_p99_ms"] = {
                "value": added, "target": "<= 1", "met": added <= 1.0}
    return out


def table(r: dict[str, Any], paths: list[str]) -> str:
    """The figures as markdown tables."""
    lines = []
    for name, label in (("bulk_pty_text", "bulk text via pty, s"),
                        ("bulk_exec_binary", "bulk binary via exec, s"),
                        ("bulk_exec_upload", "bulk binary upload via exec stdin, s")):
        f = r.get(name)
        if not f:
            continue
        lines.append(f"\n{label} ({f['bytes'] // MB} MB, median of {f['rounds']})\n")
        lines.append("| path | seconds | MB/s | x jump | x direct |")
        lines.append("|---|---|---|---|---|")
        for p in paths:
            if p in f["seconds"]:
                lines.append(f"| {p} | {f['seconds'][p]} | {f['mb_per_s'][p]} | "
                             f"{f['ratio_vs_jump'].get(p, '-')} | "
                             f"{f['ratio_vs_direct'].get(p, '-')} |")
            elif p in f["failures"]:
                lines.append(f"| {p} | failed: {f['failures'][p]} | | | |")
    echo = r.get("echo_latency")
    if echo:
        lines.append(f"\nkeystroke echo, ms ({echo['samples']} samples; loaded = "
                     f"{echo['load_sessions']} other sessions streaming)\n")
        lines.append("| path | idle p50 | idle p99 | loaded p50 | loaded p99 | "
                     "added p50/p99 idle | added p50/p99 loaded |")
        lines.append("|---|---|---|---|---|---|---|")
        for p in paths:
            i = echo["idle"]["paths"].get(p, {})
            ld = echo["loaded"]["paths"].get(p, {})
            ai = echo["idle"]["added_over_direct"].get(p, {})
            al = echo["loaded"]["added_over_direct"].get(p, {})
            lines.append(f"| {p} | {i.get('p50_ms', i.get('error', '-'))} | "
                         f"{i.get('p99_ms', '-')} | {ld.get('p50_ms', ld.get('error', '-'))} | "
                         f"{ld.get('p99_ms', '-')} | {ai.get('p50_ms', '-')} / "
                         f"{ai.get('p99_ms', '-')} | {al.get('p50_ms', '-')} / "
                         f"{al.get('p99_ms', '-')} |")
    idle = r.get("idle_sessions")
    if idle:
        lines.append(f"\nidle sessions through the bastion: {idle['held']}/{idle['requested']}"
                     f" held ({idle['success_rate']:.1%}), {idle['rss_per_session_kib']} KiB "
                     f"RSS each, {idle['bastion_cpu_idle_percent']}% CPU idle "
                     f"(opened in {idle['open_seconds']} s)")
    login = r.get("login_rate")
    if login:
        lines.append(f"\nlogins/s (asyncssh client, {login['parallel']} in parallel, exec true):"
                     f" direct {login['direct']['per_second']}, bastion "
                     f"{login['bastion']['per_second']} "
                     f"(x direct {login['ratio_vs_direct'].get('bastion')}); bastion CPU "
                     f"{login['bastion'].get('bastion_cpu_ms_per_login')} ms per login")
        fresh = login.get("bastion_new_target_login")
        if fresh:
            lines.append(f"  with upstream_linger = 0 (every session a new target login): "
                         f"{fresh['per_second']} "
                         f"(x direct {login['ratio_vs_direct'].get('bastion_new_target_login')}"
                         f"); {fresh.get('bastion_cpu_ms_per_login')} ms per login")
    if r.get("transfers"):
        lines += transfers.table(r["transfers"])
    if r.get("scale"):
        lines += scale.table(r["scale"])
    lines.append("\ntargets:")
    for name, v in r.get("targets", {}).items():
        mark = {True: "met", False: "NOT met", None: "n/a"}[v["met"]]
        lines.append(f"- {name}: {v['value']} (target {v['target']}): {mark}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of bench/run."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # SIGTERM unwinds like Ctrl-C: every sshd, proxy and bastion started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir)).resolve()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="bastion-bench-")).resolve()
    started = time.time()
    result: dict[str, Any] = {"command": "bench/run " + shlex.join(sys.argv[1:] if argv is None
                                                                   else argv),
                              "mode": "quick" if args.quick else "full",
                              "state_backend": args.state,
                              "machine": machine(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        with BenchEnv(workdir, args.wanted, masking=args.masking != "off",
                      commands=args.commands == "on", state=args.state,
                      workers=args.workers, unmasked=args.masking == "both") as env:
            result["paths"] = {p: {"measured": p in env.paths,
                                   **({"reason": env.unavailable[p]}
                                      if p in env.unavailable else {})}
                               for p in args.wanted}
            result["peer_versions"] = peer_versions(env)
            for path, reason in env.unavailable.items():
                print(f"bench: {path}: n/a ({reason})", file=sys.stderr)
            result.update(Suite(args, env, workdir).run())
            paths = env.paths
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result["elapsed_seconds"] = round(time.time() - started, 1)
    print(table(result, paths))
    for path, info in result["paths"].items():
        if not info["measured"]:
            print(f"- {path}: n/a ({info['reason']})")
    if args.json_path:
        args.json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def peer_versions(env: BenchEnv) -> dict[str, str]:
    """Versions of the compared peers that are running."""
    out = {}
    if "tlog" in env.paths:
        got = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "tlog"],
                             capture_output=True, text=True, check=False)
        out["tlog"] = got.stdout.strip()
    if "ssh-mitm" in env.wanted:
        from bench.install import CACHE
        program = CACHE / "mitm-venv" / "bin" / "ssh-mitm"
        if program.exists():
            got = subprocess.run([str(program), "--version"], capture_output=True, text=True,
                                 check=False)
            out["ssh-mitm"] = got.stdout.strip()
    return out


if __name__ == "__main__":
    sys.exit(main())
