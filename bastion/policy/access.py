"""Who may reach which target as which login: the SSH user name parsed, then policy decided.

The SSH user name is client input. It is parsed strictly (``login@target``, ``target`` or a plain
word meaning "no target, show me a menu") and resolved only against configured targets, so no host
name, address or port a client types can ever become a connection. A refusal says what was
refused, never what exists.

The result of a yes is an ``Authorization``: a frozen value that only ``authorize`` can make. The
upstream dialer accepts nothing else, so no code path can reach a target policy did not approve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bastion.config.model import LOGIN_NAME, TARGET_NAME, AccessRule, Config, Target
from bastion.errors import AccessDenied, TargetNameError
from bastion.identity.model import Identity

_MAX_USERNAME = 256
_MENU_WORD = r"[a-z_][a-z0-9_-]{0,31}"  # a local user name; no dots, so no host names
_POLICY_SEAL = object()  # private: proves an Authorization came from ``authorize``


@dataclass(frozen=True)
class TargetRequest:
    """What the SSH user name asks for; ``target`` None means "show me a menu"."""

    target: str | None
    login: str | None
    username: str

    def describe(self) -> str:
        """The request as the user typed it, for messages and audit."""
        if self.target is None:
            return "(no target)"
        return f"{self.login}@{self.target}" if self.login else self.target


def parse_username(username: str, config: Config) -> TargetRequest:
    """Turn an SSH user name into a request for a configured target, or refuse it."""
    if len(username) > _MAX_USERNAME or not username.isprintable() or not username.isascii():
        raise TargetNameError("the user name is not a valid target request")
    if "@" in username:
        login, _, target = username.rpartition("@")
        if not re.fullmatch(LOGIN_NAME, login):
            raise TargetNameError(f"{_quote(login)} is not a valid login name")
        if not re.fullmatch(TARGET_NAME, target) or config.target(target) is None:
            raise TargetNameError(f"target {_quote(target)} is not available to you")
        return TargetRequest(target=target, login=login, username=username)
    if config.target(username) is not None:
        return TargetRequest(target=username, login=None, username=username)
    if re.fullmatch(_MENU_WORD, username):
        # A plain word that names no target (typically the local user name OpenSSH sends by
        # default): the user gets the menu of what they may reach.
        return TargetRequest(target=None, login=None, username=username)
    raise TargetNameError(f"target {_quote(username)} is not available to you")


@dataclass(frozen=True)
class Authorization:
    """Policy's yes: this identity may open this target as this login. Made only by policy."""

    identity: Identity
    target: Target
    login: str
    rule: int  # index of the [[access]] rule that allowed it, for audit
    _seal: object = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Reached only through the constructor (or dataclasses.replace): never policy's way.
        raise TypeError("an Authorization is issued only by bastion.policy.access.authorize")

    def is_issued(self) -> bool:
        """Whether this value really came from ``authorize``."""
        return getattr(self, "_seal", None) is _POLICY_SEAL

    @classmethod
    def _issue(cls, identity: Identity, target: Target, login: str, rule: int) -> Authorization:
        auth = object.__new__(cls)
        for name, value in (("identity", identity), ("target", target), ("login", login),
                            ("rule", rule), ("_seal", _POLICY_SEAL)):
            object.__setattr__(auth, name, value)
        return auth

    def audit_fields(self) -> dict[str, object]:
        """The decision as it appears in audit events."""
        return {"target": self.target.name, "login": self.login, "rule": self.rule}


def _applies(rule: AccessRule, identity: Identity) -> bool:
    if set(rule.users) & set(identity.rule_names):
        return True
    return bool(set(rule.groups) & set(identity.groups))


def _allows_target(rule: AccessRule, target: str) -> bool:
    return "*" in rule.targets or target in rule.targets


def allowed_logins(config: Config, identity: Identity, target: str) -> tuple[set[str], bool]:
    """Logins this identity may use on ``target``: (explicit names, whether any is allowed)."""
    names: set[str] = set()
    wildcard = False
    for rule in config.access:
        if _applies(rule, identity) and _allows_target(rule, target):
            names.update(login for login in rule.logins if login != "*")
            wildcard = wildcard or "*" in rule.logins
    return names, wildcard


def reachable_targets(config: Config, identity: Identity) -> list[Target]:
    """Targets this identity may reach with at least one login, in config order."""
    return [t for t in config.targets if any(allowed_logins(config, identity, t.name))]


def authorize(config: Config, identity: Identity, request: TargetRequest) -> Authorization:
    """Decide a request; deny unless an [[access]] rule allows this target and login."""
    if request.target is None:
        raise AccessDenied("no target given")
    target = config.target(request.target)
    names, wildcard = allowed_logins(config, identity, request.target)
    if target is None or not (names or wildcard):
        raise AccessDenied(f"target {_quote(request.target)} is not available to you")
    login = request.login or target.default_login
    if login is None:
        if len(names) == 1 and not wildcard:
            login = next(iter(names))
        else:
            raise AccessDenied(f"target {target.name} has no default login; "
                               f"connect as LOGIN@{target.name}")
    for index, rule in enumerate(config.access):
        if (_applies(rule, identity) and _allows_target(rule, target.name)
                and ("*" in rule.logins or login in rule.logins)):
            return Authorization._issue(identity, target, login, index)
    raise AccessDenied(f"login {_quote(login)} on target {target.name} is not allowed for you")


def _quote(text: str) -> str:
    shown = text if len(text) <= 64 else text[:61] + "..."
    return "'" + shown.replace("'", "\\'") + "'"
