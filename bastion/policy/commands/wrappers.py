"""Commands that run another command: ``sudo``, ``env``, ``nice``, ``xargs``, ``su -c``...

``unwrap`` reads a wrapper's own options the way the wrapper does and says what it runs: more
words (``sudo -u root rm -rf /`` runs ``rm -rf /``), a program text for a shell (``su -c 'rm
-rf /'``, ``watch rm -rf /``, ``sudo -s cmd``), or an interactive shell (``sudo -i``, ``su``,
``chroot DIR``). An option a table does not know is taken as a flag: the next word then counts
as the command, the stricter reading when rules name commands.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from bastion.policy.commands.options import OptionTable
from bastion.policy.commands.words import Word, join_words


@dataclass(frozen=True)
class WrapperSpec:
    """How one wrapper spells its options and where its command starts."""

    short_values: str = ""  # short options that take a value
    long_values: frozenset[str] = frozenset()  # long options that take a value
    positionals: int = 0  # words before the command (timeout DURATION, chroot DIR)
    assignments: bool = False  # VAR=value words before the command (env, sudo)
    shell_options: frozenset[str] = frozenset()  # options whose value is a program (su -c)
    shell_if: frozenset[str] = frozenset()  # options that make it run its words via a shell
    stops: frozenset[str] = frozenset()  # options that mean no command runs (command -v)
    no_command_shell: bool = False  # no command: it starts an interactive shell
    join_shell: bool = False  # its words are joined and run by sh -c (watch, ssh)
    unless_exec: frozenset[str] = frozenset()  # options that turn join_shell off (watch -x)
    permute: bool = False  # options may follow operands (su - root -c cmd)
    default: tuple[str, ...] = ()  # the command when none is given (xargs: echo)
    open_args: bool = False  # more arguments arrive at run time (xargs reads them from stdin)


def _spec(short_values: str = "", long_values: tuple[str, ...] = (), **kw: object) -> WrapperSpec:
    return WrapperSpec(short_values=short_values, long_values=frozenset(long_values),
                       **kw)  # type: ignore[arg-type]


WRAPPERS: dict[str, WrapperSpec] = {
    "sudo": _spec("ugCDhprtURT", ("--user", "--group", "--close-from", "--chdir", "--host",
                                   "--prompt", "--role", "--type", "--other-user",
                                   "--command-timeout", "--chroot"),
                  assignments=True, shell_if=frozenset({"-s", "-i", "--shell", "--login"}),
                  no_command_shell=True),
    "doas": _spec("uC", no_command_shell=True, shell_if=frozenset({"-s"}),
                  stops=frozenset({"-C", "-L"})),
    "env": _spec("uCSP", ("--unset", "--chdir", "--split-string", "--default-signal",
                         "--ignore-signal", "--block-signal"), assignments=True,
                 shell_options=frozenset({"-S", "--split-string"})),
    "nohup": _spec(),
    "timeout": _spec("sk", ("--signal", "--kill-after"), positionals=1),
    "command": _spec(stops=frozenset({"-v", "-V"})),
    "builtin": _spec(),
    "exec": _spec("a"),
    "nice": _spec("n", ("--adjustment",)),
    "ionice": _spec("cnp", ("--class", "--classdata", "--pid", "--pgid", "--uid"),
                    stops=frozenset({"-p", "--pid", "-P", "--pgid", "-u", "--uid"})),
    "xargs": _spec("adEeIiLlnPs", ("--arg-file", "--delimiter", "--eof", "--replace",
                                   "--max-lines", "--max-args", "--max-procs", "--max-chars",
                                   "--process-slot-var"),
                   default=("echo",), open_args=True),
    "busybox": _spec(),
    "time": _spec("fo", ("--format", "--output")),
    "stdbuf": _spec("ioe", ("--input", "--output", "--error")),
    "setsid": _spec(),
    "chroot": _spec("", ("--userspec", "--groups"), positionals=1, no_command_shell=True),
    "su": _spec("cgGsw", ("--command", "--session-command", "--group", "--supp-group",
                          "--shell", "--whitelist-environment"),
                shell_options=frozenset({"-c", "--command", "--session-command"}),
                no_command_shell=True, permute=True),
    "runuser": _spec("cgGsuw", ("--command", "--session-command", "--group", "--supp-group",
                                "--shell", "--user", "--whitelist-environment"),
                     shell_options=frozenset({"-c", "--command", "--session-command"}),
                     no_command_shell=True),
    "sg": _spec("c", shell_options=frozenset({"-c"}), positionals=1, join_shell=True),
    "watch": _spec("ndqg", ("--interval", "--differences", "--equexit", "--chgexit"),
                   join_shell=True, unless_exec=frozenset({"-x", "--exec"})),
    "flock": _spec("wEcCoc", ("--timeout", "--wait", "--conflict-exit-code", "--command"),
                   positionals=1, shell_options=frozenset({"-c", "--command"})),
    "unbuffer": _spec(),
    "taskset": _spec("", (), positionals=1),
    "chrt": _spec("TPD", positionals=1),
    "numactl": _spec("iNmCpP", ("--interleave", "--cpunodebind", "--membind",
                                "--physcpubind", "--preferred")),
    "prlimit": _spec("p", ("--pid",)),
    "strace": _spec("oeEIOpPsSuUXb", ("--output", "--user", "--signal")),
    "ltrace": _spec("oeEnpsSu"),
    "script": _spec("cEIOBTt", ("--command", "--echo", "--log-in", "--log-out", "--log-io",
                                "--log-timing", "--timing"),
                    shell_options=frozenset({"-c", "--command"})),
    "ssh": _spec("BbcDEeFIiJLlmOoPpQRSWw", join_shell=True, no_command_shell=True,
                 positionals=1),
    "nsenter": _spec("tmuinpUCSGrwT", ("--target", "--user-parent", "--setuid", "--setgid",
                                         "--root", "--wd")),
    "unshare": _spec("", ("--propagation", "--setgroups", "--map-user", "--map-group")),
    "systemd-run": _spec("pEuM", ("--property", "--setenv", "--unit", "--machine",
                                  "--description", "--slice", "--uid", "--gid",
                                  "--working-directory", "--on-calendar")),
    "coproc": _spec(),
    "pkexec": _spec("", ("--user",)),
    "fakeroot": _spec("ils", ("--lib", "--faked", "-s", "-i")),
    "eatmydata": _spec(),
    "catchsegv": _spec(),
    "faketime": _spec("", (), positionals=1),
    "proxychains": _spec("f"), "proxychains4": _spec("f"),
    "torsocks": _spec("uapP"),
    "firejail": _spec(),
    "cgexec": _spec("g"),
    "dbus-run-session": _spec(),
    "screen": _spec("SceHhLpRrTtXx", ("--",)),
}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Inner:
    """What a wrapper runs: words, a program text for a shell, or an interactive shell."""

    label: str
    argv: tuple[Word, ...] = ()
    program: Word | None = None
    interactive_shell: bool = False
    open_args: bool = False
    notes: tuple[str, ...] = field(default=())


def wrapper_options(name: str) -> OptionTable:
    """How the wrapper ``name`` spells its own options (which ones take a value)."""
    spec = WRAPPERS.get(name, WrapperSpec())
    return OptionTable(short_values=spec.short_values, long_values=spec.long_values)


def unwrap(name: str, args: Sequence[Word]) -> Inner | None:
    """What the wrapper ``name`` runs with arguments ``args``; None if it runs nothing."""
    spec = WRAPPERS.get(name)
    if spec is None:
        return None
    seen: set[str] = set()
    program: Word | None = None
    rest: list[Word] = []
    i = 0
    positionals = spec.positionals
    while i < len(args):
        word, text = args[i], args[i].text
        i += 1
        if text == "--" and word.literal:
            rest.extend(args[i:])
            break
        if word.literal and text.startswith("-") and len(text) > 1 and not (
                name == "su" and text == "-"):
            key, eq, value = text.partition("=") if text.startswith("--") else (text, "", "")
            if text.startswith("--"):
                seen.add(key)
                if key in spec.long_values and not eq:
                    value, i = (args[i].text if i < len(args) else ""), i + 1
                    if key in spec.shell_options and i <= len(args):
                        program = args[i - 1]
                elif key in spec.shell_options and eq:
                    program = Word(value, literal=word.literal)
                continue
            for j, letter in enumerate(text[1:]):
                seen.add("-" + letter)
                if letter in spec.short_values:
                    attached = text[j + 2:]
                    if attached:
                        value_word = Word(attached, literal=word.literal)
                    else:
                        value_word = args[i] if i < len(args) else Word.of("")
                        i += 1
                    if "-" + letter in spec.shell_options:
                        program = value_word
                    break
            continue
        if name == "su" and text == "-":
            continue
        if spec.assignments and word.literal and _ASSIGNMENT.match(text):
            continue
        if positionals > 0:
            positionals -= 1
            continue
        if spec.permute:
            continue  # su's operand is a user name; options may still follow
        rest.extend(args[i - 1:])
        break
    if seen & spec.stops:
        return None
    label = name
    if program is not None:
        if name == "env":  # env -S 'rm -rf' /: the split string and the words after it
            return Inner(label="env -S", program=join_words([program, *rest]))
        return Inner(label=f"{label} -c", program=program)
    if not rest:
        if spec.default:
            return Inner(label=label, argv=tuple(Word.of(w) for w in spec.default),
                         open_args=spec.open_args)
        if spec.no_command_shell:
            return Inner(label=label, interactive_shell=True)
        return None
    if name == "coproc" and len(rest) > 1 and rest[1].text == "{":
        rest = rest[1:]  # coproc NAME { ...; }: NAME names the coprocess
    if (spec.join_shell and not (seen & spec.unless_exec)) or (seen & spec.shell_if):
        return Inner(label=f"{label} (shell)", program=join_words(rest))
    return Inner(label=label, argv=tuple(rest), open_args=spec.open_args)
