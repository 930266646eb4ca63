"""Canonical options: ``rm -rf`` = ``rm -r -f`` = ``rm -fr`` = ``rm --recursive --force``.

For the commands rules most often name, a table gives each long option's short alias, which
short options take a value (``kill -s KILL``: ``KILL`` is not an operand) and equivalent short
options (``rm -R`` = ``rm -r``). Long options may be abbreviated as GNU getopt allows
(``rm --rec``). Every other command gets generic splitting (``-abc`` = ``-a -b -c``). GNU tools
accept options after operands (``rm / -rf``), so options are collected from every word up to
``--``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bastion.policy.commands.words import Word


@dataclass(frozen=True)
class OptionTable:
    """How one command spells its options."""

    longs: dict[str, str] = field(default_factory=dict)  # --long -> canonical (-x or --long)
    shorts: dict[str, str] = field(default_factory=dict)  # -R -> -r
    short_values: str = ""  # short options that take a value
    long_values: frozenset[str] = frozenset()  # long-only options that take a value
    whole_words: bool = False  # -KILL, -15: one option, not a group (kill, pkill, killall)


def _t(longs: dict[str, str], shorts: dict[str, str] | None = None, short_values: str = "",
       long_values: tuple[str, ...] = (), whole_words: bool = False) -> OptionTable:
    return OptionTable(longs, shorts or {}, short_values, frozenset(long_values), whole_words)


_RECURSIVE_COPY = {"--recursive": "-r", "--force": "-f", "--archive": "-a", "--verbose": "-v",
                   "--interactive": "-i", "--no-clobber": "-n", "--update": "-u",
                   "--target-directory": "-t", "--backup": "-b", "--suffix": "-S"}
_KILL = _t({"--signal": "-s", "--list": "-l", "--table": "-L", "--queue": "-q"},
           short_values="snq", whole_words=True)
_POWER = _t({"--force": "-f", "--poweroff": "-p", "--reboot": "--reboot", "--halt": "--halt",
             "--wtmp-only": "-w", "--no-wtmp": "-d", "--no-wall": "--no-wall"})
_OWNER = _t({"--recursive": "-R", "--verbose": "-v", "--changes": "-c", "--silent": "-f",
             "--quiet": "-f", "--reference": "--reference", "--no-dereference": "-h",
             "--dereference": "--dereference", "--from": "--from",
             "--preserve-root": "--preserve-root", "--no-preserve-root": "--no-preserve-root"},
            long_values=("--reference", "--from"))
_IPTABLES = _t({"--flush": "-F", "--delete-chain": "-X", "--delete": "-D", "--append": "-A",
                "--insert": "-I", "--replace": "-R", "--policy": "-P", "--zero": "-Z",
                "--table": "-t", "--jump": "-j", "--list": "-L", "--new-chain": "-N"},
               short_values="tjPpsdiogmNE")

TABLES: dict[str, OptionTable] = {
    "rm": _t({"--recursive": "-r", "--force": "-f", "--dir": "-d", "--interactive": "-i",
              "--verbose": "-v", "--one-file-system": "--one-file-system",
              "--preserve-root": "--preserve-root", "--no-preserve-root": "--no-preserve-root",
              "--help": "--help", "--version": "--version"},
             shorts={"-R": "-r"}),
    "cp": _t(_RECURSIVE_COPY, shorts={"-R": "-r"}, short_values="tS"),
    "mv": _t(_RECURSIVE_COPY, short_values="tS"),
    "shred": _t({"--remove": "-u", "--force": "-f", "--zero": "-z", "--iterations": "-n",
                 "--size": "-s", "--verbose": "-v"}, short_values="ns"),
    "chmod": _OWNER, "chown": _OWNER, "chgrp": _OWNER,
    "kill": _KILL, "pkill": _KILL, "killall": _KILL,
    "shutdown": _t({"--reboot": "-r", "--halt": "-H", "--poweroff": "-P", "--help": "--help",
                    "--no-wall": "--no-wall"}),
    "reboot": _POWER, "halt": _POWER, "poweroff": _POWER,
    "systemctl": _t({"--force": "-f", "--now": "--now", "--no-block": "--no-block",
                     "--host": "-H", "--machine": "-M", "--type": "-t", "--property": "-p",
                     "--signal": "-s", "--kill-whom": "--kill-whom", "--user": "--user",
                     "--system": "--system", "--quiet": "-q", "--all": "-a"},
                    short_values="HMtpsn", long_values=("--kill-whom",)),
    "iptables": _IPTABLES, "ip6tables": _IPTABLES,
    "truncate": _t({"--size": "-s", "--reference": "-r", "--no-create": "-c"},
                   short_values="sr"),
    "userdel": _t({"--remove": "-r", "--force": "-f"}),
    "crontab": _t({"--remove": "-r"}, short_values="u"),
    "dd": _t({}),
}


def canonical_options(name: str, words: Sequence[Word], table: OptionTable | None = None
                      ) -> tuple[tuple[str, ...], tuple[str, ...], bool, bool]:
    """(options, operands, dynamic_options, dynamic_operands) of a command's arguments.

    ``dynamic_options``: an argument that is not literal (``$x``, a leading glob) stands
    where an option could be; ``dynamic_operands``: one stands where an operand could be.
    """
    table = table or TABLES.get(name, OptionTable())
    options: set[str] = set()
    operands: list[str] = []
    dyn_options = dyn_operands = False
    skip_value = False
    after_dashes = False
    for word in words:
        text = word.text
        if skip_value:
            skip_value = False
            continue
        if after_dashes or (not word.literal and not word.maybe_option):
            operands.append(text)
            dyn_operands = dyn_operands or not word.literal or word.maybe_many
            continue
        if word.maybe_option:  # $x, *: may be options, operands or several of each
            operands.append(text)
            dyn_options = dyn_operands = True
            continue
        if text == "--":
            after_dashes = True
        elif text.startswith("--") and len(text) > 2:
            key, eq, _value = text.partition("=")
            resolved = resolve_long(table, key)
            canonical = table.longs.get(resolved, resolved)
            options.add(canonical)
            takes_value = resolved in table.long_values or (
                len(canonical) == 2 and canonical[1] in table.short_values)
            skip_value = not eq and takes_value
        elif text.startswith("-") and len(text) > 1:
            if table.whole_words or text[1:].isdigit():
                options.add(text)
                skip_value = text[1:] in table.short_values and len(text) == 2
                continue
            for i, letter in enumerate(text[1:]):
                options.add(table.shorts.get("-" + letter, "-" + letter))
                if letter in table.short_values:
                    skip_value = i == len(text) - 2  # the value is the next word
                    break
        else:
            operands.append(text)
            dyn_operands = dyn_operands or word.glob
    return tuple(sorted(options)), tuple(operands), dyn_options, dyn_operands


def resolve_long(table: OptionTable, key: str) -> str:
    """A long option, completed as GNU getopt does when the prefix is unambiguous."""
    if key in table.longs:
        return key
    candidates = [name for name in table.longs if name.startswith(key)]
    return candidates[0] if len(candidates) == 1 else key


def canonical_rule_options(command: str, options: Sequence[str]) -> frozenset[str]:
    """The canonical form of the options a rule requires (``--recursive`` -> ``-r``)."""
    canonical, _, _, _ = canonical_options(command, [Word.of(o) for o in options])
    return frozenset(canonical)
