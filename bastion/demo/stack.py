"""A complete working bastion on loopback: two sshd targets, a vault, a config and ``serve``.

Used by ``bastion demo`` and by the end-to-end tests. Each step is a small method so that later
pieces (an identity provider, an S3 store) can add their own processes and config sections:
start them with ``start_process`` and add config with ``merge_config`` before ``write_config``.
"""

from __future__ import annotations

import copy
import getpass
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import tomli_w

from bastion.config import check_files, load_config
from bastion.config.model import Config
from bastion.credentials.ca import generate_ca_key
from bastion.credentials.hostkeys import generate_host_key
from bastion.credentials.vault import Vault, private_key_credential
from bastion.credentials.vaultkey import generate_vault_key, write_vault_key
from bastion.demo.command_rules import demo_command_sections
from bastion.demo.idp import IdpServer
from bastion.demo.procs import ManagedProcess
from bastion.demo.s3 import SeaweedS3
from bastion.demo.sshd import SshdTarget, find_ssh_keygen, find_sshd, generate_key_pair
from bastion.errors import ConfigError, UsageError

LOOPBACK = "127.0.0.1"
TARGET_NAMES = ("web01", "db01")
CERTIFICATE_TARGETS = ("db01",)  # these trust the bastion's user CA; the others use the vault
DEMO_USER = "demo"
DEMO_GROUPS = ("ops",)
DEMO_APPROVER_EMAIL = "alice@example.com"  # the demo IdP's alice approves held commands


def wait_until_serving(process: ManagedProcess, host: str, timeout: float, offset: int = 0) -> int:
    """The port of a ``bastion serve`` once all its workers are ready: its supervisor's
    "bastion: listening on HOST:PORT (N workers)" line after byte ``offset`` of its log."""
    found = process.wait_for_log_match(
        r"(?m)^bastion: listening on " + re.escape(host) + r":(\d+) \(", timeout, offset)
    return int(found.group(1))


class DemoStack:
    """Builds a bastion setup in ``workdir`` and runs it; ``stop()`` ends all it started."""

    def __init__(self, workdir: Path, bastion_port: int | None = None, *,
                 target_names: Sequence[str] = TARGET_NAMES,
                 keep_target_key: bool = False, with_idp: bool = True,
                 idp_options: Mapping[str, Any] | None = None,
                 identity_config: Mapping[str, Any] | None = None,
                 with_s3: bool = True, command_rules: bool = True,
                 certificate_targets: Sequence[str] = CERTIFICATE_TARGETS) -> None:
        self.workdir = Path(workdir).resolve()
        self.bastion_host = LOOPBACK
        # 0: `bastion serve` binds a free port itself and reports it (no free_port() race with
        # other stacks on the machine); start_bastion() then pins it in the config.
        self.bastion_port = bastion_port or 0
        self.login = getpass.getuser()
        self.target_names = tuple(target_names)
        # The target key lives only in the vault unless a test wants to reach targets directly.
        self.keep_target_key = keep_target_key
        # The identity provider (node oidc-provider) for device logins; options go to IdpServer,
        # identity_config is merged into [identity] (TOTP policy, TTLs) after the defaults.
        self.with_idp = with_idp
        self.idp_options = dict(idp_options or {})
        self.identity_config = dict(identity_config or {})
        self.idp: IdpServer | None = None
        # Evidence: a SeaweedFS S3 store with an Object Lock bucket, and a signing key.
        self.with_s3 = with_s3
        self.s3: SeaweedS3 | None = None
        self.s3_bucket = "bastion-evidence"
        self.s3_prefix = "demo"
        # Command control: the demo's [[commands]] rules (bastion/demo/command_rules.py).
        self.command_rules = command_rules
        self.signing_key_path = self.workdir / "keys" / "signing.key"
        self.sso_key_path = self.workdir / "keys" / "sso_ed25519"
        self.sso_ssh_config_path = self.workdir / "ssh_config_sso"

        self.keys_dir = self.workdir / "keys"
        self.state_dir = self.workdir / "state"
        self.spool_dir = self.workdir / "spool"
        self.logs_dir = self.workdir / "logs"
        self.config_path = self.workdir / "bastion.toml"
        self.env_path = self.workdir / "demo.env"
        self.ssh_config_path = self.workdir / "ssh_config"
        self.known_hosts_path = self.workdir / "known_hosts"
        self.host_key_path = self.keys_dir / "bastion_host_ed25519_key"
        self.user_key_path = self.keys_dir / f"{DEMO_USER}_ed25519"
        self.target_key_path = self.keys_dir / "target_ed25519"
        self.vault_path = self.state_dir / "vault.json"
        self.vault_key_path = self.keys_dir / "vault.key"

        self.targets: dict[str, SshdTarget] = {}
        # Targets that hold no key of the bastion's: their sshd trusts the user CA instead.
        self.certificate_targets = tuple(n for n in certificate_targets
                                         if n in self.target_names)
        self.ca_key_path = self.keys_dir / "user_ca"
        self.ca_line = ""
        self.host_key_line = ""
        self.user_key_line = ""
        self.config: dict[str, Any] = {}  # the TOML document, merged section by section
        self.loaded_config: Config | None = None
        self.bastion: ManagedProcess | None = None
        self.bastion_env: dict[str, str] = {}  # extra environment for `bastion serve`
        self.env: dict[str, str] = {}  # demo.env contents (extensions may add to it)
        self.processes: list[ManagedProcess] = []
        self._cleanups: list[Callable[[], object]] = []

    # -- the whole sequence ----------------------------------------------------------------

    def start(self) -> DemoStack:
        """Build everything and start it; on any failure stop what was started and re-raise."""
        try:
            self.prepare_workdir()
            self.setup_ca()
            self.setup_targets()
            self.setup_vault()
            self.setup_access()
            if self.command_rules:
                self.setup_command_rules()
            if self.with_idp:
                self.setup_identity()
                self.setup_approvals()
            if self.with_s3:
                self.setup_evidence()
            self.write_config()
            self.start_bastion()
            self.write_client_files()
            self.write_env()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything started, newest first; every step runs even if one fails."""
        first_error: BaseException | None = None
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                cleanup()
            except Exception as exc:  # keep stopping the rest
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def __enter__(self) -> DemoStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- helpers for steps (and for extensions) ----------------------------------------------

    def add_cleanup(self, cleanup: Callable[[], object]) -> None:
        """Run ``cleanup`` on stop(), before the cleanups registered earlier."""
        self._cleanups.append(cleanup)

    def start_process(self, name: str, argv: Sequence[str], *, port: int | None = None,
                      env: Mapping[str, str] | None = None, cwd: Path | None = None,
                      timeout: float = 30.0) -> ManagedProcess:
        """Start a child logged to logs/NAME.log, stopped by stop(); wait for ``port`` if given."""
        process = ManagedProcess(name, argv, log_path=self.logs_dir / f"{name}.log",
                                 cwd=cwd or self.workdir, env=env)
        self.add_cleanup(process.stop)
        self.processes.append(process)
        process.start()
        if port is not None:
            process.wait_for_port(port, LOOPBACK, timeout)
        return process

    def merge_config(self, sections: Mapping[str, Any]) -> None:
        """Merge TOML sections into the config to be written (tables merge, lists replace)."""
        _merge_tables(self.config, sections)

    def alive(self) -> bool:
        """Whether every process the stack started is still running."""
        return all(p.alive() for p in self.processes)

    def dead_processes(self) -> list[ManagedProcess]:
        """The started processes that have exited."""
        return [p for p in self.processes if not p.alive()]

    # -- steps -------------------------------------------------------------------------------

    def prepare_workdir(self) -> None:
        """Check the programs needed exist and that the work dir is new or empty."""
        find_sshd()
        find_ssh_keygen()
        if self.workdir.exists() and any(self.workdir.iterdir()):
            raise UsageError(f"demo work dir {self.workdir} is not empty; "
                             "give a new or empty directory")
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for directory in (self.keys_dir, self.state_dir, self.spool_dir, self.logs_dir):
            directory.mkdir(mode=0o700, exist_ok=True)
        self.merge_config({
            "server": {"listen": self.bastion_host, "port": self.bastion_port,
                       "host_keys": [str(self.host_key_path)], "node_id": "demo"},
            "paths": {"state_dir": str(self.state_dir), "spool_dir": str(self.spool_dir),
                      "audit_log": str(self.state_dir / "audit.jsonl")},
        })

    def setup_ca(self) -> None:
        """The user CA that certificate targets trust, and [ca] (only if there are some)."""
        if not self.certificate_targets:
            return
        self.ca_line = generate_ca_key(self.ca_key_path)
        self.merge_config({"ca": {"key_file": str(self.ca_key_path), "validity": "5m"}})

    def setup_targets(self) -> None:
        """Start one sshd per target name: vault targets accept the one target key for
        ``login``, certificate targets only certificates from the bastion's CA."""
        target_public = generate_key_pair(self.target_key_path, "bastion demo target key")
        entries = []
        for name in self.target_names:
            certificate = name in self.certificate_targets
            target = SshdTarget(name, self.workdir / "targets" / name,
                                user_ca_keys=(self.ca_line,) if certificate else ())
            if not certificate:
                target.authorize(target_public)
            self.add_cleanup(target.stop)
            target.start()
            assert target.process is not None
            self.processes.append(target.process)
            self.targets[name] = target
            entries.append({"name": name, "host": target.host, "port": target.port,
                            "host_key": target.host_key_line, "default_login": self.login,
                            **({"auth": "certificate"} if certificate else {})})
        self.merge_config({"targets": entries})

    def setup_vault(self) -> None:
        """Create the vault key and a vault holding the target key for every target."""
        key = generate_vault_key()
        write_vault_key(self.vault_key_path, key)
        vault = Vault.open(self.vault_path, key, create=True)
        credential = private_key_credential(
            self.target_key_path.read_text(encoding="utf-8"), str(self.target_key_path))
        for name in self.target_names:
            if name not in self.certificate_targets:
                vault.set(name, self.login, credential)
        vault.save()
        if not self.keep_target_key:
            self.target_key_path.unlink()
        self.merge_config({"vault": {"path": str(self.vault_path),
                                     "key_file": str(self.vault_key_path)}})

    def setup_access(self) -> None:
        """The bastion host key, the break-glass demo user and the rule that lets it in."""
        self.host_key_line = generate_host_key(self.host_key_path)
        self.user_key_line = generate_key_pair(self.user_key_path, f"bastion {DEMO_USER} user")
        self.merge_config({
            "users": [{"name": DEMO_USER, "keys": [self.user_key_line],
                       "groups": list(DEMO_GROUPS)}],
            "access": [{"groups": list(DEMO_GROUPS), "targets": ["*"],
                        "logins": [self.login]}],
        })

    def setup_command_rules(self) -> None:
        """The demo's command rules: deny rm -rf and power-off, approve service stops, warn sudo."""
        self.merge_config(demo_command_sections())

    def setup_identity(self) -> None:
        """Start the demo IdP, point [identity] at it, and make a key the bastion does not know."""
        self.idp = IdpServer(self.workdir / "idp", **self.idp_options)
        self.add_cleanup(self.idp.stop)
        self.idp.start()
        self.processes.append(self.idp.process)
        self.merge_config({"identity": {
            "issuer": self.idp.issuer, "client_id": self.idp.client_id,
            "scopes": ["openid", "email", "profile", "groups"], "binding_ttl": "12h",
            **self.identity_config}})
        generate_key_pair(self.sso_key_path, "bastion demo device-login user")
        options = [("UserKnownHostsFile", str(self.known_hosts_path)),
                   ("GlobalKnownHostsFile", "/dev/null"), ("StrictHostKeyChecking", "yes"),
                   ("UpdateHostKeys", "no"), ("IdentitiesOnly", "yes"),
                   ("IdentityFile", str(self.sso_key_path)), ("PasswordAuthentication", "no"),
                   ("PreferredAuthentications", "publickey,keyboard-interactive")]
        lines = ["# Written by `bastion demo`: a key the bastion does not know, so the first",
                 "# connection signs in through the identity provider (device login).", "Host *"]
        lines += [f"    {name} {_ssh_config_value(value)}" for name, value in options]
        self.sso_ssh_config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        account = self.idp.accounts[0]
        self.env.update({"IDP_ISSUER": self.idp.issuer, "DEMO_IDP_USER": account.username,
                         "DEMO_IDP_PASSWORD": account.password,
                         "BASTION_SSO_SSH_CONFIG": str(self.sso_ssh_config_path)})

    def setup_approvals(self) -> None:
        """The IdP user alice approves held commands (``ssh approvals@bastion``, with TOTP)."""
        self.merge_config({"approvals": {"approver_users": [DEMO_APPROVER_EMAIL]}})

    def command_control_usage(self) -> str:
        """The demo's command rules and how to approve, for the person running the demo."""
        if not self.command_rules:
            return ""
        from bastion.demo.command_rules import DEMO_COMMAND_SUMMARY

        lines = ["Command rules (try them in the shell above):"]
        lines += [f"    {line}" for line in DEMO_COMMAND_SUMMARY]
        if self.idp is not None:
            account = self.idp.accounts[0]
            lines += [
                f"Approvers: {DEMO_APPROVER_EMAIL} ({account.username} at the IdP). Enroll a "
                "TOTP code once:",
                f"    bastion totp enroll '{self.idp.issuer}|{account.sub}' "
                f"--config {self.config_path}",
                "  then approve from another terminal:",
                f"    ssh -F {self.sso_ssh_config_path} -p {self.bastion_port} "
                f"approvals@{self.bastion_host}",
                f"  or: bastion approvals list --config {self.config_path}"]
        return "\n".join(lines) + "\n"

    def setup_evidence(self) -> None:
        """Signing key, SeaweedFS with an Object Lock bucket, [evidence] and [storage]."""
        from bastion.evidence.signing import generate_signing_key

        self.keys_dir.mkdir(parents=True, exist_ok=True)
        generate_signing_key(self.signing_key_path)
        public_key = f"{self.signing_key_path}.pub"
        store = SeaweedS3(self.workdir / "s3")
        self.add_cleanup(store.stop)
        store.start()
        assert store.proc is not None
        self.processes.append(store.proc)
        store.create_bucket(self.s3_bucket, object_lock=True)
        self.s3 = store
        self.merge_config({
            # Uploaded sessions stay a week so `bastion replay` still finds them locally.
            "evidence": {"signing_key": str(self.signing_key_path), "public_keys": [public_key],
                         "keep_days": 7},
            "storage": {"bucket": self.s3_bucket, "prefix": self.s3_prefix,
                        "endpoint_url": store.endpoint_url, "object_lock_mode": "GOVERNANCE",
                        "retention_days": 1},
        })
        # `bastion upload` and `bastion verify` find the store's demo keys the usual AWS way.
        self.env.update({
            "BASTION_S3_URI": f"s3://{self.s3_bucket}/{self.s3_prefix}",
            "S3_ENDPOINT": store.endpoint_url,
            "BASTION_PUBKEY": public_key,
            "AWS_ACCESS_KEY_ID": store.access_key,
            "AWS_SECRET_ACCESS_KEY": store.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        })

    def sso_ssh_argv(self, target: str, *command: str, login: str | None = None) -> list[str]:
        """The OpenSSH command line of a person signing in through the IdP (device login)."""
        argv = ["ssh", "-F", str(self.sso_ssh_config_path), "-p", str(self.bastion_port),
                f"{login or self.login}@{target}@{self.bastion_host}"]
        return [*argv, "--", *command] if command else argv

    def device_login_usage(self) -> str:
        """How to try the device login, for the person running the demo ("" without an IdP)."""
        if self.idp is None:
            return ""
        account = self.idp.accounts[0]
        return (f"Sign in through the identity provider ({self.idp.issuer}) as a new user:\n"
                f"    {shlex.join(self.sso_ssh_argv(self.target_names[0]))}\n"
                "  Open the URL it shows (or scan the QR code) in a browser, sign in as "
                f"{account.username} / {account.password}\n"
                "  and allow; the shell opens. The key is then bound for 12 h: run the same "
                "ssh again\n  and you go straight in. `bastion keys list` shows the binding.\n")

    def write_config(self) -> None:
        """Write bastion.toml from the merged sections and check it loads."""
        header = "# Written by `bastion demo`; loopback only, keys in this directory.\n\n"
        self.config_path.write_text(header + tomli_w.dumps(self.config), encoding="utf-8")
        self.config_path.chmod(0o600)
        config = load_config(self.config_path)
        problems = check_files(config)
        if problems:
            raise ConfigError(problems[0])
        self.loaded_config = config

    def start_bastion(self, timeout: float = 30.0) -> None:
        """Run ``bastion serve`` with the written config and wait until every worker is ready.

        Ready is the supervisor's "bastion: listening on HOST:PORT (N workers)" line, printed
        once all workers have started: the port itself accepts connections earlier (the shared
        socket is bound before the workers), and a worker's own log line comes before the
        others have read the config, the vault and the keys."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.bastion_env}
        log_path = self.logs_dir / "bastion.log"
        offset = log_path.stat().st_size if log_path.exists() else 0  # appended across restarts
        self.bastion = self.start_process(
            "bastion", [sys.executable, "-m", "bastion", "serve", "--config",
                        str(self.config_path)], env=env, timeout=timeout)
        port = wait_until_serving(self.bastion, self.bastion_host, timeout, offset)
        if self.bastion_port:
            return
        self.bastion_port = port
        # Pinned from now on: a restart (and the files written for clients) keep this port.
        self.merge_config({"server": {"port": self.bastion_port}})
        self.write_config()

    def write_client_files(self) -> None:
        """known_hosts pinning the bastion's key and an ssh_config that uses the demo key."""
        self.known_hosts_path.write_text(
            f"[{self.bastion_host}]:{self.bastion_port} {self.host_key_line}\n",
            encoding="utf-8")
        options = [
            ("Port", str(self.bastion_port)),
            ("UserKnownHostsFile", str(self.known_hosts_path)),
            ("GlobalKnownHostsFile", "/dev/null"),
            ("StrictHostKeyChecking", "yes"),
            ("UpdateHostKeys", "no"),
            ("IdentitiesOnly", "yes"),
            ("IdentityFile", str(self.user_key_path)),
            ("PasswordAuthentication", "no"),
        ]
        lines = ["# Written by `bastion demo`: pins the bastion's host key, uses the demo key.",
                 "Host *"]
        lines += [f"    {name} {_ssh_config_value(value)}" for name, value in options]
        self.ssh_config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def write_env(self) -> None:
        """demo.env: shell assignments describing this stack (``. demo.env`` to use them)."""
        values = {
            "BASTION_HOST": self.bastion_host,
            "BASTION_PORT": str(self.bastion_port),
            "BASTION_CONFIG": str(self.config_path),
            "BASTION_SPOOL": str(self.spool_dir),
            "BASTION_KEY": str(self.user_key_path),
            "BASTION_SSH_CONFIG": str(self.ssh_config_path),
            "BASTION_KNOWN_HOSTS": str(self.known_hosts_path),
            "DEMO_TARGETS": " ".join(self.target_names),
            "DEMO_LOGIN": self.login,
            **self.env,
        }
        self.env = values
        text = "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())
        # It names S3 credentials and key paths: readable by the one who ran the demo only.
        fd = os.open(self.env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as env_file:
            os.fchmod(env_file.fileno(), 0o600)
            env_file.write(text)

    # -- what a person at the keyboard runs ----------------------------------------------------

    def ssh_argv(self, target: str, *command: str, login: str | None = None) -> list[str]:
        """The OpenSSH command line that reaches ``target`` as ``login`` through the bastion."""
        argv = ["ssh", "-F", str(self.ssh_config_path), "-p", str(self.bastion_port),
                f"{login or self.login}@{target}@{self.bastion_host}"]
        return [*argv, "--", *command] if command else argv

    def target_auth_summary(self) -> list[str]:
        """One line per target saying how the bastion logs in to it (for the banner)."""
        lines = []
        for name in self.target_names:
            if name in self.certificate_targets:
                lines.append(f"{name}: a certificate from the bastion's CA, made for each "
                             "session (its sshd trusts only the CA; its log names you)")
            else:
                lines.append(f"{name}: the key kept in the bastion's vault")
        return lines

    def example_commands(self) -> list[str]:
        """Shell commands to show the person running the demo."""
        first = self.target_names[0]
        last = self.target_names[-1]
        return [shlex.join(self.ssh_argv(first)),
                shlex.join(self.ssh_argv(last, "uname", "-a"))]


def _ssh_config_value(value: str) -> str:
    if '"' in value or "\n" in value:
        raise UsageError(f"cannot write {value!r} into an ssh_config")
    return f'"{value}"' if " " in value else value


def _merge_tables(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Merge ``extra`` into ``base`` in place: tables merge key by key, everything else replaces."""
    for key, value in extra.items():
        current = base.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            _merge_tables(current, value)
        else:
            base[key] = copy.deepcopy(value)
