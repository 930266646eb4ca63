"""Drive an interactive program (``ssh -tt``) in a private tmux server and read its screen."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

SESSION = "main"
POLL_INTERVAL = 0.05

# remain-on-exit keeps the last screen (and the exit status) readable after the program ends.
TMUX_CONF = """\
set -g remain-on-exit on
set -g history-limit 20000
set -g status off
set -g default-terminal "xterm-256color"
set -g escape-time 0
"""


class TmuxError(AssertionError):
    """tmux failed, or the screen never showed what a test waited for."""


class TmuxSession:
    """One program running in the single pane of a tmux server on a private socket."""

    def __init__(self, tmux: str, socket_dir: Path) -> None:
        self.tmux = tmux
        self.socket_dir = socket_dir
        self.socket = socket_dir / "tmux.sock"
        self.server_pid: int | None = None
        self.pane_pid: int | None = None

    @classmethod
    def start(cls, argv: Sequence[str], width: int = 100, height: int = 30, *,
              env: Mapping[str, str] | None = None, cwd: Path | None = None) -> TmuxSession:
        """Start ``argv`` in a new detached tmux server of ``width`` x ``height`` cells."""
        tmux = shutil.which("tmux")
        if tmux is None:
            raise TmuxError("tmux not found: apt-get install tmux")
        # A short path in /tmp: unix socket paths are limited to about 100 bytes.
        socket_dir = Path(tempfile.mkdtemp(prefix="bt-tmux-", dir="/tmp"))
        (socket_dir / "tmux.conf").write_text(TMUX_CONF, encoding="utf-8")
        session = cls(tmux, socket_dir)
        child_env = dict(os.environ if env is None else env)
        child_env.pop("TMUX", None)  # not nested in a tmux the tests may run under
        try:
            session._run("-f", str(socket_dir / "tmux.conf"), "new-session", "-d",
                         "-s", SESSION, "-x", str(width), "-y", str(height),
                         shlex.join(argv), env=child_env, cwd=cwd)
            server_pid, pane_pid = session._display("#{pid} #{pane_pid}").split()
            session.server_pid, session.pane_pid = int(server_pid), int(pane_pid)
        except BaseException:
            session.kill()
            raise
        return session

    def _run(self, *args: str, env: Mapping[str, str] | None = None,
             cwd: Path | None = None, check: bool = True) -> str:
        result = subprocess.run([self.tmux, "-S", str(self.socket), *args], env=env, cwd=cwd,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=10, check=False)
        if check and result.returncode != 0:
            raise TmuxError(f"tmux {' '.join(args[:2])} failed: {result.stderr.strip()}")
        return result.stdout

    def _display(self, fmt: str) -> str:
        return self._run("display-message", "-p", "-t", SESSION, fmt).strip()

    # -- input ------------------------------------------------------------------------------

    def send_keys(self, *keys: str) -> None:
        """Send tmux key names ("Enter", "C-c", "Up") or plain text words."""
        self._run("send-keys", "-t", SESSION, *keys)

    def send_literal(self, text: str) -> None:
        """Type ``text`` exactly as given (no key-name lookup)."""
        if text:
            self._run("send-keys", "-t", SESSION, "-l", "--", text)

    def type_line(self, text: str) -> None:
        """Type ``text`` and press Enter."""
        self.send_literal(text)
        self.send_keys("Enter")

    # -- output -----------------------------------------------------------------------------

    def capture(self, history: bool = False) -> str:
        """The visible screen as text (with ``history``, the scrollback too), rows joined by \\n."""
        args = ["capture-pane", "-p", "-t", SESSION]
        if history:
            args += ["-S", "-"]
        lines = self._run(*args).split("\n")
        return "\n".join(line.rstrip() for line in lines).rstrip("\n")

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 15.0, *,
                 history: bool = False) -> re.Match[str]:
        """Poll the screen until ``pattern`` (text, or a compiled regex) shows; return the match."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            screen = self.capture(history=history)
            match = regex.search(screen)
            if match:
                return match
            if time.monotonic() >= deadline:
                raise TmuxError(f"screen did not show {regex.pattern!r} within {timeout:.0f}s; "
                                f"it shows:\n{screen}")
            time.sleep(POLL_INTERVAL)

    def size(self) -> tuple[int, int]:
        """The pane's (width, height) in cells."""
        width, height = self._display("#{pane_width} #{pane_height}").split()
        return int(width), int(height)

    def resize(self, width: int, height: int) -> None:
        """Resize the window; the program gets SIGWINCH (ssh passes it on as window-change)."""
        self._run("resize-window", "-t", SESSION, "-x", str(width), "-y", str(height))

    def exit_status(self) -> int | None:
        """The program's exit status once it has ended (128+N if killed by signal N), else None."""
        fields = self._display("#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal}")
        dead, status, signum = [*fields.split(":"), "", ""][:3]
        if dead != "1":
            return None
        if status:
            return int(status)
        if signum:
            return 128 + int(signum)
        # The pty closed but tmux has not reaped the program yet. tmux 3.3 sometimes misses
        # the SIGCHLD and leaves a zombie for good; another SIGCHLD makes it reap and record.
        if self.server_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.server_pid, signal.SIGCHLD)
        return None

    def wait_exit(self, timeout: float = 15.0) -> int:
        """Wait until the program ends; return its exit status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.exit_status()
            if status is not None:
                return status
            if time.monotonic() >= deadline:
                raise TmuxError(f"program still running after {timeout:.0f}s; screen:\n"
                                f"{self.capture()}")
            time.sleep(POLL_INTERVAL)

    # -- teardown ---------------------------------------------------------------------------

    def kill(self) -> None:
        """Kill the tmux server (the program gets SIGHUP) and remove the socket directory."""
        if self.socket.exists():
            self._run("kill-server", check=False)
        if self.server_pid is not None:
            # kill-server returns before the server has exited; make sure it has, by pid.
            deadline = time.monotonic() + 5.0
            while _pid_alive(self.server_pid) and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL)
            if _pid_alive(self.server_pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.server_pid, signal.SIGKILL)
            self.server_pid = None
        if self.pane_pid is not None:
            # The pane's program leads its own session; end whatever survived the hangup.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pane_pid, signal.SIGKILL)
            self.pane_pid = None
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def __enter__(self) -> TmuxSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes; tmux's server is reparented, so check its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


# What the ``tmux`` fixture yields: start(argv, width=100, height=30) -> TmuxSession.
TmuxFactory = Callable[..., TmuxSession]
