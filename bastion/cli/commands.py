"""``bastion check-command``: what the command rules would do with a line, before deploying them.

Exit status: 0 the command would run (allow or warn), 1 it would be denied, 3 it would wait for
an approver, 2 the config or the arguments are wrong. Scripts and tests rely on these.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from bastion.cli.options import config_option
from bastion.config import load_config
from bastion.config.model import Config
from bastion.policy.commands import CommandDecision, CommandPolicy, CommandScope, Verdict

EXIT_FOR = {Verdict.ALLOW: 0, Verdict.WARN: 0, Verdict.DENY: 1, Verdict.APPROVE: 3}


@click.command("check-command")
@config_option
@click.option("--target", "-t", required=True, help="The target the command runs on.")
@click.option("--login", "-l", required=True, help="The login on the target.")
@click.option("--user", "-u", required=True, help="The bastion user typing the command.")
@click.option("--group", "-g", "groups", multiple=True,
              help="A group of the user (repeat; a [[users]] entry's groups are added).")
@click.option("--exec", "exec_request", is_flag=True,
              help="Judge LINE as an exec request (ssh host -- LINE): stdin is not visible.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.argument("line")
def check_command(config_path: str, target: str, login: str, user: str,
                  groups: tuple[str, ...], exec_request: bool, as_json: bool,
                  line: str) -> None:
    """Show how LINE is normalized, which rules match and the verdict ('-': read stdin)."""
    config = load_config(config_path)
    if line == "-":
        line = sys.stdin.read()
    scope = CommandScope(target=target, login=login, user=user,
                         groups=_groups(config, user, groups))
    policy = CommandPolicy.from_config(config)
    decision = (policy.evaluate_exec(line, scope) if exec_request
                else policy.evaluate(line, scope))
    if as_json:
        click.echo(json.dumps(_as_json(decision, scope, exec_request, policy.active(scope))))
    else:
        _print(decision, scope, policy.active(scope))
    sys.exit(EXIT_FOR[decision.verdict])


def _groups(config: Config, user: str, given: tuple[str, ...]) -> tuple[str, ...]:
    known = next((u.groups for u in config.users if u.name == user), ())
    return tuple(dict.fromkeys((*given, *known)))


def _print(decision: CommandDecision, scope: CommandScope, active: bool) -> None:
    click.echo(f"scope: target {_show(scope.target)}, login {_show(scope.login)}, "
               f"user {_show(scope.user)}, groups "
               f"{', '.join(_show(g) for g in scope.groups) or '(none)'}")
    if not active:
        click.echo("command control: no rule applies here and `unresolved` is not set: "
                   "every line is allowed")
    if decision.unparseable:
        click.echo("line: cannot be parsed")
    click.echo("commands:" if decision.commands else "commands: (none)")
    for number, command in enumerate(decision.commands, start=1):
        details = [f"name {_show(command.name)}"]
        if command.options:
            details.append("options " + " ".join(_show(o) for o in command.options))
        if command.operands:
            details.append("operands " + " ".join(_show(o) for o in command.operands))
        if command.via:
            details.append("via " + " > ".join(_show(v) for v in command.via))
        click.echo(f"  {number}. {_show(command.text)}")
        click.echo(f"     {'; '.join(details)}")
        if command.unresolved:
            click.echo(f"     unresolved: {command.reason}")
    click.echo("rules matched:" if decision.matched else "rules matched: (none)")
    for match in decision.matched:
        message = f": {_show(match.message)}" if match.message else ""
        click.echo(f"  {match.rule} ({match.action.value}) on {_show(match.command)}{message}")
    summary = f"verdict: {decision.verdict.value} ({decision.reason})"
    click.echo(f"{summary}: {decision.message}" if decision.message else summary)


def _as_json(decision: CommandDecision, scope: CommandScope, exec_request: bool,
             active: bool) -> dict[str, Any]:
    return {
        "verdict": decision.verdict.value,
        "rule": decision.rule,
        "message": decision.message,
        "unresolved": decision.unresolved,
        "unparseable": decision.unparseable,
        "exec": exec_request,
        "active": active,
        "scope": {"target": scope.target, "login": scope.login, "user": scope.user,
                  "groups": list(scope.groups)},
        "commands": [{"name": c.name, "text": c.text, "argv": list(c.argv),
                      "options": list(c.options), "operands": list(c.operands),
                      "via": list(c.via), "unresolved": c.unresolved, "reason": c.reason}
                     for c in decision.commands],
        "matched": [{"rule": m.rule, "action": m.action.value, "message": m.message,
                     "command": m.command} for m in decision.matched],
    }


def _show(text: str) -> str:
    """Text safe for a terminal: control and non-printable characters escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
