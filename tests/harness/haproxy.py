"""Debian's HAProxy in TCP mode on loopback, sending PROXY protocol v2 to bastion nodes."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from bastion.demo.procs import ManagedProcess, free_port


def find_haproxy() -> str:
    """The haproxy program (Debian installs it in /usr/sbin)."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError("haproxy is not installed (scripts/setup installs Debian's haproxy)")
    return found


def haproxy_config(port: int, backends: Sequence[int]) -> str:
    """A TCP front end on 127.0.0.1:port, round robin over the nodes, PROXY v2 to each."""
    servers = "\n".join(f"    server node{i} 127.0.0.1:{p} send-proxy-v2"
                        for i, p in enumerate(backends))
    return f"""\
global
    maxconn 256

defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m

frontend ssh
    bind 127.0.0.1:{port}
    default_backend bastions

backend bastions
    balance roundrobin
{servers}
"""


class HaproxyFront:
    """``with HaproxyFront(dir, [port_a, port_b]) as lb: lb.port``; stopped by pid."""

    def __init__(self, directory: Path, backends: Sequence[int]) -> None:
        self.port = free_port()
        self.config_path = directory / "haproxy.cfg"
        self.config_path.write_text(haproxy_config(self.port, backends), encoding="utf-8")
        # -db: stay in the foreground, so the pid is haproxy's own and stop() ends it.
        self.process = ManagedProcess("haproxy", [find_haproxy(), "-db", "-f",
                                                  str(self.config_path)],
                                      log_path=directory / "haproxy.log")

    def __enter__(self) -> HaproxyFront:
        self.process.start()
        self.process.wait_for_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop()
