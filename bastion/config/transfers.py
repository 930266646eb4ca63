"""The ``[[transfers]]`` and ``[[forwarding]]`` sections: file-transfer limits and port forwards.

Both scope a rule the way ``[[access]]`` does (``groups``/``users`` it applies to, ``targets``
it covers). Transfers are allowed whenever the session is, and rules only restrict; forwards are
refused unless a rule allows them.
"""

from __future__ import annotations

import re

from bastion.config.model import GROUP_NAME, TARGET_NAME, ForwardRule, TransferRule
from bastion.config.reader import Table

# An absolute path glob ("/srv/**", "/home/*/.ssh/**") or one that starts anywhere ("**/.env").
PATH_GLOB = r"(/|\*\*)[^\x00-\x1f\x7f]{0,1023}"
# host:port with "*" allowed for either part; IPv6 addresses in brackets.
FORWARD_SPEC = r"(\*|\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9_.-]{1,253}):(\*|[0-9]{1,5})"
OPEN_FROM = ("target", "bastion")


def _scope(t: Table) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    groups = t.strings("groups", (), pattern=GROUP_NAME, what="a list of group names")
    users = t.strings("users", (), pattern=r".{1,256}", what="a list of user names")
    targets = t.strings("targets", ("*",), pattern=rf"\*|{TARGET_NAME}",
                        what='a list of target names or "*"')
    if not groups and not users:
        raise t.error("groups", "groups or users that this rule applies to")
    return groups, users, targets


def parse_transfer_rule(t: Table) -> TransferRule:
    """One ``[[transfers]]`` rule."""
    groups, users, targets = _scope(t)
    rule = TransferRule(
        groups=groups, users=users, targets=targets,
        upload=t.boolean("upload", True),
        download=t.boolean("download", True),
        allow_paths=t.strings("allow_paths", (), pattern=PATH_GLOB,
                              what='a list of path globs starting with "/" or "**"'),
        deny_paths=t.strings("deny_paths", (), pattern=PATH_GLOB,
                             what='a list of path globs starting with "/" or "**"'),
    )
    t.done()
    return rule


def parse_forward_rule(t: Table) -> ForwardRule:
    """One ``[[forwarding]]`` rule."""
    groups, users, targets = _scope(t)
    local = t.strings("local", (), pattern=FORWARD_SPEC,
                      what='a list of "host:port" (either may be "*")')
    for spec in local:
        port = spec.rpartition(":")[2]
        if port != "*" and not 1 <= int(port) <= 65535:
            raise t.error("local", "ports from 1 to 65535", spec)
    rule = ForwardRule(
        groups=groups, users=users, targets=targets, local=local,
        open_from=t.string("open_from", "target", pattern="|".join(OPEN_FROM),
                           what='"target" or "bastion"'),
    )
    t.done()
    return rule


def check_rule_targets(t: Table, names: set[str], targets: tuple[str, ...]) -> None:
    """Every target a rule names must exist (``"*"`` aside)."""
    for name in targets:
        if name != "*" and name not in names:
            raise t.error("targets", f'names of [[targets]] or "*" (no target is called {name!r})')


def is_path_glob(text: str) -> bool:
    """Whether ``text`` is a valid path glob for ``allow_paths``/``deny_paths``."""
    return re.fullmatch(PATH_GLOB, text) is not None
