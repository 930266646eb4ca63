"""Microbenchmark of command control's cost on the relay's path (no network, one process).

Run: ``python3 -m bench.command_catcher [--mb 200]``. Prints, each against the same pipeline
without command control in the same run:

- bulk output: the time the output stage adds per 64 KiB chunk, and what that makes of the
  relay's own rate (``--relay-mbps``, text through a pty from bench/RESULTS.md);
- keystroke echo: the added time per key (one input byte forwarded, one echo chunk passed back),
  p50 and p99 in microseconds;
- Enter: the time to read the line (render the tail with pyte) and judge it with the demo rules,
  after 1 MiB of output (the tail keeps only its last part).

The end-to-end figures (through OpenSSH and the real relay) are bench/run's; this isolates the
stages' own Python work.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from bastion.config.model import CommandControl, CommandRule, Target
from bastion.demo.command_rules import DEMO_COMMAND_RULES
from bastion.policy.commands import CommandPolicy
from bastion.relay.command_stage import CommandCatcher
from bastion.relay.pipeline import ChannelInfo, ChannelKind, Pipeline, StageFactory, Stream


class _Ctx:
    def __init__(self, info: ChannelInfo) -> None:
        self.info = info

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _info() -> ChannelInfo:
    return ChannelInfo(kind=ChannelKind.SHELL, pty=True, term="xterm", width=120, height=40,
                       command=None, subsystem=None, session_id="bench", channel=1,
                       user="bench", identity_key="local|bench", groups=("ops",),
                       target=Target(name="web01", host="127.0.0.1", host_keys=("x",)),
                       login="deploy")


def _policy() -> CommandPolicy:
    rules = []
    for rule in DEMO_COMMAND_RULES:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in rule.items()}
        rules.append(CommandRule(**fields))
    return CommandPolicy(CommandControl(rules=tuple(rules), unresolved="approve"))


def _pipeline(factories: list[StageFactory]) -> tuple[Pipeline, list[int]]:
    sent = [0]

    def sink(data: bytes, stream: Stream) -> None:
        sent[0] += len(data)

    info = _info()
    pipeline = Pipeline.build(factories, info, _Ctx(info), to_target=sink,
                              target_end=lambda: None, record_input=lambda d, s: None,
                              record_output=lambda d, s: None, to_user=sink,
                              user_end=lambda: None)
    return pipeline, sent


def bulk(factories: list[StageFactory], megabytes: int) -> float:
    """MB/s of output through the output chain."""
    pipeline, sent = _pipeline(factories)
    chunk = (b"drwxr-xr-x 2 root root 4096 Jan  1 00:00 some-directory-name\r\n" * 1100)[:65536]
    count = megabytes * 16
    start = time.perf_counter()
    for _ in range(count):
        pipeline.output.feed(chunk, Stream.DATA)
    elapsed = time.perf_counter() - start
    assert sent[0] == count * len(chunk)
    return count * len(chunk) / elapsed / 1e6


def echo(factories: list[StageFactory], keys: int = 20000) -> list[float]:
    """Seconds per keystroke round (input byte forwarded + echo passed back)."""
    pipeline, _ = _pipeline(factories)
    pipeline.output.feed(b"\x1b[?2004h$ ", Stream.DATA)
    times = []
    for index in range(keys):
        key = b"abcdefghij"[index % 10:index % 10 + 1]
        start = time.perf_counter()
        pipeline.input.feed(key, Stream.DATA)
        pipeline.output.feed(key, Stream.DATA)
        times.append(time.perf_counter() - start)
    return times


def enter_cost(rounds: int = 50) -> list[float]:
    """Seconds to read and judge one line after 1 MiB of output."""
    catcher = CommandCatcher(_policy(), None)
    pipeline, _ = _pipeline([catcher])
    control = pipeline.input.stages[0]._control  # type: ignore[attr-defined]
    out = []
    for _ in range(rounds):
        pipeline.output.feed(b"x" * 1023 + b"\n" * 1, Stream.DATA)
        for _ in range(1024):
            pipeline.output.feed(b"y" * 1023 + b"\n", Stream.DATA)
        pipeline.output.feed(b"\x1b[?2004h$ ", Stream.DATA)
        pipeline.input.feed(b"systemctl restart nginx && rm -rf /srv/app", Stream.DATA)
        pipeline.output.feed(b"systemctl restart nginx && rm -rf /srv/app", Stream.DATA)
        start = time.perf_counter()
        reading = control.catcher.read()
        control.judge.evaluate([t for t in reading.candidates])
        out.append(time.perf_counter() - start)
        control.catcher.end_line()
    return out


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


async def main(megabytes: int, relay_mbps: float) -> None:
    catcher = CommandCatcher(_policy(), None)
    plain = bulk([], megabytes)
    filtered = bulk([catcher], megabytes)
    added = 65536 / 1e6 * (1 / filtered - 1 / plain)  # seconds per 64 KiB chunk
    # The stage's cost set against the relay's own (bench/RESULTS.md: text through a pty).
    ratio = 1 / (1 + added * relay_mbps * 1e6 / 65536)
    print(f"bulk output: +{added * 1e6:.2f} us per 64 KiB chunk (pipeline alone: unfiltered "
          f"{plain:,.0f} MB/s, filtered {filtered:,.0f} MB/s); at a relay of {relay_mbps} MB/s "
          f"that is a throughput ratio of {ratio:.4f}")
    base = echo([])
    with_catcher = echo([CommandCatcher(_policy(), None)])
    added50 = (_p(with_catcher, 50) - _p(base, 50)) * 1e6
    added99 = (_p(with_catcher, 99) - _p(base, 99)) * 1e6
    print(f"keystroke echo: +{added50:.1f} us p50, +{added99:.1f} us p99 per key "
          f"(unfiltered p99 {_p(base, 99) * 1e6:.1f} us)")
    enter = enter_cost()
    print(f"Enter (read line + judge, after 1 MiB output): p50 {_p(enter, 50) * 1e3:.2f} ms, "
          f"p99 {_p(enter, 99) * 1e3:.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="MB of bulk output per run")
    parser.add_argument("--relay-mbps", type=float, default=160.0,
                        help="the relay's pty text rate to set the cost against (bench/run)")
    args = parser.parse_args()
    asyncio.run(main(args.mb, args.relay_mbps))
