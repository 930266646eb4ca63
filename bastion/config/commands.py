"""The ``[[commands]]`` rules and ``[command_control]``: read, validated, regexes compiled.

Rule regexes are compiled with RE2 (PyPI ``google-re2``): matching takes time linear in the
command's length whatever the pattern, so neither a careless rule nor a hostile command line
can make the bastion backtrack for minutes. A pattern RE2 does not support (back-references,
look-around) is a config error naming the rule and its line.
"""

from __future__ import annotations

from typing import Any

import re2

from bastion.config.model import GROUP_NAME, LOGIN_NAME, TARGET_NAME, CommandControl, CommandRule
from bastion.config.reader import Table
from bastion.errors import ConfigError

ACTIONS = ("deny", "approve", "warn", "allow")
UNRESOLVED_ACTIONS = ("deny", "approve", "warn")
UNRESOLVED_PATTERN = "deny|approve|warn"
UNRESOLVED_WHAT = '"deny", "approve" or "warn"'
RULE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"
_COMMAND_GLOB = r"[^/\s|]{1,128}(\|[^/\s|]{1,128}){0,31}"
_MAX_REGEX_MEMORY = 8 * 1024 * 1024  # RE2 refuses patterns whose program would need more
_MAX_MESSAGE = 300


def compile_rule_regex(pattern: str) -> Any:
    """Compile a rule regex with RE2 (linear-time); raises ``re2.error`` if RE2 refuses it."""
    options = re2.Options()
    options.log_errors = False  # the error goes into our one-line message, not to stderr
    options.max_mem = _MAX_REGEX_MEMORY
    return re2.compile(pattern, options)


def parse_command_control(root: Table, target_names: set[str]) -> CommandControl:
    """``[[commands]]`` rules and ``[command_control]`` settings of the whole document."""
    rules = tuple(_rule(t, target_names) for t in root.tables("commands"))
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        if rule.name in seen:
            raise Table({}, ("commands", index), root.source).error(
                "name", f"a rule name not used by another rule ({rule.name!r} appears twice)")
        seen[rule.name] = index
    unresolved = None
    if root.has("command_control"):
        settings = root.table("command_control")
        unresolved = settings.string("unresolved", None, pattern=UNRESOLVED_PATTERN,
                                     what=UNRESOLVED_WHAT)
        settings.done()
    return CommandControl(rules=rules, unresolved=unresolved)


def _rule(t: Table, target_names: set[str]) -> CommandRule:
    name = t.string("name", pattern=RULE_NAME,
                    what="a rule name of letters, digits, '_', '.', ':' or '-'")
    try:
        return _rule_body(t, name, target_names)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (rule {name})") from None


def _rule_body(t: Table, name: str, target_names: set[str]) -> CommandRule:
    action = t.string("action", pattern="|".join(ACTIONS),
                      what='"deny", "approve", "warn" or "allow"')
    command = t.string("command", None, pattern=_COMMAND_GLOB,
                       what='a command name such as "rm" or "reboot|halt" (basenames, no "/"; '
                            'glob characters * ? [] allowed)')
    regex = t.string("regex", None, what="a regular expression (RE2 syntax)")
    options = t.strings("options", (), pattern=r"--?[A-Za-z0-9?][A-Za-z0-9_-]*",
                        what='a list of options such as ["-r", "-f"] or ["--force"]')
    args = t.strings("args", (), pattern=r"[^\x00-\x1f]{1,256}",
                     what='a list of argument patterns such as ["stop|restart"]')
    if (command is None) == (regex is None):
        raise t.error("command", 'either "command" or "regex" (exactly one of them)')
    if regex is not None:
        if options or args:
            raise t.error("options", '"options" and "args" only with "command", not "regex"')
        try:
            compile_rule_regex(regex)
        except re2.error as exc:
            raise t.error("regex", f"a regular expression RE2 accepts ({_re2_reason(exc)})",
                          regex) from None
    targets = t.strings("targets", (), pattern=rf"\*|{TARGET_NAME}",
                        what='a list of target names or "*"')
    for target in targets:
        if target != "*" and target not in target_names:
            raise t.error("targets", f'names of [[targets]] or "*" (no target is called '
                          f"{target!r})")
    rule = CommandRule(
        name=name, action=action, command=command, options=options, args=args, regex=regex,
        targets=targets,
        groups=t.strings("groups", (), pattern=GROUP_NAME, what="a list of group names"),
        logins=t.strings("logins", (), pattern=rf"\*|{LOGIN_NAME}",
                         what='a list of login names or "*"'),
        users=t.strings("users", (), pattern=r"[^\x00-\x1f]{1,256}",
                        what="a list of user names"),
        message=t.string("message", "", pattern=rf"[^\x00-\x1f\x7f]{{0,{_MAX_MESSAGE}}}",
                         what=f"one line of at most {_MAX_MESSAGE} printable characters"),
        line=t.source.line_of(t.path),
    )
    t.done()
    return rule


def _re2_reason(exc: Exception) -> str:
    detail = exc.args[0] if exc.args else exc
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    return str(detail)
