"""A real OpenSSH sshd on a loopback port, used as a target by the demo and the tests."""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

from bastion.demo.procs import ManagedProcess, ProcessFailed, free_port
from bastion.errors import BastionError

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")


class MissingProgram(BastionError):
    """A program the demo or the tests need is not installed."""


def find_sshd() -> str:
    """The absolute path of OpenSSH's sshd (it refuses to run from a relative path)."""
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("sshd")
    if found:
        return os.path.abspath(found)
    raise MissingProgram("OpenSSH server not found: apt-get install openssh-server")


def find_ssh_keygen() -> str:
    """The path of ssh-keygen."""
    found = shutil.which("ssh-keygen")
    if not found:
        raise MissingProgram("ssh-keygen not found: apt-get install openssh-client")
    return found


def generate_key_pair(path: Path, comment: str) -> str:
    """Write a new unencrypted Ed25519 key pair at ``path`` (+ .pub); return the public line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [find_ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BastionError(f"ssh-keygen failed for {path}: {result.stderr.strip()}")
    return Path(f"{path}.pub").read_text(encoding="utf-8").strip()


def _children(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (from /proc; empty where there is no /proc)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = entry.read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        # Fields after the ")" that closes the command name: state, ppid, ...
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(parent):
            pids.append(int(entry.parent.name))
    return pids


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _quote(value: str | Path) -> str:
    """A value for sshd_config; paths with spaces need double quotes."""
    text = str(value)
    if '"' in text or "\n" in text:
        raise BastionError(f"cannot use {text!r} in an sshd_config")
    return f'"{text}"' if " " in text else text


_BIND_ATTEMPTS = 5  # tries with a new free port when another process took the chosen one


class SshdTarget:
    """OpenSSH sshd on 127.0.0.1:<free port>; the login that works is the user running it."""

    def __init__(self, name: str, workdir: Path, port: int | None = None) -> None:
        self.name = name
        self.workdir = workdir
        # sshd cannot report a port it picked, so a free one is chosen beforehand; another
        # process may take it first: start() then retries with a new one.
        self._port_chosen = port is None
        self.port = port if port is not None else free_port()
        self.login = getpass.getuser()
        self.host_key_path = workdir / "ssh_host_ed25519_key"
        self.authorized_keys_path = workdir / "authorized_keys"
        self.config_path = workdir / "sshd_config"
        self.pid_path = workdir / "sshd.pid"
        self.log_path = workdir / "sshd.log"
        self._host_key_line: str | None = None
        self.process: ManagedProcess | None = None

    @property
    def host(self) -> str:
        """The address sshd listens on."""
        return "127.0.0.1"

    @property
    def host_key_line(self) -> str:
        """The sshd's public host key as an OpenSSH line ("ssh-ed25519 AAAA...")."""
        if self._host_key_line is None:
            raise BastionError(f"sshd {self.name} has no host key yet (call start())")
        return self._host_key_line

    @property
    def known_hosts_line(self) -> str:
        """A known_hosts line that pins this sshd's host key at its port."""
        return f"[{self.host}]:{self.port} {self.host_key_line}"

    def authorize(self, public_key_line: str) -> None:
        """Let the holder of ``public_key_line`` log in (takes effect for the next login)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.authorized_keys_path.open("a", encoding="utf-8") as fh:
            fh.write(public_key_line.strip() + "\n")
        self.authorized_keys_path.chmod(0o600)

    def _write_config(self) -> None:
        lines = [
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f"HostKey {_quote(self.host_key_path)}",
            f"PidFile {_quote(self.pid_path)}",
            f"AuthorizedKeysFile {_quote(self.authorized_keys_path)}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            # The work dir lives under /tmp; sshd's ownership checks would refuse it.
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "LogLevel VERBOSE",
            # scp and sftp (OpenSSH 9 scp speaks sftp) need a subsystem.
            "Subsystem sftp internal-sftp",
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, timeout: float = 30.0) -> SshdTarget:
        """Generate the host key and config, start sshd and wait until it listens."""
        sshd = find_sshd()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.host_key_path.exists():
            generate_key_pair(self.host_key_path, f"{self.name} host key")
        self._host_key_line = Path(f"{self.host_key_path}.pub").read_text(
            encoding="utf-8").strip()
        self.authorized_keys_path.touch(mode=0o600, exist_ok=True)
        if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
            # sshd running as root chroots its pre-auth child into this empty directory.
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        for attempt in range(_BIND_ATTEMPTS):
            self._write_config()
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self.process = ManagedProcess(
                f"sshd {self.name}", [sshd, "-D", "-e", "-f", str(self.config_path)],
                log_path=self.log_path, cwd=self.workdir)
            self.process.start()
            try:
                # sshd's own word that it bound the port: another process listening there would
                # answer a connection test too.
                self.process.wait_for_log_match(
                    rf"Server listening on {re.escape(self.host)} port {self.port}\b", timeout,
                    offset)
                self.process.wait_for_port(self.port, self.host, timeout)
            except ProcessFailed:
                self.process.stop()
                lost_race = "bind" in self.process.log_tail().lower()
                if not (self._port_chosen and lost_race) or attempt == _BIND_ATTEMPTS - 1:
                    raise
                self.port = free_port()  # someone took the port in between: another one
                continue
            except BaseException:
                self.process.stop()
                raise
            return self
        return self

    def stop(self) -> None:
        """Stop sshd and the per-connection children it forked."""
        if self.process is None:
            return
        # Each connection's sshd calls setsid(), so stopping the listener's process group
        # would leave them running; end them by pid first.
        children = _children(self.process.pid) if self.process.alive() else []
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        self.process.stop()  # the listener reaps the children it forked
        deadline = time.monotonic() + 3.0
        while any(_running(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in filter(_running, children):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> SshdTarget:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
