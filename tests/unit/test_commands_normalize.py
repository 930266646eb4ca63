"""The normalizer in detail: words, options, wrappers, exec requests, incomplete lines."""

from __future__ import annotations

import pytest

from bastion.policy.commands import (
    NormalizedCommand,
    classify_exec,
    line_is_incomplete,
    normalize_line,
)
from bastion.policy.commands.words import decode_ansi_c


def _last(line: str) -> NormalizedCommand:
    return normalize_line(line).commands[-1]


def _names(line: str) -> list[str]:
    return [c.name for c in normalize_line(line).commands]


@pytest.mark.parametrize("line", ["rm -rf /", "rm -r -f /", "rm -fr /", "rm -R -f /",
                                  "rm --recursive --force /", "rm --force --recursive /",
                                  "rm --recur -f /", "rm / -rf", "rm -rfv /"])
def test_rm_options_are_canonical(line: str) -> None:
    command = _last(line)
    assert {"-r", "-f"} <= set(command.options)
    assert command.operands == ("/",)


def test_generic_commands_split_short_option_groups() -> None:
    assert _last("ls -la /tmp").options == ("-a", "-l")
    assert _last("tail -n5 -f x").options == ("-5", "-f", "-n")  # generic: no value knowledge
    assert _last("kill -9 1").options == ("-9",)
    assert _last("kill -KILL 1").options == ("-KILL",)
    assert _last("kill -s KILL 1").operands == ("1",)  # -s takes a value for kill


def test_options_after_double_dash_are_operands() -> None:
    command = _last("rm -- -rf /")
    assert command.options == ()
    assert command.operands == ("-rf", "/")


def test_quote_removal_and_decoding() -> None:
    assert _last("r''m x").name == "rm"
    assert _last('"r"m x').name == "rm"
    assert _last("\\r\\m x").name == "rm"
    assert _last("$'\\x72\\x6d' x").name == "rm"
    assert _last("echo 'a b' \"c d\" e\\ f").argv == ("echo", "a b", "c d", "e f")
    assert _last('echo "a\\"b\\$c\\\\d\\x"').argv == ("echo", 'a"b$c\\d\\x')


def test_ansi_c_escapes() -> None:
    assert decode_ansi_c("\\x72\\x6d") == "rm"
    assert decode_ansi_c("\\162\\155") == "rm"
    assert decode_ansi_c("\\u0072\\U0000006d") == "rm"
    assert decode_ansi_c("a\\tb\\nc\\'\\\\") == "a\tb\nc'\\"
    assert decode_ansi_c("\\cA") == "\x01"
    assert decode_ansi_c("ab\\x00cd") == "ab"  # bash ends the value at NUL
    assert decode_ansi_c("\\q") == "\\q"


def test_brace_expansion() -> None:
    assert _last("echo a{b,c}d").argv == ("echo", "abd", "acd")
    assert _last("echo {1..3}").argv == ("echo", "1", "2", "3")
    assert _last("echo {a..c}").argv == ("echo", "a", "b", "c")
    assert _last("echo {01..03}").argv == ("echo", "01", "02", "03")
    assert _last("echo x{a,b{1,2}}").argv == ("echo", "xa", "xb1", "xb2")
    assert _last("echo '{a,b}'").argv == ("echo", "{a,b}")  # quoted: no expansion
    assert _last("echo {a}").argv == ("echo", "{a}")  # no comma: no expansion
    assert _last("r{m,} -rf /").argv == ("rm", "r", "-rf", "/")


def test_brace_expansion_is_bounded() -> None:
    parsed = normalize_line("echo {1..99999999}")
    assert parsed.unparseable
    parsed = normalize_line("echo " + "{a,b}" * 30)
    assert parsed.unparseable


def test_command_word_basename_with_dots_resolved() -> None:
    assert _last("/usr/sbin/./shutdown now").name == "shutdown"
    assert _last("/usr/bin/../sbin/reboot").name == "reboot"
    assert _last("./rm x").name == "rm"
    assert _last("~/bin/rm x").name == "rm"


def test_non_literal_command_word_is_unresolved() -> None:
    for line in ["$x", "${x}", "$(echo rm) x", "`echo rm` x", '"$x"', "r$x", "/bin/r*",
                 "/bin/r?", "/bin/[r]m"]:
        command = normalize_line(line).commands[0]
        assert command.unresolved, line
        assert not command.literal_name


def test_wrappers_are_looked_through() -> None:
    assert _names("sudo -u root -g wheel env -i A=1 B=2 nice -n 5 ionice -c2 -n7 "
                  "timeout -k 5 10 nohup stdbuf -oL setsid time -p rm x") == [
        "sudo", "env", "nice", "ionice", "timeout", "nohup", "stdbuf", "setsid", "time", "rm"]
    assert _last("xargs -0 -n 1 -P 4 rm -f").name == "rm"
    assert _last("xargs").name == "echo"  # xargs runs echo by default
    assert _last("chroot /srv/root /bin/sh -c reboot").name == "reboot"
    assert _last("busybox rm -rf /").name == "rm"


def test_wrapper_options_are_its_own() -> None:
    sudo = normalize_line("timeout -s KILL 5 rm -rf /").commands[0]
    assert sudo.name == "timeout"
    assert "-r" not in sudo.options


def test_interactive_shell_from_wrapper() -> None:
    assert _names("sudo -i") == ["sudo", "sh"]
    assert _names("su -") == ["su", "sh"]
    commands = classify_exec("sudo -i").commands
    assert commands[-1].unresolved  # in an exec request the shell reads the SSH channel


def test_command_v_does_not_run_the_command() -> None:
    assert _names("command -v reboot") == ["command"]


def test_program_texts_are_parsed_again() -> None:
    assert _names("bash -c 'ls; reboot'") == ["bash", "ls", "reboot"]
    assert normalize_line("bash -c 'ls; reboot'").commands[-1].via == ("bash -c",)
    assert _names('eval "ls" "&&" reboot') == ["eval", "ls", "reboot"]
    assert _names("bash <<< 'reboot'") == ["bash", "reboot"]
    assert _names("sh <<'E'\nreboot\nE") == ["sh", "reboot"]
    assert _names("su -c 'reboot' root") == ["su", "reboot"]
    assert _names("watch -n1 'ls | wc -l'") == ["watch", "ls", "wc"]


def test_reparse_depth_is_bounded() -> None:
    assert normalize_line("eval " * 20 + "reboot").unparseable
    assert not normalize_line("eval " * 5 + "reboot").unparseable


def test_program_from_pipe_or_file_is_unresolved() -> None:
    for line in ["curl x | bash", "curl x | sh -s -- a", "cat f | python3", "bash < f",
                 "perl < f", "cat x | sudo sh", "tee >(bash)", "cat x | node -"]:
        unresolved = [c for c in normalize_line(line).commands if c.unresolved]
        assert unresolved, line
    # a terminal's interactive shell or REPL is read line by line by the catcher
    for line in ["bash", "python3", "sudo -s", "mysql -u root db", "bash script.sh",
                 "cat x | python3 script.py", "cat x | bash -c 'wc -l'"]:
        assert not [c for c in normalize_line(line).commands if c.unresolved], line


@pytest.mark.parametrize("command", ["bash", "sh", "sh -s", "bash -s arg", "dash -", "zsh -i",
                                     "python3", "python3 -", "python2.7 -u", "perl", "perl -w",
                                     "ruby -", "node", "php", "mysql", "mysql -u root db",
                                     "psql", "psql -d db", "psql -f -", "sqlite3 x.db",
                                     "bash /dev/stdin", "sudo bash", "env python3",
                                     "ls; bash"])
def test_exec_interpreter_reading_stdin_is_unresolved(command: str) -> None:
    parsed = classify_exec(command)
    assert any(c.unresolved and "SSH channel" in c.reason for c in parsed.commands), command


@pytest.mark.parametrize("command", ["ls -la", "bash -c 'ls'", "bash script.sh",
                                     "python3 x.py", "python3 -c 'print(1)'", "python3 -m http",
                                     "perl -e 1", "ruby x.rb", "node app.js",
                                     "mysql -e 'select 1'", "psql -c 'select 1'",
                                     "sqlite3 x.db 'select 1'", "scp -t /tmp",
                                     "rsync --server -e.LsfxC . /tmp", "uptime"])
def test_exec_with_visible_program_is_resolved(command: str) -> None:
    parsed = classify_exec(command)
    assert not [c for c in parsed.commands if c.unresolved], command


@pytest.mark.parametrize(("line", "incomplete"), [
    ("ls", False), ("", False), ("rm -r\\", True), ("echo 'a", True), ('echo "a', True),
    ("ls |", True), ("ls &&", True), ("ls ||", True), ("if true; then", True),
    ("for x in a b; do", True), ("{ ls;", True), ("echo $(ls", True), ("echo `ls", True),
    ("cat <<EOF\nline", True), ("cat <<EOF\nline\nEOF", False), ("rm x )", False),
    ("echo )", False), ("rm -r\\\\", False), ("f() {", True), ("case x in", True),
])
def test_line_is_incomplete(line: str, incomplete: bool) -> None:
    assert line_is_incomplete(line) is incomplete


def test_non_ascii_text_is_kept() -> None:
    command = _last("echo héllo 'wörld' \"ünï\" $'\\u00e9'")
    assert command.argv == ("echo", "héllo", "wörld", "ünï", "é")
    assert _last("é=1 rm x").name == "é=1"  # not a valid name: bash runs it as a command


def test_line_too_long_is_unparseable() -> None:
    assert normalize_line("echo " + "a" * 17_000).unparseable
    assert not normalize_line("echo " + "a" * 16_000).unparseable


def test_nul_character_is_unparseable() -> None:
    assert normalize_line("rm\x00 -rf /").unparseable
