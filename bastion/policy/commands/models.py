"""The values command control passes around: a scope, normalized commands, rule matches, a verdict.

Everything here is frozen: the line catcher and the enforcement stage (in relay/) receive a
``CommandDecision`` and act on it; nothing they do can change what the policy decided.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    """What happens to a command line; ordered from least to most strict."""

    ALLOW = "allow"
    WARN = "warn"
    APPROVE = "approve"
    DENY = "deny"

    @property
    def rank(self) -> int:
        """Strictness: ALLOW 0 < WARN 1 < APPROVE 2 < DENY 3."""
        return _RANK[self]

    @classmethod
    def strictest(cls, verdicts: tuple[Verdict, ...] | list[Verdict]) -> Verdict:
        """The strictest of ``verdicts`` (ALLOW for none)."""
        best = cls.ALLOW
        for verdict in verdicts:
            if verdict.rank > best.rank:
                best = verdict
        return best


_RANK = {Verdict.ALLOW: 0, Verdict.WARN: 1, Verdict.APPROVE: 2, Verdict.DENY: 3}


@dataclass(frozen=True)
class CommandScope:
    """Who runs a command where: rules apply by target, login, user and the user's groups."""

    target: str
    login: str
    user: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class NormalizedCommand:
    """One simple command as bash would run it, after quote removal and expansion we can do.

    ``name`` is the basename of the command word with ``.``/``..`` resolved (``/usr/sbin/./
    shutdown`` is ``shutdown``); ``options`` are canonical (``rm -fr`` and ``rm --recursive
    --force`` both give ``("-f", "-r")``); ``operands`` are the other arguments in order.
    ``text`` is ``name`` and the arguments joined by spaces: what rule regexes search.
    Words that are not literal (``$x``, ``$(...)``) appear as written.
    ``via`` names what this command was found inside (``sudo``, ``bash -c``, ``xargs``...).
    """

    name: str
    argv: tuple[str, ...]
    options: tuple[str, ...] = ()
    operands: tuple[str, ...] = ()
    via: tuple[str, ...] = ()
    unresolved: bool = False
    reason: str = ""  # why it is unresolved
    literal_name: bool = True  # False: the command word itself is not known ($x, $(...), r*)
    dynamic_options: bool = False  # an argument that is not literal could be an option
    dynamic_operands: bool = False  # an argument that is not literal could be any operand

    @property
    def text(self) -> str:
        """The command as rule regexes see it: name and arguments joined by single spaces."""
        return " ".join((self.name, *self.argv[1:]))


@dataclass(frozen=True)
class RuleMatch:
    """A rule that matched one of the line's commands."""

    rule: str
    action: Verdict
    message: str
    command: str = ""  # the normalized text of the command it matched


@dataclass(frozen=True)
class CommandDecision:
    """The policy's answer for one command line or exec request.

    ``verdict`` is the strictest of every matching rule, the target's ``unresolved`` action if
    any command could not be resolved, and the strictest rule in scope if the line did not
    parse. ``message`` is the one line the user sees (empty for ALLOW); it never contains the
    command line itself, so it is safe to print as is.
    """

    verdict: Verdict
    commands: tuple[NormalizedCommand, ...] = ()
    matched: tuple[RuleMatch, ...] = ()
    unresolved: bool = False
    unparseable: bool = False
    message: str = ""
    rule: str | None = None  # the rule that decided the verdict, if a rule did

    @property
    def reason(self) -> str:
        """What decided: a rule name, "unresolved", "unparseable" or "allowed"."""
        if self.rule is not None:
            return f"rule {self.rule}"
        if self.unparseable and self.verdict is not Verdict.ALLOW:
            return "unparseable"
        if self.unresolved and self.verdict is not Verdict.ALLOW:
            return "unresolved"
        return "allowed"
