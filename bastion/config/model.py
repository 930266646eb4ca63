"""The configuration as frozen, typed objects; built once by ``bastion.config.load``."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from bastion.config.masking import MaskingConfig, TargetMasking
from bastion.config.state import StateConfig
from bastion.secret import Secret

# Names that may appear in an SSH user name. Targets and logins are checked against these
# before anything else looks at them, so no shell, path or host syntax gets through.
TARGET_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}"
LOGIN_NAME = r"[a-z_][a-z0-9_.-]{0,31}"
GROUP_NAME = r"[A-Za-z0-9_.:/@-]{1,128}"
NODE_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"


class WorkerBalance(StrEnum):
    """How worker processes share the listening port."""

    SHARED = "shared"  # one socket, every worker accepts on it: an idle worker takes the next
    REUSEPORT = "reuseport"  # a socket per worker (SO_REUSEPORT): the kernel spreads by hash


# The ciphers `[server] ciphers` may name: AEAD or counter mode (with an encrypt-then-MAC MAC).
SSH_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
               "aes128-ctr", "aes192-ctr", "aes256-ctr")
# Offered by default: not ChaCha20-Poly1305. Stock OpenSSH clients pick it whenever the server
# offers it, and in asyncssh it costs about five times AES-GCM per packet (it builds new cipher
# objects for every packet), a third of the bastion's CPU on a download; without it they pick
# AES (CTR with an ETM MAC, or GCM where the client lists GCM before CTR). Naming it in the
# config brings it back. (It was also one of the two cipher families Terrapin attacked on peers
# without strict key exchange.)
DEFAULT_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr",
                   "aes192-ctr", "aes256-ctr")


@dataclass(frozen=True)
class ServerConfig:
    """The SSH listener and its limits."""

    listen: str = "127.0.0.1"
    port: int = 2222
    host_keys: tuple[Path, ...] = ()
    node_id: str = "bastion"
    login_timeout: float = 30.0  # before authentication; a device login in progress gets longer
    max_auth_attempts: int = 6
    max_sessions_per_user: int = 10
    max_connections: int = 1000
    max_channels_per_connection: int = 10  # session channels open at once on one connection
    max_unauthenticated_per_source: int = 10  # connections from one address not yet signed in
    device_logins_per_source: int = 10  # device logins one address may start per minute
    idle_timeout: float = 900.0
    keepalive_interval: float = 30.0
    keepalive_count_max: int = 3
    # Seconds a target connection stays open after a clean session for the same person's next
    # session to that target and login (0: every session dials); bastion/relay/upstream_pool.py.
    upstream_linger: float = 10.0
    # Load balancers whose connections start with a PROXY protocol v2 header (the real client
    # address); empty: no header is accepted from anyone.
    proxy_protocol_from: tuple[IPv4Network | IPv6Network, ...] = ()
    # Worker processes `bastion serve` runs (0: one per CPU); see bastion/server/workers.py.
    workers: int = 0
    worker_balance: WorkerBalance = WorkerBalance.SHARED
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS  # offered to users, in this order


@dataclass(frozen=True)
class PathsConfig:
    """Where state, recordings and the audit log live."""

    state_dir: Path
    spool_dir: Path
    audit_log: Path | None


@dataclass(frozen=True)
class VaultConfig:
    """The encrypted credential store and where its key comes from (first one set wins)."""

    path: Path
    key_file: Path | None = None
    key_env: str | None = None
    key_credential: str | None = None


@dataclass(frozen=True)
class LocalUser:
    """A user declared in the config (service or break-glass account) with its public keys."""

    name: str
    keys: tuple[str, ...]
    groups: tuple[str, ...] = ()


class TargetAuth(StrEnum):
    """How the bastion logs in to a target."""

    VAULT = "vault"  # a key or password stored in the vault
    CERTIFICATE = "certificate"  # a short-lived certificate from the bastion's user CA


@dataclass(frozen=True)
class Target:
    """A host users may reach; its host key is pinned or certified by a trusted host CA."""

    name: str
    host: str
    port: int = 22
    host_keys: tuple[str, ...] = ()
    known_hosts: Path | None = None
    default_login: str | None = None
    connect_timeout: float = 10.0
    record_input: bool = True  # keystrokes of pty channels into the recording
    unresolved: str | None = None  # command control: "deny", "approve" or "warn"; None: global
    masking: TargetMasking = field(default_factory=TargetMasking)
    auth: TargetAuth = TargetAuth.VAULT
    host_cas: tuple[str, ...] = ()  # host CA public key lines whose host certificates it trusts
    source_addresses: tuple[str, ...] = ()  # certificates' source-address; () = as dialled


@dataclass(frozen=True)
class AccessRule:
    """Members of ``groups`` (or the named ``users``) may reach ``targets`` as ``logins``.

    ``"*"`` in targets or logins means any; an empty rule list allows nothing.
    """

    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    logins: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvidenceConfig:
    """Manifest signing (on the bastion) and trusted keys (for ``bastion verify``)."""

    signing_key: Path | None = None
    key_id: str | None = None
    public_keys: tuple[Path, ...] = ()
    keep_days: int = 0  # keep uploaded sessions locally this many days (0: remove once verified)


@dataclass(frozen=True)
class StorageConfig:
    """The S3 bucket sealed sessions are uploaded to."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    object_lock_mode: str | None = None  # GOVERNANCE, COMPLIANCE or None
    retention_days: int = 0
    concurrency: int = 4
    multipart_threshold: int = 64 * 1024 * 1024
    max_attempts: int = 5


@dataclass(frozen=True)
class TotpPolicy:
    """Who must give a TOTP code after their first factor: everyone, some groups, some targets."""

    all: bool = False
    groups: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class IdentityConfig:
    """The OIDC provider used for device-flow logins, key bindings and the TOTP policy."""

    issuer: str | None = None  # None: no OIDC login; only config users' keys
    client_id: str = "bastion"
    client_secret: Secret[str] | None = None  # None: a public client (the default)
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    groups_claim: str = "groups"
    binding_ttl: float = 12 * 3600.0
    device_poll_timeout: float = 600.0
    # Show the one-click sign-in URL (code included) instead of the URL and the code to type:
    # convenient, but a phishing link then signs the victim in for the attacker (RFC 8628 5.4).
    show_complete_url: bool = False
    allowed_algs: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                     "ES256", "ES384", "EdDSA")
    http_timeout: float = 10.0
    totp_required_for: TotpPolicy = TotpPolicy()
    totp_inband_enrollment: bool = False

    @property
    def enabled(self) -> bool:
        """Whether OIDC device login is configured."""
        return self.issuer is not None


@dataclass(frozen=True)
class TransferRule:
    """A restriction on file transfers (sftp, scp, rsync) for some people on some targets.

    Transfers are allowed whenever the session is; every rule that applies only takes away
    (``upload``/``download`` false, paths outside ``allow_paths`` or inside ``deny_paths``).
    """

    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    targets: tuple[str, ...] = ("*",)
    upload: bool = True  # create, write, rename, remove, mkdir, rmdir, setstat, symlink
    download: bool = True  # read file contents
    allow_paths: tuple[str, ...] = ()  # globs; empty: every path (that deny_paths leaves)
    deny_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class ForwardRule:
    """Port forwards (``ssh -L``) some people may open on some targets; none without a rule."""

    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    targets: tuple[str, ...] = ("*",)
    local: tuple[str, ...] = ()  # "host:port" patterns ("*" allowed in host or port)
    open_from: str = "target"  # "target": through the target's sshd; "bastion": from here


@dataclass(frozen=True)
class ApprovalsConfig:
    """Approvers (groups or user names), the wait before a request expires, the webhook."""

    approver_groups: tuple[str, ...] = ()
    approver_users: tuple[str, ...] = ()  # identity names or e-mails, as in [[access]] users
    timeout: float = 600.0
    require_totp: bool = True  # approving asks for the approver's TOTP code
    webhook_url: str | None = None
    webhook_timeout: float = 5.0
    webhook_attempts: int = 3
    poll_interval: float = 0.3  # how often a waiting session looks for a decision


@dataclass(frozen=True)
class CommandRule:
    """A command-control rule (``[[commands]]``): what it matches, where, and what it does.

    Exactly one of ``command`` (a basename glob, with optional required ``options`` and
    ``args`` patterns) or ``regex`` (re2, searched in the normalized command text) is set.
    Empty scope lists mean "everyone/everywhere".
    """

    name: str
    action: str  # "deny", "approve", "warn" or "allow"
    command: str | None = None
    options: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    regex: str | None = None
    targets: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    logins: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    message: str = ""
    line: int | None = None  # where the rule starts in the config file


@dataclass(frozen=True)
class CommandControl:
    """All command rules, and what happens to commands that cannot be resolved.

    ``unresolved`` None means "not set": the default (``deny``) applies wherever rules apply.
    """

    rules: tuple[CommandRule, ...] = ()
    unresolved: str | None = None


@dataclass(frozen=True)
class CaKeyConfig:
    """Where one user CA key comes from: a private key source, or (``[ca.next]`` only) just
    its public key line, for a CA that targets trust before the bastion signs with it."""

    key_file: Path | None = None
    key_env: str | None = None
    key_credential: str | None = None
    public_key: str | None = None


@dataclass(frozen=True)
class CaConfig:
    """The user certificate authority that signs short-lived certificates for targets."""

    key: CaKeyConfig
    next: CaKeyConfig | None = None  # a second CA, trusted alongside while the CA is rolled
    sign_with_next: bool = False  # sign with ``next`` (the middle step of a roll)
    validity: float = 300.0  # seconds a certificate is valid after it is issued
    clock_skew: float = 60.0  # seconds it is valid before it is issued (target clocks behind)


@dataclass(frozen=True)
class Config:
    """The whole configuration, read from ``source``."""

    source: Path
    server: ServerConfig
    paths: PathsConfig
    vault: VaultConfig
    users: tuple[LocalUser, ...] = ()
    targets: tuple[Target, ...] = ()
    access: tuple[AccessRule, ...] = ()
    evidence: EvidenceConfig | None = None
    storage: StorageConfig | None = None
    identity: IdentityConfig = IdentityConfig()
    approvals: ApprovalsConfig = ApprovalsConfig()
    commands: CommandControl = CommandControl()
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    transfers: tuple[TransferRule, ...] = ()
    forwarding: tuple[ForwardRule, ...] = ()
    ca: CaConfig | None = None
    state: StateConfig = field(default_factory=StateConfig)
    _targets_by_name: dict[str, Target] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._targets_by_name.update({t.name: t for t in self.targets})

    def target(self, name: str) -> Target | None:
        """The target called ``name``, or None."""
        return self._targets_by_name.get(name)
