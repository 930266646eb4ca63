"""Searching 10 000 recorded sessions: first (index cold) and second (index warm) search.

Usage: PYTHONPATH=. python3 -m bench.sessions_search [--sessions 10000]
Writes a temporary spool of synthetic sessions (session.json plus a shell asciicast with
commands as markers, input events and output) and a config pointing at it, then times the real
CLI (``python3 -m bastion sessions search``) end to end. Prints the figures; asserts only that
the searches found what was planted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ["ls -la", "df -h", "uptime", "journalctl -u nginx", "tail -f /var/log/syslog",
            "ps aux", "free -m", "cat /etc/os-release", "top -bn1", "git pull"]


def write_session(spool: Path, index: int, rng: random.Random) -> None:
    stamp = time.gmtime(1_700_000_000 + index * 60)
    session_id = time.strftime("%Y%m%dT%H%M%SZ", stamp) + f"-{index:012x}"
    folder = spool / session_id
    folder.mkdir()
    target = f"web{index % 20:02d}"
    commands = rng.sample(COMMANDS, 4)
    if index % 1000 == 7:
        commands.append("systemctl stop nginx")  # planted: 10 sessions in 10 000
    meta = {"schema": 1, "session_id": session_id, "node_id": "bench", "state": "closed",
            "identity": {"name": f"user{index % 37}"},
            "target": {"name": target, "login": "deploy"},
            "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp), "end": None,
            "end_reason": "client closed", "recordings": ["1-shell.cast"], "commands": []}
    (folder / "session.json").write_text(json.dumps(meta), encoding="utf-8")
    lines = [json.dumps({"version": 2, "width": 80, "height": 24, "timestamp": 0,
                         "term": {"type": "xterm"}})]
    t = 0.0
    for command in commands:
        t += rng.uniform(1, 5)
        lines.append(json.dumps([round(t, 3), "i", command + "\r"]))
        lines.append(json.dumps([round(t, 3), "m", f"command: {command}"]))
        output = "\r\n".join(f"{command} line {i} {rng.random():.6f}" for i in range(8))
        lines.append(json.dumps([round(t + 0.1, 3), "o", f"{command}\r\n{output}\r\n$ "]))
    (folder / "1-shell.cast").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run(config: Path, *args: str) -> tuple[float, list[dict[str, object]]]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bastion", "sessions", *args, "--config",
                           str(config), "--json"], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    elapsed = time.perf_counter() - started
    return elapsed, [json.loads(line) for line in proc.stdout.splitlines() if line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    args = parser.parse_args()
    rng = random.Random(3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spool = root / "spool"
        spool.mkdir()
        started = time.perf_counter()
        for index in range(args.sessions):
            write_session(spool, index, rng)
        print(f"wrote {args.sessions} sessions in {time.perf_counter() - started:.1f} s")
        config = root / "bastion.toml"
        config.write_text(f'[paths]\nstate_dir = "{root / "state"}"\nspool_dir = "{spool}"\n'
                          '[vault]\nkey_env = "BENCH_VAULT_KEY"\n', encoding="utf-8")
        planted = sum(1 for i in range(args.sessions) if i % 1000 == 7)
        for label, argv in (
                ("search --command (index cold)", ["search", "--command", "systemctl stop"]),
                ("search --command (index warm)", ["search", "--command", "systemctl stop"]),
                ("search --output (warm)", ["search", "--output", "systemctl stop"]),
                ("search --input (warm)", ["search", "--input", r"systemctl stop nginx\^M"]),
                ("search --command --target web07 --since 2023-11-01",
                 ["search", "--command", "systemctl stop", "--target", "web07", "--since",
                  "2023-11-01"]),
                ("list (warm)", ["list"])):
            elapsed, rows = run(config, *argv)
            print(f"{label}: {elapsed:.2f} s, {len(rows)} sessions")
            if argv[0] == "search" and "--target" not in argv:
                assert len(rows) == planted, (label, len(rows))


if __name__ == "__main__":
    main()
