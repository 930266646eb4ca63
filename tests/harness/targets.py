"""OpenSSH sshd targets alone (no bastion), reachable directly with a generated key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from bastion.demo.sshd import SshdTarget, generate_key_pair
from harness.ssh import BATCH_OPTIONS


class SshdTargets:
    """Named sshd targets that all accept one client key; ``stop()`` ends them all."""

    def __init__(self, workdir: Path, names: Sequence[str] = ("web01", "db01")) -> None:
        self.workdir = workdir
        self.names = tuple(names)
        self.key_path = workdir / "client_ed25519"
        self.known_hosts_path = workdir / "known_hosts"
        self.targets: dict[str, SshdTarget] = {}

    def start(self) -> SshdTargets:
        """Generate the client key, start every sshd and pin their host keys."""
        try:
            public = generate_key_pair(self.key_path, "test client")
            for name in self.names:
                target = SshdTarget(name, self.workdir / name)
                target.authorize(public)
                self.targets[name] = target
                target.start()
            self.known_hosts_path.write_text(
                "".join(t.known_hosts_line + "\n" for t in self.targets.values()),
                encoding="utf-8")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every sshd started (by pid, with its per-connection children)."""
        for target in reversed(self.targets.values()):
            target.stop()

    def __getitem__(self, name: str) -> SshdTarget:
        return self.targets[name]

    def ssh_argv(self, name: str, *command: str, tty: bool = False,
                 batch: bool = True) -> list[str]:
        """``ssh`` straight to target ``name`` with the client key and its pinned host key."""
        target = self.targets[name]
        argv = ["ssh", "-F", "/dev/null", "-p", str(target.port),
                "-o", f"UserKnownHostsFile={self.known_hosts_path}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-o", "IdentitiesOnly=yes", "-i", str(self.key_path)]
        if batch:
            argv += BATCH_OPTIONS
        if tty:
            argv.append("-tt")
        argv.append(f"{target.login}@{target.host}")
        return [*argv, "--", *command] if command else argv

    def __enter__(self) -> SshdTargets:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
