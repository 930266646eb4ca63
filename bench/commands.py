"""Cost of command control per line: parse + normalize + evaluate, typical and hostile.

Usage: ``python3 -m bench.commands [--repeat N] [--json FILE]`` (or ``python3 bench/commands.py``).
Runs the demo rules over typical lines (what people type), bypass forms, and hostile lines
built to be expensive (4 KB of nested ``$( )``, deep subshells, brace bombs, long lines,
``eval`` chains). Prints the median and maximum time per line for each; no network, no
processes. bashlex is measured beside tree-sitter for the parser choice when it is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.config.model import CommandControl, CommandRule
from bastion.demo.command_rules import DEMO_COMMAND_RULES, DEMO_UNRESOLVED
from bastion.policy.commands import CommandPolicy, CommandScope

TYPICAL = [
    "ls -la",
    "cd /var/log && tail -n 100 syslog | grep -i error",
    "sudo systemctl status nginx",
    "ps aux | grep python | awk '{print $2}' | xargs kill",
    "for f in *.log; do gzip \"$f\"; done",
    "git log --oneline -n 20",
    "docker ps --format '{{.Names}}'",
    "find /tmp -name '*.tmp' -mtime +7 -delete",
    "echo \"$(date): deploy $VERSION\" >> /var/log/deploy.log",
    "kubectl get pods -n prod -o wide",
]
BYPASS = [
    "sudo -u root env X=1 nice rm -fr /",
    "$'\\x72\\x6d' -rf /",
    "bash -c 'bash -c \"rm -rf /\"'",
    "echo cm0gLXJmIC8= | base64 -d | bash",
    "find / -exec rm -rf {} +",
    "x=$(reboot); cat <(shutdown now)",
    "bash <<< 'reboot'",
]
HOSTILE = {
    "4 KB nested $( )": "$(" * 1024 + ")" * 1024,
    "4 KB echo $(echo ...) nesting": ("echo " + "$(echo " * 400 + "x" + ")" * 400)[:4096],
    "4 KB nested ( )": "( " * 1023 + "reboot" + " )" * 1023,
    "4 KB of backticks": "`" * 4096,
    "4 KB of {": "{" * 4096,
    "brace bomb {a,b}x40": "echo " + "{a,b}" * 40,
    "sequence {1..10^8}": "echo {1..100000000}",
    "4 KB eval chain": ("eval " * 820)[:4090] + "reboot",
    "4 KB sudo chain": ("sudo " * 818) + "reboot",
    "16 KB single word": "echo " + "a" * 16_000,
    "16 KB of short commands": ("ls;" * 5_400)[:16_000],
    "16 KB eval chain": ("eval " * 3270)[:16_000] + "reboot",
    "16 KB of a(b(c(...": "echo " + "$(a " * 4000,
    "4 KB $'\\x41' string": "echo $'" + "\\x41" * 1000 + "'",
    "4 KB heredoc of $( )": "cat <<E\n" + "$(x)" * 1000 + "\nE",
    "5000 line continuations": "\\\n" * 5000 + "reboot",
}


def _policy() -> CommandPolicy:
    fields: list[dict[str, Any]] = [{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in rule.items()} for rule in DEMO_COMMAND_RULES]
    rules = tuple(CommandRule(**rule) for rule in fields)
    return CommandPolicy(CommandControl(rules=rules, unresolved=DEMO_UNRESOLVED))


def _time(call: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def _row(name: str, samples: list[float]) -> dict[str, object]:
    return {"case": name, "median_us": round(statistics.median(samples) * 1e6, 1),
            "max_us": round(max(samples) * 1e6, 1), "n": len(samples)}


def run(repeat: int) -> list[dict[str, object]]:
    """Measure every case; one row each."""
    policy = _policy()
    scope = CommandScope("web01", "root", "alice", ("ops",))
    rows = []
    for label, lines in (("typical line", TYPICAL), ("bypass line", BYPASS)):
        samples = [s for line in lines
                   for s in _time(functools.partial(policy.evaluate, line, scope), repeat)]
        rows.append(_row(f"{label} (x{len(lines)})", samples))
    for name, line in HOSTILE.items():
        rows.append(_row(f"hostile: {name}", _time(functools.partial(policy.evaluate, line, scope),
                                                    max(3, repeat // 20))))
    rows.extend(_bashlex_rows(repeat))
    return rows


def _bashlex_rows(repeat: int) -> list[dict[str, object]]:
    try:
        import bashlex
    except ImportError:
        return []
    import tree_sitter_bash
    from tree_sitter import Language, Parser
    parser = Parser(Language(tree_sitter_bash.language()))
    line = TYPICAL[3]
    rows = [_row("parse only, tree-sitter-bash (typical)",
                 _time(lambda: parser.parse(line.encode()), repeat)),
            _row("parse only, bashlex (typical)", _time(lambda: bashlex.parse(line), repeat))]
    hostile = HOSTILE["4 KB nested $( )"]

    def bashlex_hostile() -> None:
        with contextlib.suppress(Exception):  # bashlex raises RecursionError on this input
            bashlex.parse(hostile)
    rows.append(_row("parse only, tree-sitter-bash (4 KB nested $( ))",
                     _time(lambda: parser.parse(hostile.encode()), 5)))
    rows.append(_row("parse only, bashlex (4 KB nested $( ), RecursionError)",
                     _time(bashlex_hostile, 3)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = run(args.repeat)
    width = max(len(str(r["case"])) for r in rows)
    print(f"{'case':<{width}}  {'median':>11}  {'max':>11}")
    for row in rows:
        print(f"{row['case']!s:<{width}}  {row['median_us']:>9} us  {row['max_us']:>9} us")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
