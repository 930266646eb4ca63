"""Command control: command lines normalized as bash would run them, and rules applied to them.

Pure functions and values: no I/O, no asyncssh. The relay's line catcher and enforcement stage
(and ``bastion check-command``) call ``CommandPolicy.evaluate`` for an interactive line and
``CommandPolicy.evaluate_exec`` for an exec request, and act on the ``CommandDecision``.
"""

from bastion.policy.commands.incomplete import line_is_incomplete
from bastion.policy.commands.models import (
    CommandDecision,
    CommandScope,
    NormalizedCommand,
    RuleMatch,
    Verdict,
)
from bastion.policy.commands.normalize import ParsedLine, normalize_exec, normalize_line
from bastion.policy.commands.policy import DEFAULT_UNRESOLVED, CommandPolicy, evaluate_rules

classify_exec = normalize_exec  # the exec request as sent, stdin taken as not visible

__all__ = [
    "DEFAULT_UNRESOLVED",
    "CommandDecision",
    "CommandPolicy",
    "CommandScope",
    "NormalizedCommand",
    "ParsedLine",
    "RuleMatch",
    "Verdict",
    "classify_exec",
    "evaluate_rules",
    "line_is_incomplete",
    "normalize_exec",
    "normalize_line",
]
