"""File-transfer and port-forward decisions for one session.

Transfers (sftp, scp, rsync) are allowed whenever the session is; each ``[[transfers]]`` rule that
applies to the person and target only takes away. Port forwards are refused unless a
``[[forwarding]]`` rule allows the destination. Paths come from the client and are untrusted: they
are normalised (home-relative, ``.``, ``..``, ``//``) before any rule sees them, and a relative path
whose base is unknown is refused by any path rule (fail closed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bastion.config.model import Config, TransferRule


def _applies(groups: tuple[str, ...], users: tuple[str, ...], targets: tuple[str, ...],
             names: Iterable[str], member_of: Iterable[str], target: str) -> bool:
    if "*" not in targets and target not in targets:
        return False
    return bool(set(users) & set(names)) or bool(set(groups) & set(member_of))


def normalize_path(path: str, home: str | None) -> str | None:
    """The absolute, lexically normalised form of a client path; None if it cannot be known.

    ``..`` at the root stays at the root (as the kernel does); ``//`` and ``.`` collapse. A
    relative path is taken from ``home`` (the SFTP server's start directory); without a home
    it is unknown.
    """
    if not path.startswith("/"):
        if home is None or not home.startswith("/"):
            return None
        path = f"{home}/{path}"
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob as a regex: ``*`` and ``?`` stay inside one name, ``**`` crosses ``/``.

    ``DIR/**`` also matches ``DIR`` itself, so a rule on a folder covers listing it.
    """
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("(/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


@dataclass(frozen=True)
class TransferVerdict:
    """A decision on one operation: allowed, or refused with the reason and the rule."""

    allowed: bool
    reason: str = ""
    rule: str | None = None  # "transfers[N]", for audit


ALLOWED = TransferVerdict(True)


@dataclass(frozen=True)
class _CompiledRule:
    name: str
    rule: TransferRule
    allow: tuple[re.Pattern[str], ...]
    deny: tuple[re.Pattern[str], ...]


class TransferPolicy:
    """The ``[[transfers]]`` rules that apply to one person on one target, ready to check."""

    def __init__(self, rules: Sequence[tuple[int, TransferRule]]) -> None:
        self._rules = tuple(
            _CompiledRule(f"transfers[{index}]", rule,
                          tuple(glob_regex(p) for p in rule.allow_paths),
                          tuple(glob_regex(p) for p in rule.deny_paths))
            for index, rule in rules)

    @classmethod
    def for_session(cls, config: Config, names: Iterable[str], groups: Iterable[str],
                    target: str) -> TransferPolicy:
        """The rules that apply to an identity (its name, e-mail; its groups) on ``target``."""
        names, groups = tuple(n for n in names if n), tuple(groups)
        return cls([(i, r) for i, r in enumerate(config.transfers)
                    if _applies(r.groups, r.users, r.targets, names, groups, target)])

    @property
    def restricted(self) -> bool:
        """Whether any rule applies (without one everything is allowed)."""
        return bool(self._rules)

    @property
    def first_rule(self) -> str | None:
        """The first rule that applies (``transfers[N]``), for audit of a whole-command refusal."""
        return self._rules[0].name if self._rules else None

    def check(self, path: str | None, *, write: bool = False, read: bool = False,
              paths_only: bool = False) -> TransferVerdict:
        """Decide an operation on a normalised ``path`` (None: unknown) that writes and/or reads.

        ``paths_only``: only the path rules count (listing a folder is neither up nor down).
        """
        for compiled in self._rules:
            rule = compiled.rule
            if not paths_only and write and not rule.upload:
                return TransferVerdict(False, "uploads are not allowed", compiled.name)
            if not paths_only and read and not rule.download:
                return TransferVerdict(False, "downloads are not allowed", compiled.name)
            if not (compiled.allow or compiled.deny):
                continue
            if path is None:
                return TransferVerdict(False, "the path cannot be resolved", compiled.name)
            if any(p.fullmatch(path) for p in compiled.deny):
                return TransferVerdict(False, "the path is denied", compiled.name)
            if compiled.allow and not any(p.fullmatch(path) for p in compiled.allow):
                return TransferVerdict(False, "the path is not allowed", compiled.name)
        return ALLOWED


@dataclass(frozen=True)
class ForwardGrant:
    """A ``[[forwarding]]`` rule's yes to one destination."""

    rule: str  # "forwarding[N]"
    open_from: str  # "target" or "bastion"


def _spec_matches(spec: str, host: str, port: int) -> bool:
    spec_host, _, spec_port = spec.rpartition(":")
    spec_host = spec_host.strip("[]").lower()
    if spec_port != "*" and int(spec_port) != port:
        return False
    return spec_host == "*" or spec_host == host.strip("[]").lower()


def forwards_through_target(config: Config, names: Iterable[str], groups: Iterable[str],
                            target: str) -> bool:
    """Whether some [[forwarding]] rule lets this identity open forwards through ``target``'s
    own sshd (``open_from = "target"``)."""
    names, groups = tuple(n for n in names if n), tuple(groups)
    return any(rule.open_from == "target"
               and _applies(rule.groups, rule.users, rule.targets, names, groups, target)
               for rule in config.forwarding)


def forward_grant(config: Config, names: Iterable[str], groups: Iterable[str], target: str,
                  host: str, port: int) -> ForwardGrant | None:
    """The first rule that lets this identity forward to ``host:port`` via ``target``, or None."""
    names, groups = tuple(n for n in names if n), tuple(groups)
    for index, rule in enumerate(config.forwarding):
        if _applies(rule.groups, rule.users, rule.targets, names, groups, target) and any(
                _spec_matches(spec, host, port) for spec in rule.local):
            return ForwardGrant(f"forwarding[{index}]", rule.open_from)
    return None

