"""The normalizer against real bash: obfuscated lines are run by bash (as an unprivileged user,
with a PATH of fake commands that only log how they were called); every line for which bash
really ran ``reboot``, or ``rm`` with both -r and -f, must be denied or flagged by the policy.

This is how two grammar slips of tree-sitter-bash were found (``! if ...; fi`` and
``time { { ...; }; }``); the seeded generator keeps looking on every run.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from commands_support import check

from bastion.policy.commands import Verdict

pytestmark = pytest.mark.e2e

BASH = shutil.which("bash") or "/bin/bash"
FAKE_COMMANDS = ("reboot", "rm", "ls")
CORES = ("reboot", "reboot now", "rm -rf x", "rm -r -f x", "rm --recursive --force x",
         "rm -fR x", "rm x -rf", "rm --rec -f x", "rm -r -- -f")


def _obfuscate_word(word: str, rnd: random.Random) -> str:
    """The same word spelled another way (bash reads it identically)."""
    cut = rnd.randint(1, len(word)) if len(word) > 1 else 1
    style = rnd.randint(0, 6)
    if style == 0:
        return word[:cut] + "''" + word[cut:]
    if style == 1:
        return word[:cut] + '""' + word[cut:]
    if style == 2:
        return "".join("\\" + c if c.isalnum() else c for c in word)
    if style == 3:
        return "$'" + "".join(f"\\x{ord(c):02x}" for c in word) + "'"
    if style == 4:
        return "$'" + "".join(f"\\{ord(c):03o}" for c in word) + "'"
    if style == 5 and cut < len(word):
        return word[:cut] + "\\\n" + word[cut:]
    return f'"{word}"'


def _obfuscate(line: str, rnd: random.Random) -> str:
    return " ".join(_obfuscate_word(w, rnd) if w.isprintable() and w.replace("-", "").isalnum()
                    and rnd.random() < 0.6 else w for w in line.split(" "))


def _wrap(line: str, rnd: random.Random) -> str:
    quoted = shlex.quote(line)
    wrappers: list[Callable[[], str]] = [
        lambda: "sudo " + line, lambda: "env X=1 " + line, lambda: "nice -n 5 " + line,
        lambda: "nohup " + line, lambda: "timeout 5 " + line, lambda: "time " + line,
        lambda: "command " + line, lambda: "bash -c " + quoted, lambda: "sh -c " + quoted,
        lambda: "eval " + quoted, lambda: "echo $(" + line + ")", lambda: "x=$(" + line + ")",
        lambda: "( " + line + " )", lambda: "{ " + line + "; }", lambda: "bash <<< " + quoted,
        lambda: "if true; then " + line + "; fi", lambda: "f() { " + line + "; }; f",
        lambda: "! " + line, lambda: "ls; " + line, lambda: line + " && ls",
        lambda: "cat <(" + line + ")", lambda: "while true; do " + line + "; break; done",
        lambda: "for i in 1; do " + line + "; done", lambda: "case x in x) " + line + ";; esac",
    ]
    return rnd.choice(wrappers)()


def generate(rnd: random.Random) -> str:
    """A line that (usually) runs a denied command, spelled and wrapped at random."""
    line = rnd.choice(CORES)
    for _ in range(rnd.randint(0, 4)):
        line = _obfuscate(line, rnd) if rnd.random() < 0.35 else _wrap(line, rnd)
    return line


def _fake_bin(folder: Path, log: Path) -> Path:
    """Commands that append their name and arguments to ``log``; wrappers run the rest."""
    fake = folder / "bin"
    fake.mkdir()
    for name in FAKE_COMMANDS:
        script = (f'#!{BASH}\nprintf "%s" {name} >> {log}\nprintf "\\t%s" "$@" >> {log}\n'
                  f"echo >> {log}\n")
        (fake / name).write_text(script, encoding="utf-8")
    # Wrappers as the real ones read their words: sudo and env take VAR=value, nice -n N.
    skip_assignments = 'while [[ "$1" == -* || "$1" == *=* ]]; do shift; done\n'
    wrappers = {"sudo": skip_assignments, "env": skip_assignments,
                "nice": '[[ "$1" == -n ]] && shift 2\n', "nohup": ""}
    for name, skip in wrappers.items():
        (fake / name).write_text(f'#!{BASH}\n{skip}exec "$@"\n', encoding="utf-8")
    (fake / "cat").write_text(f'#!{BASH}\nexec /bin/cat "$@"\n', encoding="utf-8")
    (fake / "timeout").write_text(f'#!{BASH}\nshift\nexec "$@"\n', encoding="utf-8")
    for path in fake.iterdir():
        path.chmod(0o755)
    return fake


@pytest.fixture
def bash_dir() -> Iterator[Path]:
    """A folder the unprivileged user can reach (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="bastion-bash-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def run_in_bash(lines: list[str], folder: Path) -> list[list[str]]:
    """Run each line in its own ``bash -c``; what the fake commands logged, per line."""
    folder.chmod(0o777)
    log = folder / "log"
    fake = _fake_bin(folder, log)
    lines_file = folder / "lines"
    lines_file.write_bytes(b"\0".join(line.encode() for line in lines) + b"\0")
    for path in (log, lines_file):
        path.touch()
        path.chmod(0o666)
    driver = (f'while IFS= read -r -d "" line; do\n'
              f'  /usr/bin/timeout 5 /usr/bin/env -i PATH={fake} HOME={folder} '
              f'{BASH} --norc --noprofile -c "$line" </dev/null >/dev/null 2>&1\n'
              f'  echo "@@end" >> {log}\n'
              f"done < {lines_file}\n")
    argv = [BASH, "-c", driver]
    if os.geteuid() == 0 and shutil.which("runuser"):
        argv = ["runuser", "-u", "nobody", "--", *argv]  # no root for random shell lines
    subprocess.run(argv, cwd=folder, timeout=600, check=True, stdin=subprocess.DEVNULL)
    results: list[list[str]] = [[]]
    for entry in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if entry == "@@end":
            results.append([])
        else:
            results[-1].append(entry)
    return results[:len(lines)]


def ran_denied(entries: list[str]) -> bool:
    """Whether bash ran reboot, or rm with both -r and -f (as rm itself reads its options)."""
    for entry in entries:
        name, *args = entry.split("\t")
        if name == "reboot":
            return True
        if name == "rm":
            options: set[str] = set()
            for arg in args:
                if arg == "--":
                    break
                if arg.startswith("--"):
                    options |= {"r"} if "--recursive".startswith(arg) and len(arg) > 2 else set()
                    options |= {"f"} if "--force".startswith(arg) and len(arg) > 3 else set()
                elif arg.startswith("-"):
                    options |= set(arg[1:].replace("R", "r"))
            if {"r", "f"} <= options:
                return True
    return False


@pytest.mark.parametrize("seed", [1, 2])
def test_lines_bash_runs_as_denied_commands_are_never_allowed(bash_dir: Path, seed: int) -> None:
    rnd = random.Random(seed)
    lines = [generate(rnd) for _ in range(300)]
    results = run_in_bash(lines, bash_dir)
    assert len(results) == len(lines)
    dangerous = [line for line, entries in zip(lines, results, strict=True)
                 if ran_denied(entries)]
    assert len(dangerous) > len(lines) // 2  # the generator does make bash run them
    allowed = [line for line in dangerous
               if check(line).verdict in (Verdict.ALLOW, Verdict.WARN)]
    assert not allowed, allowed


def test_harmless_mentions_do_not_run_anything_denied(bash_dir: Path) -> None:
    lines = ["echo rm -rf /", "echo reboot", "printf '%s\\n' 'rm -rf x'", "x='reboot'",
             "rm -r -- -f", ": reboot", "[[ reboot ]]", "# reboot"]
    results = run_in_bash(lines, bash_dir)
    for line, entries in zip(lines, results, strict=True):
        assert not ran_denied(entries), line
        assert check(line).verdict is Verdict.ALLOW, line
