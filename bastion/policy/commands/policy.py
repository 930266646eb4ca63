"""Command rules applied to normalized commands: every matching rule counts, the strictest wins.

The verdict of a line is the strictest (deny > approve > warn > allow) of:

- the action of every rule in scope that matches one of the line's simple commands (an
  ``allow`` never cancels a ``deny``: it only says "allowed" where nothing stricter matched);
- the scope's ``unresolved`` action, if a command could not be resolved, or if a command rule
  could match depending on an argument whose value is unknown (``rm $opts /``, ``xargs rm``);
- if the line does not parse (or crosses a bound): the strictest action of the rules in scope,
  and at least the ``unresolved`` action.

Command control is on for a scope when a rule applies to it or ``unresolved`` is set explicitly
for its target or globally; elsewhere every line is allowed (and still normalized, so the record
can show what ran). The default for ``unresolved`` is ``deny``: a command that cannot be checked
does not run unless an operator chose otherwise.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bastion.config.commands import compile_rule_regex
from bastion.config.model import CommandControl, CommandRule, Config
from bastion.policy.commands.models import (
    CommandDecision,
    CommandScope,
    NormalizedCommand,
    RuleMatch,
    Verdict,
)
from bastion.policy.commands.normalize import ParsedLine, normalize_exec, normalize_line
from bastion.policy.commands.options import canonical_rule_options

DEFAULT_UNRESOLVED = Verdict.DENY


@dataclass(frozen=True)
class _CompiledRule:
    rule: CommandRule
    action: Verdict
    names: tuple[str, ...]  # command name patterns ("shutdown|reboot" -> two)
    options: tuple[frozenset[str], ...]  # required options, canonical for each name
    args: tuple[tuple[str, ...], ...]  # each pattern's alternatives ("stop|restart")
    regex: Any  # a compiled re2 pattern, or None

    def applies(self, scope: CommandScope) -> bool:
        """Whether this rule is in force for ``scope`` (empty lists mean everyone)."""
        rule = self.rule
        return (_listed(rule.targets, scope.target) and _listed(rule.logins, scope.login)
                and _listed(rule.users, scope.user)
                and (not rule.groups or bool(set(rule.groups) & set(scope.groups))))

    def match(self, command: NormalizedCommand) -> tuple[bool, bool]:
        """(matches, could match): the second when an unknown argument decides it."""
        if self.regex is not None:
            return self.regex.search(command.text) is not None, False
        if not command.literal_name:
            return False, False
        index = next((i for i, name in enumerate(self.names)
                      if fnmatch.fnmatchcase(command.name, name)), -1)
        if index < 0:
            return False, False
        options_ok = self.options[index] <= set(command.options)
        args_ok = all(any(fnmatch.fnmatchcase(operand, alt) for operand in command.operands
                          for alt in alternatives) for alternatives in self.args)
        if options_ok and args_ok:
            return True, False
        could = (options_ok or command.dynamic_options) and (args_ok or command.dynamic_operands)
        return False, could


def _listed(names: tuple[str, ...], value: str) -> bool:
    return not names or "*" in names or value in names


class CommandPolicy:
    """Command rules ready to evaluate lines and exec requests for a scope."""

    def __init__(self, control: CommandControl,
                 unresolved_by_target: dict[str, str] | None = None) -> None:
        self._rules = tuple(_compile(rule) for rule in control.rules)
        self._global = Verdict(control.unresolved) if control.unresolved else None
        self._by_target = {name: Verdict(action)
                           for name, action in (unresolved_by_target or {}).items()}

    @classmethod
    def from_config(cls, config: Config) -> CommandPolicy:
        """The command policy of a loaded config."""
        return cls(config.commands, {t.name: t.unresolved for t in config.targets
                                     if t.unresolved is not None})

    @property
    def rules(self) -> tuple[CommandRule, ...]:
        """The rules, in config order."""
        return tuple(r.rule for r in self._rules)

    def unresolved_action(self, scope: CommandScope) -> Verdict:
        """What happens to an unresolved command in ``scope``."""
        return self._by_target.get(scope.target) or self._global or DEFAULT_UNRESOLVED

    def active(self, scope: CommandScope) -> bool:
        """Whether command control applies in ``scope`` at all."""
        return (scope.target in self._by_target or self._global is not None
                or any(rule.applies(scope) for rule in self._rules))

    def evaluate(self, line: str, scope: CommandScope) -> CommandDecision:
        """The verdict for an interactive command line typed in ``scope``."""
        return self.decide(normalize_line(line), scope)

    def evaluate_exec(self, command: str, scope: CommandScope) -> CommandDecision:
        """The verdict for an exec request (``ssh host -- command``) in ``scope``."""
        return self.decide(normalize_exec(command), scope)

    def decide(self, parsed: ParsedLine, scope: CommandScope) -> CommandDecision:
        """Apply the rules in scope to an already normalized line."""
        rules = [rule for rule in self._rules if rule.applies(scope)]
        commands = list(parsed.commands)
        matched: list[RuleMatch] = []
        unresolved_reasons: list[str] = [c.reason for c in commands if c.unresolved]
        for index, command in enumerate(commands):
            for rule in rules:
                hit, could = rule.match(command)
                if hit:
                    matched.append(RuleMatch(rule.rule.name, rule.action, rule.rule.message,
                                             command.text))
                elif could and rule.action is not Verdict.ALLOW:
                    reason = (f"an argument that is not literal could make rule "
                              f"{rule.rule.name} match")
                    unresolved_reasons.append(reason)
                    commands[index] = _mark_unresolved(command, reason)
        if not self.active(scope):
            return CommandDecision(Verdict.ALLOW, tuple(commands), tuple(matched),
                                   bool(unresolved_reasons), parsed.unparseable)
        candidates: list[tuple[Verdict, str]] = [(m.action, "rule") for m in matched]
        unresolved_action = self.unresolved_action(scope)
        if unresolved_reasons:
            candidates.append((unresolved_action, "unresolved"))
        if parsed.unparseable:
            strictest = Verdict.strictest([r.action for r in rules] + [unresolved_action])
            candidates.append((strictest, "unparseable"))
        verdict = Verdict.strictest([v for v, _ in candidates])
        deciding = next((m for m in matched if m.action is verdict), None)
        if deciding is not None:
            message = _rule_message(verdict, deciding)
        elif verdict is not Verdict.ALLOW and parsed.unparseable \
                and (verdict, "unparseable") in candidates:
            message = f"{_VERB[verdict]}: the line cannot be checked ({parsed.reason})"
        elif verdict is not Verdict.ALLOW:
            message = f"{_VERB[verdict]}: a command cannot be checked ({unresolved_reasons[0]})"
        else:
            message = ""
        return CommandDecision(
            verdict=verdict, commands=tuple(commands), matched=tuple(matched),
            unresolved=bool(unresolved_reasons), unparseable=parsed.unparseable,
            message=message, rule=deciding.rule if deciding is not None else None)


_VERB = {Verdict.DENY: "denied", Verdict.APPROVE: "needs approval",
         Verdict.WARN: "warning", Verdict.ALLOW: "allowed"}


def _rule_message(verdict: Verdict, match: RuleMatch) -> str:
    text = f"{_VERB[verdict]} by rule {match.rule}"
    return f"{text}: {match.message}" if match.message else text


def _compile(rule: CommandRule) -> _CompiledRule:
    names = tuple((rule.command or "").split("|"))
    # Options are canonical per command: "--recursive" is -r for rm but -R for chmod.
    options = tuple(canonical_rule_options(name, rule.options) for name in names)
    return _CompiledRule(
        rule=rule, action=Verdict(rule.action), names=names, options=options,
        args=tuple(tuple(pattern.split("|")) for pattern in rule.args),
        regex=compile_rule_regex(rule.regex) if rule.regex is not None else None)


def _mark_unresolved(command: NormalizedCommand, reason: str) -> NormalizedCommand:
    if command.unresolved:
        return command
    return dataclasses.replace(command, unresolved=True, reason=reason)


def evaluate_rules(rules: Sequence[CommandRule], line: str, scope: CommandScope,
                   unresolved: str | None = None) -> CommandDecision:
    """Convenience for tests and tools: evaluate ``line`` against ``rules`` alone."""
    return CommandPolicy(CommandControl(rules=tuple(rules), unresolved=unresolved)).evaluate(
        line, scope)
