"""Rule matching: scope, strictness (deny > approve > warn > allow), regexes, unknown arguments."""

from __future__ import annotations

from commands_support import SCOPE, rule

from bastion.config.model import CommandControl
from bastion.policy.commands import CommandPolicy, CommandScope, Verdict, evaluate_rules


def test_strictest_matching_rule_wins_in_any_order() -> None:
    rules = [rule(name="a", action="allow", command="rm"),
             rule(name="w", action="warn", command="rm"),
             rule(name="p", action="approve", command="rm", options=["-r"]),
             rule(name="d", action="deny", command="rm", options=["-r", "-f"])]
    for ordering in (rules, list(reversed(rules)), rules[1:] + rules[:1]):
        assert evaluate_rules(ordering, "rm x", SCOPE).verdict is Verdict.WARN
        assert evaluate_rules(ordering, "rm -r x", SCOPE).verdict is Verdict.APPROVE
        decision = evaluate_rules(ordering, "rm -rf x", SCOPE)
        assert decision.verdict is Verdict.DENY
        assert decision.rule == "d"
        assert {m.rule for m in decision.matched} == {"a", "w", "p", "d"}


def test_allow_never_short_circuits_a_deny() -> None:
    rules = [rule(name="ok", action="allow", regex=".*"),
             rule(name="no", action="deny", command="reboot")]
    decision = evaluate_rules(rules, "ls; reboot", SCOPE)
    assert decision.verdict is Verdict.DENY
    assert decision.rule == "no"
    assert evaluate_rules(rules, "ls", SCOPE).verdict is Verdict.ALLOW


def test_every_command_of_the_line_is_checked() -> None:
    rules = [rule(name="w", action="warn", command="sudo"),
             rule(name="d", action="deny", command="reboot")]
    decision = evaluate_rules(rules, "sudo ls && (echo $(reboot))", SCOPE)
    assert decision.verdict is Verdict.DENY
    assert [m.rule for m in decision.matched] == ["w", "d"]


def test_scope_limits_rules() -> None:
    rules = [rule(name="t", action="deny", command="a", targets=["web01"]),
             rule(name="l", action="deny", command="b", logins=["root"]),
             rule(name="u", action="deny", command="c", users=["bob"]),
             rule(name="g", action="deny", command="d", groups=["dba", "admins"]),
             rule(name="s", action="deny", command="e", targets=["*"], logins=["*"])]
    alice = CommandScope("db01", "deploy", "alice", ("ops",))
    bob = CommandScope("web01", "root", "bob", ("admins",))
    for name in "abcd":
        assert evaluate_rules(rules, name, alice).verdict is Verdict.ALLOW, name
        assert evaluate_rules(rules, name, bob).verdict is Verdict.DENY, name
    assert evaluate_rules(rules, "e", alice).verdict is Verdict.DENY


def test_args_patterns_match_operands() -> None:
    rules = [rule(name="stop", action="approve", command="systemctl", args=["stop|restart"]),
             rule(name="etc", action="deny", command="rm", args=["/etc/*"]),
             rule(name="both", action="deny", command="cp", args=["/etc/shadow", "/tmp/*"])]
    assert evaluate_rules(rules, "systemctl stop nginx", SCOPE).verdict is Verdict.APPROVE
    assert evaluate_rules(rules, "systemctl --now restart x", SCOPE).verdict is Verdict.APPROVE
    assert evaluate_rules(rules, "systemctl status stop", SCOPE).verdict is Verdict.APPROVE
    assert evaluate_rules(rules, "systemctl start nginx", SCOPE).verdict is Verdict.ALLOW
    assert evaluate_rules(rules, "rm -f /etc/passwd", SCOPE).verdict is Verdict.DENY
    assert evaluate_rules(rules, "rm -f /etcx", SCOPE).verdict is Verdict.ALLOW
    assert evaluate_rules(rules, "cp /etc/shadow /tmp/x", SCOPE).verdict is Verdict.DENY
    assert evaluate_rules(rules, "cp /etc/shadow /root/x", SCOPE).verdict is Verdict.ALLOW


def test_command_patterns() -> None:
    rules = [rule(name="mkfs", action="deny", command="mkfs*"),
             rule(name="power", action="deny", command="halt|poweroff")]
    assert evaluate_rules(rules, "mkfs.ext4 /dev/sda1", SCOPE).verdict is Verdict.DENY
    assert evaluate_rules(rules, "/sbin/poweroff", SCOPE).verdict is Verdict.DENY
    assert evaluate_rules(rules, "halted", SCOPE).verdict is Verdict.ALLOW


def test_rule_options_are_canonical_per_command() -> None:
    rules = [rule(name="rec", action="deny", command="rm|chmod", options=["--recursive"])]
    assert evaluate_rules(rules, "rm -r x", SCOPE).verdict is Verdict.DENY
    assert evaluate_rules(rules, "chmod -R 777 /", SCOPE).verdict is Verdict.DENY
    assert evaluate_rules(rules, "chmod 777 /", SCOPE).verdict is Verdict.ALLOW


def test_regex_searches_the_normalized_text() -> None:
    rules = [rule(name="dd", action="deny", regex=r"^dd .*of=/dev/sd")]
    assert evaluate_rules(rules, "d''d if=/dev/zero of=/dev/sda", SCOPE).verdict is Verdict.DENY
    assert evaluate_rules(rules, "sudo dd of=/dev/sdb", SCOPE).verdict is Verdict.DENY
    assert evaluate_rules(rules, "echo dd of=/dev/sda", SCOPE).verdict is Verdict.ALLOW


def test_unknown_argument_that_could_match_is_unresolved() -> None:
    rules = [rule(name="rf", action="deny", command="rm", options=["-r", "-f"])]
    for line in ["rm $opts /", "rm -r $x", "echo -rf | xargs rm", "rm *", "rm -r \"$x\""]:
        decision = evaluate_rules(rules, line, SCOPE, unresolved="approve")
        assert decision.verdict is Verdict.APPROVE, line
        assert decision.unresolved
        assert "could make rule rf match" in decision.message
    for line in ["rm -- $x", "rm ./*", "ls $x"]:
        assert evaluate_rules(rules, line, SCOPE).verdict is Verdict.ALLOW, line


def test_unparseable_line_gets_strictest_action_in_scope() -> None:
    rules = [rule(name="w", action="warn", command="x"),
             rule(name="d", action="deny", command="y", targets=["db01"])]
    decision = evaluate_rules(rules, "echo 'open", SCOPE, unresolved="warn")
    assert decision.unparseable
    assert decision.verdict is Verdict.WARN  # the deny rule is not in scope on web01
    assert decision.message.startswith("warning: the line cannot be checked")


def test_rule_message_is_shown() -> None:
    rules = [rule(name="no-reboot", action="deny", command="reboot", message="ask the on-call")]
    decision = evaluate_rules(rules, "reboot", SCOPE)
    assert decision.message == "denied by rule no-reboot: ask the on-call"
    assert decision.reason == "rule no-reboot"


def test_exec_and_line_share_rules() -> None:
    policy = CommandPolicy(CommandControl(
        rules=(rule(name="d", action="deny", command="reboot"),), unresolved="approve"))
    assert policy.evaluate_exec("sudo reboot", SCOPE).verdict is Verdict.DENY
    assert policy.evaluate_exec("bash", SCOPE).verdict is Verdict.APPROVE
    assert policy.evaluate("bash", SCOPE).verdict is Verdict.ALLOW  # interactive: line by line


def test_target_setting_overrides_global_unresolved() -> None:
    policy = CommandPolicy(CommandControl(rules=(), unresolved="warn"),
                           unresolved_by_target={"db01": "deny"})
    web = CommandScope("web01", "root", "bob")
    db = CommandScope("db01", "root", "bob")
    assert policy.evaluate("$x", web).verdict is Verdict.WARN
    assert policy.evaluate("$x", db).verdict is Verdict.DENY
    assert policy.active(web) and policy.active(db)
