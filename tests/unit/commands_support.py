"""Shared helpers for the command-control unit tests: the demo rules as a policy."""

from __future__ import annotations

from typing import Any

from bastion.config.model import CommandControl, CommandRule
from bastion.demo.command_rules import DEMO_COMMAND_RULES
from bastion.policy.commands import CommandDecision, CommandPolicy, CommandScope

SCOPE = CommandScope(target="web01", login="root", user="alice", groups=("ops",))


def rule(**fields: Any) -> CommandRule:
    """A CommandRule from keyword fields, lists turned into tuples as the loader does."""
    return CommandRule(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def demo_policy(unresolved: str | None = "approve") -> CommandPolicy:
    """The policy `bastion demo` ships."""
    rules = tuple(rule(**r) for r in DEMO_COMMAND_RULES)
    return CommandPolicy(CommandControl(rules=rules, unresolved=unresolved))


def check(line: str, policy: CommandPolicy | None = None) -> CommandDecision:
    """The demo policy's decision for an interactive line."""
    return (policy or demo_policy()).evaluate(line, SCOPE)
