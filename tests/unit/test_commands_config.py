"""[[commands]] rules and [command_control] in bastion.toml: loaded, and every mistake is one line
naming the file, the line, the key and the rule."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from bastion.config import load_config
from bastion.config.model import Config
from bastion.errors import ConfigError
from bastion.policy.commands import CommandPolicy, CommandScope, Verdict

HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()

BASE = f"""\
[vault]
key_file = "vault.key"

[[targets]]
name = "web01"
host = "127.0.0.1"
host_key = "{HOST_KEY}"

[[targets]]
name = "db01"
host = "127.0.0.1"
host_key = "{HOST_KEY}"
unresolved = "warn"
"""

RULES = """
[command_control]
unresolved = "approve"

[[commands]]
name = "no-rm-rf"
action = "deny"
command = "rm"
options = ["--recursive", "--force"]
message = "not here"

[[commands]]
name = "curl-pipe"
action = "approve"
regex = 'curl .*'
targets = ["db01"]

[[commands]]
name = "ops-may-stop"
action = "allow"
command = "systemctl"
args = ["stop"]
groups = ["ops"]
"""


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "bastion.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return str(info.value)


def test_rules_load_with_lines_and_scopes(tmp_path: Path) -> None:
    config = _load(tmp_path, BASE + RULES)
    rules = config.commands.rules
    assert [r.name for r in rules] == ["no-rm-rf", "curl-pipe", "ops-may-stop"]
    assert rules[0].options == ("--recursive", "--force")
    assert rules[0].line == BASE.count("\n") + 5  # the [[commands]] header line
    assert rules[1].targets == ("db01",)
    assert config.commands.unresolved == "approve"
    assert config.target("db01").unresolved == "warn"  # type: ignore[union-attr]
    assert config.target("web01").unresolved is None  # type: ignore[union-attr]


def test_loaded_rules_evaluate(tmp_path: Path) -> None:
    policy = CommandPolicy.from_config(_load(tmp_path, BASE + RULES))
    web = CommandScope("web01", "root", "bob", ())
    db = CommandScope("db01", "root", "bob", ())
    assert policy.evaluate("rm -fr /", web).verdict is Verdict.DENY
    assert policy.evaluate("curl x", web).verdict is Verdict.ALLOW  # rule scoped to db01
    assert policy.evaluate("curl x", db).verdict is Verdict.APPROVE
    assert policy.evaluate("$x", web).verdict is Verdict.APPROVE  # global unresolved
    assert policy.evaluate("$x", db).verdict is Verdict.WARN  # the target's own setting


def test_no_rules_means_command_control_off(tmp_path: Path) -> None:
    policy = CommandPolicy.from_config(_load(tmp_path, BASE.replace('unresolved = "warn"', "")))
    scope = CommandScope("web01", "root", "bob", ())
    assert not policy.active(scope)
    decision = policy.evaluate("$(echo rm) -rf /", scope)
    assert decision.verdict is Verdict.ALLOW
    assert decision.unresolved  # still reported, for the record


@pytest.mark.parametrize(("change", "expected"), [
    ('action = "deny"', 'commands[0].action: expected "deny", "approve", "warn" or "allow", '
                        'got "block" (rule no-rm-rf)'),
    ("regex = 'curl .*'", "commands[1].regex: expected a regular expression RE2 accepts "
                          "(invalid perl operator: (?=), got \"(?=x)\" (rule curl-pipe)"),
    ('targets = ["db01"]', "commands[1].targets: expected names of [[targets]] or \"*\" "
                           "(no target is called 'db02') (rule curl-pipe)"),
    ('args = ["stop"]', "commands[2].argz: expected no such key here (unknown option) "
                        "(rule ops-may-stop)"),
])
def test_rule_errors_name_line_key_and_rule(tmp_path: Path, change: str, expected: str) -> None:
    broken = {
        'action = "deny"': 'action = "block"',
        "regex = 'curl .*'": "regex = '(?=x)'",
        'targets = ["db01"]': 'targets = ["db02"]',
        'args = ["stop"]': 'argz = ["stop"]',
    }[change]
    text = BASE + RULES.replace(change, broken, 1)
    message = _error(tmp_path, text)
    line = text.splitlines().index(broken) + 1
    assert message == f"{tmp_path / 'bastion.toml'}:{line}: {expected}"


def test_backreference_regex_is_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, BASE + RULES.replace("'curl .*'", r"'(a)\1'"))
    assert "commands[1].regex: expected a regular expression RE2 accepts" in message
    assert message.endswith("(rule curl-pipe)")


@pytest.mark.parametrize(("rule", "expected"), [
    ('name = "x"\naction = "deny"', 'either "command" or "regex"'),
    ('name = "x"\naction = "deny"\ncommand = "rm"\nregex = "rm"', 'either "command" or "regex"'),
    ('name = "x"\naction = "deny"\nregex = "rm"\noptions = ["-r"]',
     '"options" and "args" only with "command"'),
    ('name = "x"\naction = "deny"\ncommand = "/bin/rm"', "a command name such as"),
    ('name = "x"\naction = "deny"\ncommand = "rm"\noptions = ["r"]', "a list of options"),
    ('name = "bad name"\naction = "deny"\ncommand = "rm"', "commands[0].name: expected a rule"),
    ('name = "x"\naction = "deny"\ncommand = "rm"\nmessage = "two\\nlines"', "one line of"),
])
def test_malformed_rules_are_refused(tmp_path: Path, rule: str, expected: str) -> None:
    message = _error(tmp_path, BASE + "\n[[commands]]\n" + rule + "\n")
    assert expected in message, message
    assert message.startswith(f"{tmp_path / 'bastion.toml'}:")


def test_duplicate_rule_names_are_refused(tmp_path: Path) -> None:
    rule = '\n[[commands]]\nname = "x"\naction = "deny"\ncommand = "rm"\n'
    message = _error(tmp_path, BASE + rule + rule)
    assert "commands[1].name: expected a rule name not used by another rule" in message


@pytest.mark.parametrize("section", ['[command_control]\nunresolved = "allow"',
                                     '[command_control]\nunresolved = "maybe"',
                                     '[command_control]\nunresolvd = "deny"'])
def test_bad_unresolved_setting_is_refused(tmp_path: Path, section: str) -> None:
    message = _error(tmp_path, BASE + "\n" + section + "\n")
    assert "command_control.unresolv" in message


def test_bad_target_unresolved_is_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, BASE.replace('unresolved = "warn"', 'unresolved = "allow"'))
    assert 'targets[1].unresolved: expected "deny", "approve" or "warn", got "allow"' in message
