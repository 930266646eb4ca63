"""Read ``bastion.toml`` once into a frozen ``Config``; every mistake is a one-line ConfigError."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import asyncssh

from bastion.config.approvals import ApprovalsConfig, parse_approvals
from bastion.config.ca import host_ca_line, parse_ca, source_addresses
from bastion.config.commands import UNRESOLVED_PATTERN, UNRESOLVED_WHAT, parse_command_control
from bastion.config.identity import IdentityConfig, parse_identity
from bastion.config.masking import MaskingConfig, parse_masking, parse_target_masking
from bastion.config.model import (
    DEFAULT_CIPHERS,
    GROUP_NAME,
    LOGIN_NAME,
    NODE_ID,
    SSH_CIPHERS,
    TARGET_NAME,
    AccessRule,
    Config,
    EvidenceConfig,
    LocalUser,
    PathsConfig,
    ServerConfig,
    StorageConfig,
    Target,
    TargetAuth,
    VaultConfig,
    WorkerBalance,
)
from bastion.config.reader import Source, Table
from bastion.config.state import StateConfig, parse_state
from bastion.config.transfers import check_rule_targets, parse_forward_rule, parse_transfer_rule
from bastion.errors import ConfigError

ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,127}"


def load_config(path: str | Path) -> Config:
    """Parse and validate the config file at ``path``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                          "a config file must be UTF-8") from None
    if not text.strip():
        raise ConfigError(f"{path}: the file is empty (see config/bastion.example.toml)")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, Source(path.resolve(), text))


def parse_config(data: dict[str, object], source: Source) -> Config:
    """Build a Config from an already-parsed TOML document."""
    root = Table(dict(data), (), source)
    paths = _paths(root.table("paths"))
    server = _server(root.table("server"), paths)
    vault = _vault(root.table("vault"), paths)
    users = tuple(_user(t) for t in root.tables("users"))
    masking = parse_masking(root.table("masking")) if root.has("masking") else MaskingConfig()
    targets = tuple(_target(t, masking) for t in root.tables("targets"))
    access = tuple(_access(t) for t in root.tables("access"))
    evidence = parse_evidence(root.table("evidence")) if root.has("evidence") else None
    storage = parse_storage(root.table("storage")) if root.has("storage") else None
    identity = (parse_identity(root.table("identity")) if root.has("identity")
                else IdentityConfig())
    transfers = tuple(parse_transfer_rule(t) for t in root.tables("transfers"))
    forwarding = tuple(parse_forward_rule(t) for t in root.tables("forwarding"))
    approvals = (parse_approvals(root.table("approvals")) if root.has("approvals")
                 else ApprovalsConfig())
    commands = parse_command_control(root, {t.name for t in targets})
    ca = parse_ca(root.table("ca")) if root.has("ca") else None
    state = parse_state(root.table("state")) if root.has("state") else StateConfig()
    root.done()

    _unique(root, "users", [u.name for u in users])
    _unique(root, "targets", [t.name for t in targets])
    names = {t.name for t in targets}
    local = {u.name for u in users}
    for index, rule in enumerate(access):
        for name in rule.users:
            # Local users and identity-provider accounts are different namespaces: a bare name
            # is a [[users]] entry; anyone else is ISSUER|SUBJECT or a verified e-mail.
            if name not in local and "|" not in name and "@" not in name:
                raise Table({}, ("access", index), source).error(
                    "users", "names of [[users]], ISSUER|SUBJECT of identity-provider accounts "
                    f"or e-mail addresses ({name!r} is none of them: an identity-provider "
                    "display name could be anyone's)")
        for name in rule.targets:
            if name != "*" and name not in names:
                raise Table({}, ("access", index), source).error(
                    "targets", f"names of [[targets]] or \"*\" (no target is called {name!r})")
    for index, scoped in enumerate(transfers):
        check_rule_targets(Table({}, ("transfers", index), source), names, scoped.targets)
    for index, forward in enumerate(forwarding):
        check_rule_targets(Table({}, ("forwarding", index), source), names, forward.targets)
    for index, target in enumerate(targets):
        if target.auth is TargetAuth.CERTIFICATE and ca is None:
            raise Table({}, ("targets", index), source).error(
                "auth", f'"vault", or a [ca] section to sign certificates with (target '
                f'{target.name} uses auth = "certificate")', "certificate")
    return Config(source=source.path, server=server, paths=paths, vault=vault,
                  users=users, targets=targets, access=access,
                  evidence=evidence, storage=storage, identity=identity, commands=commands,
                  masking=masking, transfers=transfers, forwarding=forwarding,
                  approvals=approvals, ca=ca, state=state)


def _paths(t: Table) -> PathsConfig:
    state_dir = t.filepath("state_dir", t.source.path.parent / "state")
    paths = PathsConfig(
        state_dir=state_dir,
        spool_dir=t.filepath("spool_dir", state_dir / "recordings"),
        audit_log=t.filepath("audit_log", state_dir / "audit.jsonl"),
    )
    t.done()
    return paths


def _server(t: Table, paths: PathsConfig) -> ServerConfig:
    host_keys = t.strings("host_keys", (str(paths.state_dir / "ssh_host_ed25519_key"),))
    server = ServerConfig(
        listen=t.string("listen", "127.0.0.1"),
        port=t.integer("port", 2222, lo=0, hi=65535),
        host_keys=tuple(_resolve(t, p) for p in host_keys),
        node_id=t.string("node_id", "bastion", pattern=NODE_ID,
                      what="a node name of letters, digits, '.', '_' or '-'"),
        login_timeout=t.duration("login_timeout", 30.0, allow_zero=False),
        max_auth_attempts=t.integer("max_auth_attempts", 6, lo=1, hi=100),
        max_sessions_per_user=t.integer("max_sessions_per_user", 10, lo=1, hi=10000),
        max_connections=t.integer("max_connections", 1000, lo=1, hi=100000),
        max_channels_per_connection=t.integer("max_channels_per_connection", 10, lo=1,
                                              hi=1000),
        max_unauthenticated_per_source=t.integer("max_unauthenticated_per_source", 10, lo=1,
                                                 hi=100000),
        device_logins_per_source=t.integer("device_logins_per_source", 10, lo=1, hi=100000),
        idle_timeout=t.duration("idle_timeout", 900.0),
        keepalive_interval=t.duration("keepalive_interval", 30.0),
        keepalive_count_max=t.integer("keepalive_count_max", 3, lo=1, hi=100),
        upstream_linger=_upstream_linger(t),
        proxy_protocol_from=_networks(t, "proxy_protocol_from"),
        workers=t.integer("workers", 0, lo=0, hi=256),
        worker_balance=WorkerBalance(t.string("worker_balance", "shared",
                                              pattern="shared|reuseport",
                                              what='"shared" or "reuseport"')),
        ciphers=_ciphers(t),
    )
    t.done()
    return server


def _ciphers(t: Table) -> tuple[str, ...]:
    what = "a list of ciphers from " + ", ".join(SSH_CIPHERS)
    ciphers: tuple[str, ...] = t.strings(
        "ciphers", DEFAULT_CIPHERS, pattern="|".join(re.escape(c) for c in SSH_CIPHERS),
        what=what)
    if not ciphers:
        raise t.error("ciphers", what, [])
    return ciphers


# A parked target connection is a live login on the target: minutes, not hours.
_MAX_UPSTREAM_LINGER = 600.0


def _upstream_linger(t: Table) -> float:
    seconds = float(t.duration("upstream_linger", 10.0))
    if seconds > _MAX_UPSTREAM_LINGER:
        raise t.error("upstream_linger", f"a duration of at most {_MAX_UPSTREAM_LINGER:.0f}s",
                      seconds)
    return seconds


def _networks(t: Table, key: str) -> tuple[IPv4Network | IPv6Network, ...]:
    networks = []
    for text in t.strings(key, ()):
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError:
            raise t.error(key, 'a list of addresses or networks ("10.0.0.5/32", "10.1.0.0/16")',
                          text) from None
    return tuple(networks)


def _vault(t: Table, paths: PathsConfig) -> VaultConfig:
    vault = VaultConfig(
        path=t.filepath("path", paths.state_dir / "vault.json"),
        key_file=t.filepath("key_file", None),
        key_env=t.string("key_env", None, pattern=ENV_NAME, what="an environment variable name"),
        key_credential=t.string("key_credential", None, pattern=r"[A-Za-z0-9_.-]{1,64}",
                             what="a systemd credential name"),
    )
    if not (vault.key_file or vault.key_env or vault.key_credential):
        raise t.error("key_file", "one of key_file, key_env or key_credential to be set")
    t.done()
    return vault


def _user(t: Table) -> LocalUser:
    name = t.string("name", pattern=LOGIN_NAME, what="a user name (lower case, digits, _ . -)")
    keys = t.strings("keys", ())
    for key in keys:
        try:
            asyncssh.import_public_key(key)
        except (asyncssh.KeyImportError, ValueError):
            raise t.error("keys", "OpenSSH public key lines (\"ssh-ed25519 AAAA...\")",
                          key) from None
    if not keys:
        raise t.error("keys", "at least one public key")
    user = LocalUser(name=name, keys=keys,
                     groups=t.strings("groups", (), pattern=GROUP_NAME,
                                       what="a list of group names"))
    t.done()
    return user


def _target(t: Table, masking: MaskingConfig) -> Target:
    name = t.string("name", pattern=TARGET_NAME,
                 what="a target name of letters, digits, '_' or '-' (no dots)")
    host_keys = t.strings("host_keys", ())
    if t.has("host_key"):
        host_keys = (t.string("host_key"), *host_keys)
    for key in host_keys:
        try:
            asyncssh.import_public_key(key)
        except (asyncssh.KeyImportError, ValueError):
            raise t.error("host_key", "an OpenSSH public host key line", key) from None
    known_hosts = t.filepath("known_hosts", None)
    host_cas = _host_cas(t)
    if not host_keys and known_hosts is None and not host_cas:
        raise t.error("host_key", "a pinned host key (host_key or known_hosts) or a host CA "
                      "(host_ca): bastion never trusts a target's key on first use")
    target = Target(
        name=name,
        host=t.string("host"),
        port=t.integer("port", 22, lo=1, hi=65535),
        host_keys=host_keys,
        known_hosts=known_hosts,
        default_login=t.string("default_login", None, pattern=LOGIN_NAME, what="a login name"),
        connect_timeout=t.duration("connect_timeout", 10.0, allow_zero=False),
        record_input=t.boolean("record_input", True),
        unresolved=t.string("unresolved", None, pattern=UNRESOLVED_PATTERN, what=UNRESOLVED_WHAT),
        masking=parse_target_masking(t, masking),
        auth=TargetAuth(t.string("auth", "vault", pattern="vault|certificate",
                                 what='"vault" or "certificate"')),
        host_cas=host_cas,
        source_addresses=source_addresses(t),
    )
    t.done()
    return target


def _host_cas(t: Table) -> tuple[str, ...]:
    lines: tuple[str, ...] = t.strings("host_cas", ())
    if t.has("host_ca"):
        lines = (t.string("host_ca"), *lines)
    return tuple(host_ca_line(t, "host_ca" if t.has("host_ca") else "host_cas", line)
                 for line in lines)


def _access(t: Table) -> AccessRule:
    rule = AccessRule(
        groups=t.strings("groups", (), pattern=GROUP_NAME, what="a list of group names"),
        users=t.strings("users", (), pattern=r".{1,256}", what="a list of user names"),
        targets=t.strings("targets", pattern=rf"\*|{TARGET_NAME}",
                           what='a list of target names or "*"'),
        logins=t.strings("logins", pattern=rf"\*|{LOGIN_NAME}",
                          what='a list of login names or "*"'),
    )
    if not rule.groups and not rule.users:
        raise t.error("groups", "groups or users that this rule applies to")
    t.done()
    return rule


def parse_evidence(t: Table) -> EvidenceConfig:
    """The ``[evidence]`` section: signing key, trusted public keys, local retention."""
    evidence = EvidenceConfig(
        signing_key=t.filepath("signing_key", None),
        key_id=t.string("key_id", None, pattern=r"[A-Za-z0-9_.:-]{1,128}",
                        what="a key id of letters, digits, '_', '.', ':' or '-'"),
        public_keys=tuple(_resolve(t, p) for p in t.strings("public_keys", ())),
        keep_days=t.integer("keep_days", 0, lo=0, hi=36500),
    )
    t.done()
    return evidence


def parse_storage(t: Table) -> StorageConfig:
    """The ``[storage]`` section: where sealed sessions are uploaded."""
    mode = t.string("object_lock_mode", "none", pattern="GOVERNANCE|COMPLIANCE|none",
                    what='"GOVERNANCE", "COMPLIANCE" or "none"')
    storage = StorageConfig(
        bucket=t.string("bucket", pattern=r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
                        what="an S3 bucket name"),
        prefix=t.string("prefix", "", pattern=r"([A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*)?",
                        what="a key prefix such as \"bastion/prod\" (no leading or trailing /)"),
        endpoint_url=t.string("endpoint_url", None, pattern=r"https?://\S+",
                              what="an http:// or https:// URL"),
        region=t.string("region", None, pattern=r"[a-z0-9-]{1,32}", what="a region name"),
        object_lock_mode=None if mode == "none" else mode,
        retention_days=t.integer("retention_days", 0, lo=0, hi=36500),
        concurrency=t.integer("concurrency", 4, lo=1, hi=64),
        multipart_threshold=t.integer("multipart_threshold", 64 * 1024 * 1024,
                                      lo=5 * 1024 * 1024, hi=5 * 1024 ** 3),
        max_attempts=t.integer("max_attempts", 5, lo=1, hi=20),
    )
    if storage.object_lock_mode and storage.retention_days == 0:
        raise t.error("retention_days", "a retention period of at least 1 day when "
                      "object_lock_mode is set", 0)
    t.done()
    return storage


def _resolve(t: Table, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (t.source.path.parent / path).resolve()


def _unique(root: Table, key: str, names: list[str]) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise Table({}, (key, index), root.source).error(
                "name", f"a name not used by another entry ({name!r} appears twice)")
        seen.add(name)


def check_files(config: Config) -> list[str]:
    """Problems with files the config names that exist at start-up (for ``check-config``)."""
    problems = []
    for target in config.targets:
        if target.known_hosts and not target.known_hosts.is_file():
            problems.append(f"{config.source}: targets {target.name}: known_hosts "
                            f"{target.known_hosts} does not exist")
    if config.ca is not None:
        for name, source in (("ca", config.ca.key), ("ca.next", config.ca.next)):
            if source is not None and source.key_file and not source.key_file.is_file():
                problems.append(f"{config.source}: {name}.key_file {source.key_file} "
                                "does not exist")
    if config.vault.key_file and not config.vault.key_file.is_file():
        problems.append(f"{config.source}: vault.key_file {config.vault.key_file} does not exist")
    return problems


__all__ = ["ConfigError", "check_files", "load_config", "parse_config"]
