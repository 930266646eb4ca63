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
from typing import Any

from bastion.policy.commands.options import OptionTable
from bastion.policy.commands.words import Word, join_words


@dataclass(frozen=True)
class WrapperSpec:
    """How one wrapper spells its options and where its command starts.

    The option lists are complete for each wrapper (from its manual): an option that is in
    none of them makes the command unresolved (it is then read as a flag, to keep looking).
    """

    short_values: str = ""  # short options that take a value (attached or the next word)
    long_values: frozenset[str] = frozenset()  # long options that take a value
    flags: str = ""  # short options without a value
    long_flags: frozenset[str] = frozenset()  # long options without a value
    optional: str = ""  # short options with an optional value, attached only (xargs -i)
    long_optional: frozenset[str] = frozenset()  # long ones, only after "=" (--eof[=X])
    positionals: int = 0  # words before the command (timeout DURATION, chroot DIR)
    assignments: bool = False  # VAR=value words before the command (env, sudo)
    shell_options: frozenset[str] = frozenset()  # options whose value is a program (su -c)
    shell_if: frozenset[str] = frozenset()  # options that make it run its words via a shell
    stops: frozenset[str] = frozenset()  # options that mean no command runs (command -v)
    no_command_shell: bool = False  # no command: it starts an interactive shell
    join_shell: bool = False  # its words are joined and run by sh -c (watch, ssh)
    unless_exec: frozenset[str] = frozenset()  # options that turn join_shell off (watch -x)
    permute: bool = False  # options may follow operands (script FILE -c cmd)
    user_then_shell: bool = False  # su USER ARGS: ARGS go to the user's shell (su, runuser)
    dash_option: bool = False  # a lone "-" is an option (env -, su -)
    numeric: bool = False  # -NUMBER is an option (nice -10)
    equals_only: bool = False  # long options take values only after "=" (firejail)
    opaque: frozenset[str] = frozenset()  # options that run what the line cannot show
    default: tuple[str, ...] = ()  # the command when none is given (xargs: echo)
    open_args: bool = False  # more arguments arrive at run time (xargs reads them from stdin)


def _spec(short_values: str = "", long_values: tuple[str, ...] = (), flags: str = "",
          long_flags: tuple[str, ...] = (), long_optional: tuple[str, ...] = (),
          **kw: Any) -> WrapperSpec:
    for key in ("shell_options", "shell_if", "stops", "unless_exec", "opaque"):
        if key in kw:
            kw[key] = frozenset(kw[key])
    return WrapperSpec(short_values=short_values, long_values=frozenset(long_values),
                       flags=flags, long_flags=frozenset((*long_flags, "--help", "--version")),
                       long_optional=frozenset(long_optional), **kw)


_NAMESPACES = ("--mount", "--uts", "--ipc", "--net", "--pid", "--user", "--cgroup", "--time")
_SU: dict[str, Any] = {
    "short_values": "cgGsw",
    "long_values": ("--command", "--session-command", "--group", "--supp-group", "--shell",
                    "--whitelist-environment"),
    "flags": "flmpPhV",
    "long_flags": ("--fast", "--login", "--preserve-environment", "--pty"),
    "shell_options": ("-c", "--command", "--session-command"), "no_command_shell": True,
    "permute": True, "user_then_shell": True, "dash_option": True}
WRAPPERS: dict[str, WrapperSpec] = {
    "sudo": _spec("aCcDgpRrTtUu", ("--user", "--group", "--close-from", "--chdir", "--host",
                                    "--prompt", "--role", "--type", "--other-user",
                                    "--command-timeout", "--chroot", "--auth-type",
                                    "--login-class"),
                  "AbBEeHiKklNnPSsVvh",
                  ("--askpass", "--background", "--bell", "--edit", "--set-home", "--login",
                   "--remove-timestamp", "--reset-timestamp", "--list", "--non-interactive",
                   "--preserve-groups", "--stdin", "--shell", "--validate", "--no-update"),
                  ("--preserve-env",), assignments=True,
                  shell_if=("-s", "-i", "--shell", "--login"), no_command_shell=True),
    "doas": _spec("auC", (), "Lns", no_command_shell=True, shell_if=("-s",),
                  stops=("-C", "-L")),
    "env": _spec("uCSP", ("--unset", "--chdir", "--split-string"), "0iv",
                 ("--null", "--ignore-environment", "--debug", "--list-signal-handling"),
                 ("--default-signal", "--ignore-signal", "--block-signal"), assignments=True,
                 shell_options=("-S", "--split-string"), dash_option=True),
    "nohup": _spec(),
    "timeout": _spec("sk", ("--signal", "--kill-after"), "v",
                     ("--preserve-status", "--foreground", "--verbose"), positionals=1),
    "command": _spec("", (), "pvV", stops=("-v", "-V")),
    "builtin": _spec(),
    "exec": _spec("a", (), "cl"),
    "nice": _spec("n", ("--adjustment",), numeric=True),
    "ionice": _spec("cnpPu", ("--class", "--classdata", "--pid", "--pgid", "--uid"), "t",
                    ("--ignore",), stops=("-p", "--pid", "-P", "--pgid", "-u", "--uid")),
    "xargs": _spec("adEILnPs", ("--arg-file", "--delimiter", "--max-args", "--max-procs",
                                "--max-chars", "--process-slot-var"), "0prtxo",
                   ("--null", "--interactive", "--no-run-if-empty", "--verbose", "--exit",
                    "--open-tty", "--show-limits"),
                   ("--eof", "--replace", "--max-lines"), optional="eil",
                   default=("echo",), open_args=True),
    "busybox": _spec("", (), "", ("--list", "--list-full", "--install"),
                     stops=("--list", "--list-full", "--install", "--help")),
    "time": _spec("fo", ("--format", "--output"), "apqvV",
                  ("--append", "--portability", "--quiet", "--verbose")),
    "stdbuf": _spec("ioe", ("--input", "--output", "--error")),
    "setsid": _spec("", (), "cfw", ("--ctty", "--fork", "--wait")),
    "chroot": _spec("", ("--userspec", "--groups"), "", ("--skip-chdir",), positionals=1,
                    no_command_shell=True),
    "su": _spec(**_SU),
    "runuser": _spec(**{**_SU, "short_values": "cgGsuw",
                        "long_values": (*_SU["long_values"], "--user")}),
    "sg": _spec("c", shell_options=("-c",), positionals=1, join_shell=True, dash_option=True),
    "watch": _spec("nq", ("--interval", "--equexit"), "bcCegprtwxhv",
                   ("--beep", "--color", "--no-color", "--errexit", "--chgexit", "--precise",
                    "--no-rerun", "--no-title", "--no-wrap", "--exec"),
                   ("--differences",), optional="d",
                   join_shell=True, unless_exec=("-x", "--exec")),
    "flock": _spec("wEc", ("--timeout", "--wait", "--conflict-exit-code", "--command"),
                   "sxeunoFhV", ("--shared", "--exclusive", "--unlock", "--nonblock", "--nb",
                                 "--close", "--no-fork", "--verbose"),
                   positionals=1, shell_options=("-c", "--command")),
    "unbuffer": _spec("", (), "p"),
    "taskset": _spec("", (), "achV", ("--all-tasks", "--cpu-list"), positionals=1,
                     stops=("-p", "--pid")),
    "chrt": _spec("TPD", ("--sched-runtime", "--sched-period", "--sched-deadline"),
                  "abdfioRrvhV", ("--all-tasks", "--batch", "--deadline", "--fifo", "--idle",
                                  "--other", "--rr", "--reset-on-fork", "--verbose"),
                  positionals=1, stops=("-p", "--pid", "-m", "--max")),
    "numactl": _spec("iNmCpPwcSfLoMI", ("--interleave", "--cpunodebind", "--membind",
                                        "--physcpubind", "--preferred", "--preferred-many",
                                        "--weighted-interleave", "--cpubind", "--shm",
                                        "--file", "--length", "--offset", "--shmmode",
                                        "--shmid"),
                     "labhHs", ("--localalloc", "--all", "--balancing", "--hardware", "--show",
                                "--huge", "--touch", "--strict"),
                     stops=("-H", "--hardware", "-s", "--show")),
    "prlimit": _spec("po", ("--pid", "--output"), "hV", ("--noheadings", "--raw",
                                                        "--verbose"),
                     ("--core", "--data", "--nice", "--fsize", "--sigpending", "--memlock",
                      "--rss", "--nofile", "--msgqueue", "--rtprio", "--stack", "--cpu",
                      "--nproc", "--as", "--locks", "--rttime"),
                     optional="cdefilmnqrstuvxy", stops=("-p", "--pid")),
    "strace": _spec("abeEIoOpPsSuUX", ("--output", "--user", "--signal", "--trace",
                                        "--abbrev", "--raw", "--read", "--write", "--fault",
                                        "--inject", "--status", "--columns", "--env",
                                        "--attach", "--trace-path", "--string-limit",
                                        "--summary-sort-by", "--const-print-style"),
                    "AcCdDfFhiknqrtTvVwxyzZ",
                    ("--follow-forks", "--output-separately", "--summary-only", "--summary",
                     "--daemonize", "--seccomp-bpf", "--no-abbrev", "--summary-wall-clock",
                     "--syscall-times", "--relative-timestamps", "--instruction-pointer",
                     "--stack-trace", "--debug", "--output-append-mode", "--kill-on-exit"),
                    ("--quiet", "--decode-fds", "--verbose", "--timestamps", "--silence")),
    "ltrace": _spec("aADeFlnopsuwx", ("--output", "--library", "--indent", "--align"),
                    "bcCfhiLrStTV", ("--demangle", "--no-signals")),
    "script": _spec("cEBIOTmo", ("--command", "--echo", "--log-in", "--log-out", "--log-io",
                                  "--log-timing", "--logging-format", "--output-limit"),
                    "aefqhV", ("--append", "--return", "--flush", "--force", "--quiet"),
                    ("--timing",), optional="t", shell_options=("-c", "--command"),
                    permute=True, no_command_shell=True, positionals=-1),
    "ssh": _spec("BbcDEeFIiJLlmOoPpQRSWw", (), "46AaCfGgKkMNnqsTtVvXxYy",
                 join_shell=True, no_command_shell=True, positionals=1),
    "nsenter": _spec("tSGW", ("--target", "--setuid", "--setgid", "--wdns"), "aPFZechV",
                     ("--all", "--preserve-credentials", "--no-fork", "--follow-context",
                      "--env", "--join-cgroup", "--keep-caps", "--user-parent"),
                     (*_NAMESPACES, "--root", "--wd"), optional="muinpUCTrw"),
    "unshare": _spec("RwSG", ("--propagation", "--setgroups", "--map-user", "--map-group",
                              "--map-users", "--map-groups", "--root", "--wd", "--setuid",
                              "--setgid", "--monotonic", "--boottime", "--load-interp"),
                     "frchV", ("--fork", "--map-root-user", "--map-current-user",
                               "--map-auto", "--keep-caps"),
                     (*_NAMESPACES, "--kill-child", "--mount-proc"), optional="muinpUCT"),
    "systemd-run": _spec("pEuMHC", ("--property", "--setenv", "--unit", "--machine", "--host",
                                     "--description", "--slice", "--uid", "--gid",
                                     "--working-directory", "--nice", "--on-calendar",
                                     "--on-active", "--on-boot", "--on-startup",
                                     "--on-unit-active", "--on-unit-inactive",
                                     "--path-property", "--socket-property",
                                     "--timer-property", "--service-type", "--capsule"),
                         "rtPSqGdh", ("--user", "--system", "--scope", "--remain-after-exit",
                                      "--pty", "--pipe", "--shell", "--quiet", "--collect",
                                      "--wait", "--no-block", "--no-ask-password",
                                      "--same-dir", "--send-sighup", "--slice-inherit",
                                      "--on-clock-change", "--on-timezone-change"),
                         shell_if=("-S", "--shell"), no_command_shell=False),
    "coproc": _spec(),
    "pkexec": _spec("", ("--user",), "", ("--disable-internal-agent", "--keep-cwd")),
    "fakeroot": _spec("lsib", ("--lib", "--faked"), "uhv", ("--unknown-is-real",)),
    "eatmydata": _spec(),
    "catchsegv": _spec(),
    "faketime": _spec("", ("--date-prog",), "mf", ("--exclude-monotonic", "--disable-shm"),
                      positionals=1),
    "proxychains": _spec("f", (), "q"), "proxychains4": _spec("f", (), "q"),
    "torsocks": _spec("uapP", ("--user", "--pass", "--address", "--port"), "idq6",
                      ("--isolate", "--debug", "--quiet", "--shell"),
                      shell_if=("--shell",), no_command_shell=False),
    "firejail": _spec(equals_only=True),
    "cgexec": _spec("g", (), "h", ("--sticky",)),
    "dbus-run-session": _spec("", ("--config-file", "--dbus-daemon")),
    # screen's own parser: -X/-Q send commands to a running session (not in the line)
    "screen": _spec("SceHhpTtsXQ", ("-Logfile",), "dDmAafilOUvxrRL",
                    ("-ls", "-list", "-wipe", "-fn", "-fa", "-fc", "-ln"),
                    stops=("-ls", "-list", "-wipe", "-v"), opaque=("-X", "-Q")),
}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_SSH_PROGRAMS = frozenset({"remotecommand", "proxycommand", "localcommand",
                           "knownhostscommand"})


@dataclass(frozen=True)
class Inner:
    """What a wrapper runs: words, a program text for a shell, or an interactive shell."""

    label: str
    argv: tuple[Word, ...] = ()
    program: Word | None = None
    interactive_shell: bool = False
    open_args: bool = False
    notes: tuple[str, ...] = field(default=())
    unknown: tuple[str, ...] = ()  # options the spec does not know (or that hide a program)


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
    unknown: list[str] = []
    program: Word | None = None
    hidden: list[Word] = []  # ssh -o ProxyCommand=... / RemoteCommand=...
    rest: list[Word] = []
    operands: list[Word] = []  # permute: every word that is not an option
    i = 0
    positionals = spec.positionals
    while i < len(args):
        word, text = args[i], args[i].text
        i += 1
        if text == "--" and word.literal:
            tail = list(args[i:])
            if spec.permute:
                operands.extend(tail)
            else:  # ssh -- HOST CMD, timeout -- 5 CMD: the positionals still come first
                rest.extend(tail[max(positionals, 0):])
            break
        if word.literal and text == "-" and spec.dash_option:
            continue
        if word.literal and text.startswith("-") and len(text) > 1:
            if spec.numeric and text.lstrip("-").isdigit():
                continue  # nice -10
            value_word: Word | None = None
            key, eq, value = text.partition("=")
            long_form = text.startswith("--") or (name == "screen" and key in _longs(spec))
            if long_form and spec.equals_only:
                seen.add(key)
                continue
            if long_form:
                resolved = _resolve_long(spec, key, prefixes=name != "screen")
                if resolved is None:
                    unknown.append(key)
                    continue
                seen.add(resolved)
                if resolved in spec.long_values:
                    if eq:
                        value_word = Word(value, literal=word.literal)
                    else:
                        value_word = args[i] if i < len(args) else Word.of("")
                        i += 1
                    if resolved in spec.shell_options:
                        program = value_word
                if resolved in spec.opaque:
                    unknown.append(resolved)
                continue
            for j, letter in enumerate(text[1:]):
                option = "-" + letter
                seen.add(option)
                if option in spec.opaque:
                    unknown.append(option)
                if letter in spec.short_values:
                    attached = text[j + 2:]
                    if attached:
                        value_word = Word(attached, literal=word.literal)
                    else:
                        value_word = args[i] if i < len(args) else Word.of("")
                        i += 1
                    if option in spec.shell_options:
                        program = value_word
                    if name == "ssh" and letter == "o":
                        _ssh_option(value_word, hidden, unknown)
                    break
                if letter in spec.optional:
                    break  # the rest of the word is its value
                if letter not in spec.flags:
                    unknown.append(option)
            continue
        if spec.assignments and word.literal and _ASSIGNMENT.match(text):
            continue
        if spec.permute:
            operands.append(word)
            continue
        if positionals > 0:
            positionals -= 1
            continue
        rest.extend(args[i - 1:])
        break
    if seen & spec.stops:
        return None
    label = name
    notes = tuple(unknown)
    if spec.user_then_shell:
        if name == "runuser" and seen & {"-u", "--user"}:
            rest = operands  # runuser -u USER [--] COMMAND ARGS: no shell
        elif program is None and len(operands) > 1:
            # su [-] USER ARGS...: ARGS are the user's shell's (su -- root -c cmd)
            return Inner(label=f"{label} (shell)", argv=(Word.of("sh"), *operands[1:]),
                         unknown=notes)
    if hidden:
        texts = [*hidden, join_words(rest)] if rest else hidden
        return Inner(label=f"{label} (shell)", program=Word(
            "\n".join(w.text for w in texts), literal=all(w.literal for w in texts)),
            unknown=notes)
    if program is not None:
        if name == "env":  # env -S 'rm -rf' /: the split string and the words after it
            return Inner(label="env -S", program=join_words([program, *rest]), unknown=notes)
        return Inner(label=f"{label} -c", program=program, unknown=notes)
    if not rest:
        if spec.default:
            return Inner(label=label, argv=tuple(Word.of(w) for w in spec.default),
                         open_args=spec.open_args, unknown=notes)
        if spec.no_command_shell:
            return Inner(label=label, interactive_shell=True, unknown=notes)
        return Inner(label=label, unknown=notes) if notes else None
    if name == "coproc" and len(rest) > 1 and rest[1].text == "{":
        rest = rest[1:]  # coproc NAME { ...; }: NAME names the coprocess
    if (spec.join_shell and not (seen & spec.unless_exec)) or (seen & spec.shell_if):
        return Inner(label=f"{label} (shell)", program=join_words(rest), unknown=notes)
    return Inner(label=label, argv=tuple(rest), open_args=spec.open_args, unknown=notes)


def _longs(spec: WrapperSpec) -> frozenset[str]:
    return spec.long_values | spec.long_flags | spec.long_optional


def _resolve_long(spec: WrapperSpec, key: str, prefixes: bool = True) -> str | None:
    """A long option as getopt_long reads it: exact, or an unambiguous prefix; else None."""
    longs = _longs(spec)
    if key in longs:
        return key
    if not prefixes:
        return None
    candidates = [option for option in longs if option.startswith(key)]
    return candidates[0] if len(candidates) == 1 else None


def _ssh_option(value: Word, hidden: list[Word], unknown: list[str]) -> None:
    """ssh -o KEY=VALUE (or "KEY VALUE"): some keys are commands ssh runs."""
    key, _, command = _split_ssh_option(value.text)
    if not value.literal:
        unknown.append("-o")
    elif key.lower() in _SSH_PROGRAMS:
        hidden.append(Word(command))


def _split_ssh_option(text: str) -> tuple[str, str, str]:
    match = re.match(r"\s*([A-Za-z]+)\s*(?:=\s*|\s+)(.*)", text, re.DOTALL)
    if match is None:
        return text, "", ""
    return match.group(1), "=", match.group(2)
