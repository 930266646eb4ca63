"""Where an interpreter takes its program from: an argument, a file, or its standard input.

A shell given a program text (``bash -c 'rm -rf /'``) has that text parsed again. A shell or
any other interpreter reading its program from standard input cannot be checked when that
input is a pipe, a file or (for an exec request) the SSH channel: the program is not in the line.
"""

from __future__ import annotations

import enum
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bastion.policy.commands.words import Word

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash", "posh", "rbash",
                    "ksh93", "pdksh", "lksh", "busybox-sh", "hush"})
# /dev/stdin, /dev/fd/0, /proc/self/fd/0, /proc/PID/fd/0 ... once the path is normalized
_STDIN_PATH = re.compile(r"(?:.*/)?(?:stdin|fd/0)")
_SLASHES = re.compile(r"/+")


class Source(enum.Enum):
    """Where an interpreter reads its program from."""

    INLINE = "inline"  # a program text argument (sh -c TEXT)
    SCRIPT = "script"  # a file named on the command line (not visible here)
    STDIN = "stdin"  # its standard input


@dataclass(frozen=True)
class Program:
    """An interpreter's program source; ``text`` for INLINE, ``script`` for SCRIPT."""

    source: Source
    text: Word | None = None
    script: Word | None = None


@dataclass(frozen=True)
class InterpreterSpec:
    """How one non-shell interpreter is told its program."""

    inline: frozenset[str]  # options whose value (or presence) is the program: -c, -e
    values: str = ""  # other short options that take a value
    file_options: frozenset[str] = frozenset()  # options naming a program file (psql -f)
    operand_is_script: bool = True  # the first operand is a program file (not a database)
    operands_for_inline: int = 0  # sqlite3 DB SQL: the second operand is the program


def _spec(inline: str, values: str = "", **kw: object) -> InterpreterSpec:
    return InterpreterSpec(inline=frozenset(inline.split()), values=values,
                           **kw)  # type: ignore[arg-type]


_INTERPRETERS: dict[str, InterpreterSpec] = {
    "python": _spec("-c -m", "WXQ"),
    "perl": _spec("-e -E", "IMmdDxil0C"),
    "ruby": _spec("-e", "IrCEFKTx"),
    "node": _spec("-e --eval -p --print", "r"),
    "nodejs": _spec("-e --eval -p --print", "r"),
    "deno": _spec("eval"),
    "php": _spec("-r", "cdz", file_options=frozenset({"-f"})),
    "lua": _spec("-e", "l"), "luajit": _spec("-e", "l"),
    "tclsh": _spec(""), "wish": _spec(""), "expect": _spec("-c", "f"),
    "irb": _spec("-e", "Ir"), "jshell": _spec(""), "R": _spec("-e"),
    "Rscript": _spec("-e"), "pwsh": _spec("-c -Command", "f"),
    "awk": _spec("", "fvF"), "gawk": _spec("", "fvF"),
    "mysql": _spec("-e --execute", "uphPDSh", operand_is_script=False),
    "mariadb": _spec("-e --execute", "uphPDSh", operand_is_script=False),
    "psql": _spec("-c --command", "UhpdvPT", file_options=frozenset({"-f", "--file"}),
                  operand_is_script=False),
    "sqlite3": _spec("-cmd", operand_is_script=False, operands_for_inline=2),
    "osascript": _spec("-e"),
}
_PYTHON = re.compile(r"python[0-9.]*|pypy[0-9.]*")


def is_stdin_file(word: Word) -> bool:
    """Whether a program file name is standard input (``-``, ``/dev/./stdin``, ``//dev/fd/0``).

    The path is normalized first (repeated slashes, ``.`` and ``..``); any path ending in
    ``stdin`` or ``fd/0`` counts, so ``/proc/self/fd/0`` and ``cd /dev; bash stdin`` do too.
    """
    if not word.literal:
        return False
    if word.text == "-":
        return True
    path = posixpath.normpath(_SLASHES.sub("/", word.text)) if word.text else ""
    return bool(_STDIN_PATH.fullmatch(path))


def is_interpreter(name: str) -> bool:
    """Whether ``name`` reads a program (a shell or another language)."""
    return name in SHELLS or name in _INTERPRETERS or bool(_PYTHON.fullmatch(name))


def shell_program(args: Sequence[Word]) -> Program:
    """Where a POSIX shell (bash, sh, dash, zsh...) called with ``args`` reads its program."""
    inline = stdin = False
    i = 0
    while i < len(args):
        word, text = args[i], args[i].text
        if text in ("--", "-"):
            i += 1
            break
        if not word.literal or not (text.startswith(("-", "+")) and len(text) > 1):
            break
        i += 1
        if text.startswith("--"):
            if text in ("--rcfile", "--init-file"):
                i += 1
            continue
        for letter in text[1:]:
            if letter == "c":
                inline = True
            elif letter == "s":
                stdin = True
            elif letter in "oO":
                i += 1  # -o OPTION names a set -o option, not a program
    operands = args[i:]
    if inline:
        return Program(Source.INLINE, text=operands[0] if operands else Word.of(""))
    if stdin or not operands:
        return Program(Source.STDIN)
    if is_stdin_file(operands[0]):
        return Program(Source.STDIN)
    return Program(Source.SCRIPT, script=operands[0])


def interpreter_program(name: str, args: Sequence[Word]) -> Program:
    """Where the non-shell interpreter ``name`` reads its program."""
    spec = _INTERPRETERS.get(name) or _INTERPRETERS["python"]
    operands: list[Word] = []
    i = 0
    while i < len(args):
        word, text = args[i], args[i].text
        i += 1
        if text == "--":
            operands.extend(args[i:])
            break
        if word.literal and text.startswith("-") and len(text) > 1:
            key = text.partition("=")[0]
            if key in spec.inline or (not key.startswith("--") and f"-{key[1:2]}" in spec.inline):
                return Program(Source.INLINE)
            if key in spec.file_options:
                value = Word(text.partition("=")[2], literal=True) if "=" in text else (
                    args[i] if i < len(args) else Word.of(""))
                return Program(Source.STDIN if is_stdin_file(value) else Source.SCRIPT)
            if len(key) == 2 and key[1] in spec.values:
                i += 1
            continue
        operands.append(word)
        if spec.operand_is_script:
            break
    if spec.operands_for_inline and len(operands) >= spec.operands_for_inline:
        return Program(Source.INLINE)
    if not operands or not spec.operand_is_script:
        return Program(Source.STDIN)
    first = operands[0]
    if is_stdin_file(first):
        return Program(Source.STDIN)
    return Program(Source.SCRIPT, script=first)
