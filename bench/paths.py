"""The compared paths, all on 127.0.0.1: direct, jump, tlog, ssh-mitm and bastion.

One real sshd target (web01 of the bastion's demo stack) is the far end of every path:

- direct:   ssh -> web01
- jump:     ssh -J jumphost -> web01 (a second sshd that only forwards; no recording)
- tlog:     ssh -> sshd whose ForceCommand is tlog-rec-session, whose shell runs ssh -> web01
- ssh-mitm: ssh -> ssh-mitm (PyPI) recording the session -> web01
- bastion:  ssh -> bastion serve (recording on, bound key) -> web01
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncssh

from bastion.demo.postgres import ThrowawayPostgres
from bastion.demo.procs import ManagedProcess, free_port
from bastion.demo.sshd import SshdTarget, generate_key_pair
from bastion.demo.stack import LOOPBACK, DemoStack
from bastion.identity.bindings import KeyBindings
from bastion.identity.model import Identity
from bastion.recording.layout import SESSION_FILE
from bastion.state.backends import open_state
from bench.install import Unavailable, ensure_ssh_mitm, ensure_tlog

ALL_PATHS = ("direct", "jump", "tlog", "ssh-mitm", "bastion")
# bench/run --masking both: the same bastion process, through a second name of web01 whose
# masking is off (masking_off = ["*"]), so masked and unmasked are measured in one run.
UNMASKED = "bastion-unmasked"
UNMASKED_TARGET = "web01-unmasked"
BENCH_SESSIONS_CAP = 5000  # sessions per identity and connections: the bench opens up to 1000+


class RelaySshd(SshdTarget):
    """An sshd used as a hop: TCP forwarding allowed, more concurrent logins, extra lines."""

    def __init__(self, name: str, workdir: Path, extra: list[str] | None = None) -> None:
        super().__init__(name, workdir)
        self.extra = list(extra or [])

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config_path.read_text(encoding="utf-8")
        text = text.replace("AllowTcpForwarding no", "AllowTcpForwarding yes")
        # INFO, not less: the harness waits for sshd's own "Server listening" line (INFO).
        text = text.replace("LogLevel VERBOSE", "LogLevel INFO")
        self.config_path.write_text(text + "MaxStartups 200\n" + "".join(
            f"{line}\n" for line in self.extra), encoding="utf-8")


class BenchEnv:
    """Starts every requested path and writes one ssh_config with a Host per path."""

    def __init__(self, workdir: Path, wanted: tuple[str, ...], *, masking: bool = True,
                 commands: bool = True, state: str = "sqlite", workers: int = 0,
                 unmasked: bool = False) -> None:
        self.workdir = workdir
        self.wanted = wanted
        self.masking = masking  # the shipped default is on
        self.unmasked = unmasked  # also the UNMASKED path (masking off for its target)
        self.state = state  # the bastion's state backend: "sqlite" or "postgresql"
        self.workers = workers  # bastion serve's worker processes (0: one per CPU)
        self.unavailable: dict[str, str] = {}  # path -> reason it is not measured
        self.ssh_config = workdir / "ssh_config"
        self.known_hosts = workdir / "known_hosts"
        self.client_key = workdir / "client_ed25519"
        self.bound_key = workdir / "bound_ed25519"
        # The demo's command rules switch command control on (commands=False: off).
        names = ("web01", UNMASKED_TARGET) if unmasked else ("web01",)  # vault entries
        self.stack = DemoStack(workdir / "stack", target_names=names,
                               keep_target_key=True, with_idp=False, command_rules=commands)
        self.jump: RelaySshd | None = None
        self.tlog: RelaySshd | None = None
        self.tlog_log = workdir / "tlog" / "tlog.json"
        self.mitm: ManagedProcess | None = None
        self.mitm_port = 0
        self.mitm_logs = workdir / "mitm-sessions"
        self._cleanups: list[Callable[[], object]] = []
        self._known: list[str] = []
        self._hosts: dict[str, dict[str, str]] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> BenchEnv:
        """Start the stack and the requested hops; a path that cannot run is noted, not fatal."""
        try:
            self._start_stack()
            self._start_jump()
            if "tlog" in self.wanted:
                self._guard("tlog", self._start_tlog)
            if "ssh-mitm" in self.wanted:
                self._guard("ssh-mitm", self._start_mitm)
            self._write_ssh_config()
            for path in ("tlog", "ssh-mitm"):
                if path in self.paths:
                    self._probe(path)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything, newest first."""
        while self._cleanups:
            with contextlib.suppress(Exception):
                self._cleanups.pop()()

    def __enter__(self) -> BenchEnv:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def paths(self) -> list[str]:
        """The requested paths that are running, in table order."""
        paths = [p for p in ALL_PATHS if p in self.wanted and p not in self.unavailable]
        return [*paths, UNMASKED] if self.unmasked else paths

    @property
    def target(self) -> SshdTarget:
        """The sshd every path ends at."""
        return self.stack.targets["web01"]

    @property
    def bastion_pid(self) -> int:
        """The pid of ``bastion serve``."""
        assert self.stack.bastion is not None
        return self.stack.bastion.pid

    def _guard(self, path: str, start: Callable[[], None]) -> None:
        try:
            start()
        except Unavailable as exc:
            self.unavailable[path] = str(exc)
        except Exception as exc:  # a peer that does not start here is a result, not a crash
            self.unavailable[path] = f"did not start: {str(exc).splitlines()[0][:200]}"

    def _probe(self, path: str) -> None:
        """One exec through ``path``; a peer that cannot carry it is marked unavailable."""
        try:
            result = subprocess.run(self.ssh(path, "echo bench-probe"), capture_output=True,
                                    text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            self.unavailable[path] = "an exec through it did not finish within 60 s"
            return
        if result.returncode != 0 or "bench-probe" not in result.stdout:
            said = (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
            self.unavailable[path] = (f"OpenSSH {self.openssh_version} through it failed "
                                      f"(exit {result.returncode}): {said}")

    @property
    def openssh_version(self) -> str:
        """The OpenSSH client's version string."""
        return subprocess.run(["ssh", "-V"], capture_output=True, text=True,
                              check=False).stderr.split(",")[0].strip()

    # -- the paths -------------------------------------------------------------------------------
    def _start_stack(self) -> None:
        stack = self.stack
        self._cleanups.append(stack.stop)
        stack.prepare_workdir()
        self._setup_target()
        stack.setup_vault()
        stack.setup_access()
        # Room for the concurrency run; everything else is the demo's (shipped) config.
        stack.merge_config({"server": {"max_sessions_per_user": BENCH_SESSIONS_CAP,
                                       "max_connections": BENCH_SESSIONS_CAP,
                                       "workers": self.workers}})
        if not self.masking:
            stack.merge_config({"masking": {"enabled": False}})
        if self.unmasked:  # web01 once more, masking off there (lists replace: both given)
            web01 = stack.config["targets"][0]
            stack.merge_config({"targets": [web01, {**web01, "name": UNMASKED_TARGET,
                                                    "masking_off": ["*"]}]})
        if self.state == "postgresql":  # a throwaway cluster, migrated like a real deployment
            cluster = ThrowawayPostgres().start()
            self._cleanups.append(cluster.stop)
            stack.merge_config({"state": {"url": cluster.new_database()}})
        stack.write_config()
        if self.state == "postgresql":
            subprocess.run([sys.executable, "-m", "bastion", "migrate", "--config",
                            str(stack.config_path)], check=True, capture_output=True, timeout=120)
        stack.start_bastion()
        stack.write_client_files()
        # A bound key: what a person has after one device login (a key_bindings row).
        generate_key_pair(self.bound_key, "bench bound key")
        public = Path(f"{self.bound_key}.pub").read_text(encoding="utf-8").strip()
        fingerprint = asyncssh.import_public_key(public).get_fingerprint("sha256")
        assert stack.loaded_config is not None
        db = open_state(stack.loaded_config)
        try:
            KeyBindings(db).bind(fingerprint, public, Identity(
                issuer="https://idp.bench.invalid", subject="bench-user", name="bench",
                groups=("ops",), email=None, method="binding"), 86400.0, "127.0.0.1")
        finally:
            db.close()
        generate_key_pair(self.client_key, "bench client key")
        login, target = self.stack.login, self.target
        self._known.append(target.known_hosts_line)
        self._known.append(f"[{LOOPBACK}]:{stack.bastion_port} {stack.host_key_line}")
        self._hosts["direct"] = {"HostName": LOOPBACK, "Port": str(target.port), "User": login,
                                 "IdentityFile": str(stack.target_key_path)}
        self._hosts["bastion"] = {"HostName": LOOPBACK, "Port": str(stack.bastion_port),
                                  "User": f"{login}@web01", "IdentityFile": str(self.bound_key)}
        self._hosts[UNMASKED] = {**self._hosts["bastion"], "User": f"{login}@{UNMASKED_TARGET}"}

    def _setup_target(self) -> None:
        """The demo's target, as DemoStack.setup_targets makes it, with two bench settings:
        MaxStartups for the concurrency runs, and SHLVL=1 so that bash does not source
        ~/.bashrc for every exec (on a developer machine that can be a pyenv init costing more
        than the whole login; it would measure the account, not the path)."""
        stack = self.stack
        public = generate_key_pair(stack.target_key_path, "bastion demo target key")
        target = RelaySshd("web01", stack.workdir / "targets" / "web01", ["SetEnv SHLVL=1"])
        target.authorize(public)
        stack.add_cleanup(target.stop)
        target.start()
        assert target.process is not None
        stack.processes.append(target.process)
        stack.targets["web01"] = target
        stack.merge_config({"targets": [{"name": "web01", "host": target.host,
                                         "port": target.port, "host_key": target.host_key_line,
                                         "default_login": stack.login}]})

    def _relay_sshd(self, name: str, extra: list[str] | None = None) -> RelaySshd:
        sshd = RelaySshd(name, self.workdir / name, extra)
        sshd.authorize(Path(f"{self.client_key}.pub").read_text(encoding="utf-8"))
        self._cleanups.append(sshd.stop)
        sshd.start()
        self._known.append(sshd.known_hosts_line)
        return sshd

    def _start_jump(self) -> None:
        self.jump = self._relay_sshd("jumphost")
        self._hosts["jumphost"] = {"HostName": LOOPBACK, "Port": str(self.jump.port),
                                   "User": self.stack.login,
                                   "IdentityFile": str(self.client_key)}
        self._hosts["jump"] = {**self._hosts["direct"], "ProxyJump": "jumphost"}

    def _start_tlog(self) -> None:
        rec = ensure_tlog()
        folder = self.workdir / "tlog"
        folder.mkdir(parents=True, exist_ok=True)
        conf = {"shell": "/bin/sh", "notice": "", "writer": "file",
                "file": {"path": str(self.tlog_log)}}
        hop = folder / "hop.sh"
        # The recorded shell's only job: the onward ssh, with a pty when the user has one.
        hop.write_text(
            "#!/bin/sh\n"
            "if [ -t 0 ]; then tty=-tt; else tty=-T; fi\n"
            f"exec ssh -F {shlex.quote(str(self.ssh_config))} $tty direct"
            ' ${SSH_ORIGINAL_COMMAND:+"$SSH_ORIGINAL_COMMAND"}\n', encoding="utf-8")
        entry = folder / "entry.sh"
        entry.write_text(
            "#!/bin/sh\nexport LANG=C.UTF-8\n"
            f"export TLOG_REC_SESSION_CONF_TEXT={shlex.quote(json.dumps(conf))}\n"
            f"exec {shlex.quote(rec)} -c {shlex.quote('exec ' + str(hop))}\n",
            encoding="utf-8")
        for script in (hop, entry):
            script.chmod(0o755)
        self.tlog = self._relay_sshd("tlog-sshd", [f"ForceCommand {entry}"])
        self._hosts["tlog"] = {"HostName": LOOPBACK, "Port": str(self.tlog.port),
                               "User": self.stack.login, "IdentityFile": str(self.client_key)}

    def _start_mitm(self) -> None:
        program = ensure_ssh_mitm()
        host_key = self.workdir / "mitm_host_ed25519"
        host_line = generate_key_pair(host_key, "ssh-mitm host key")
        self.mitm_logs.mkdir(parents=True, exist_ok=True)
        self.mitm_port = free_port()
        target = self.target
        argv = [program, "server", "--listen-address", LOOPBACK,
                "--listen-port", str(self.mitm_port), "--host-key-algorithms", "ed25519",
                "--host-key-ed25519", str(host_key),
                "--remote-host", LOOPBACK, "--remote-port", str(target.port),
                "--disable-remote-fingerprint-warning",
                "--auth-username", self.stack.login, "--auth-key", str(self.stack.target_key_path),
                "--accept-first-publickey", "--store-ssh-session", "--store-command-data",
                "--ssh-terminal-log-formatter", "asciinema",
                "--session-log-dir", str(self.mitm_logs)]
        self.mitm = ManagedProcess("ssh-mitm", argv, log_path=self.workdir / "ssh-mitm.log",
                                   cwd=self.workdir, env={**os.environ, "HOME": str(self.workdir)})
        self._cleanups.append(self.mitm.stop)
        self.mitm.start()
        self.mitm.wait_for_port(self.mitm_port, LOOPBACK, timeout=60)
        self._known.append(f"[{LOOPBACK}]:{self.mitm_port} {host_line}")
        self._hosts["ssh-mitm"] = {"HostName": LOOPBACK, "Port": str(self.mitm_port),
                                   "User": self.stack.login,
                                   "IdentityFile": str(self.client_key)}

    def _write_ssh_config(self) -> None:
        self.known_hosts.write_text("".join(f"{line}\n" for line in self._known),
                                    encoding="utf-8")
        lines = []
        for host, options in self._hosts.items():
            lines.append(f"Host {host}")
            lines += [f"    {key} {value}" for key, value in options.items()]
        lines += ["Host *", f"    UserKnownHostsFile {self.known_hosts}",
                  "    GlobalKnownHostsFile /dev/null", "    StrictHostKeyChecking yes",
                  "    UpdateHostKeys no", "    IdentitiesOnly yes", "    BatchMode yes",
                  "    PasswordAuthentication no", "    LogLevel ERROR",
                  "    ConnectTimeout 20", "    ControlMaster no", "    ControlPath none"]
        self.ssh_config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    # -- what the measurements use ---------------------------------------------------------------
    def restart_bastion(self, *, workers: int, balance: str) -> None:
        """Restart ``bastion serve`` (same port, spool and state) with these worker settings;
        0 workers: one per CPU, as shipped."""
        self.reconfigure_bastion({"workers": workers, "worker_balance": balance})

    def reconfigure_bastion(self, server: dict[str, object]) -> None:
        """Restart ``bastion serve`` (same port, spool and state) with these ``[server]``
        settings merged into its config."""
        stack = self.stack
        assert stack.bastion is not None
        stack.merge_config({"server": server})
        stack.write_config()
        stack.bastion.stop(timeout=60)
        stack.start_bastion()

    def ssh(self, path: str, command: str | None = None, *, tty: bool = False) -> list[str]:
        """OpenSSH argv reaching web01 through ``path`` (an interactive shell without command)."""
        argv = ["ssh", "-F", str(self.ssh_config), "-tt" if tty else "-T", path]
        return [*argv, "--", command] if command is not None else argv

    def asyncssh_options(self, path: str) -> dict[str, object]:
        """asyncssh.connect keyword arguments for ``direct`` or ``bastion``."""
        host = self._hosts[path]
        return {"host": LOOPBACK, "port": int(host["Port"]), "username": host["User"],
                "client_keys": [host["IdentityFile"]], "known_hosts": str(self.known_hosts)}

    def clear_recordings(self) -> None:
        """Remove finished recordings between rounds (200 MB each) so the disk does not fill."""
        deadline = time.monotonic() + 10
        for folder in self.stack.spool_dir.iterdir():
            if not folder.is_dir():
                continue
            info = folder / SESSION_FILE
            with contextlib.suppress(OSError, ValueError):
                while json.loads(info.read_text(encoding="utf-8")).get("state") == "active" \
                        and time.monotonic() < deadline:
                    time.sleep(0.05)
            # Every recording file, not only the casts: the byte-exact streams of a 1 GB
            # transfer are 1 GB, and left behind they are written back to disk during the
            # rounds that follow (bench/RESULTS.md, runs J and K).
            for file in folder.iterdir():
                if file.is_file() and file.name != SESSION_FILE:
                    with contextlib.suppress(OSError):
                        file.unlink()
        with contextlib.suppress(OSError):
            self.tlog_log.unlink()
        for file in self.mitm_logs.rglob("*"):
            if file.is_file():
                with contextlib.suppress(OSError):
                    file.unlink()
