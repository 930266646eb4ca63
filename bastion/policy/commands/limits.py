"""Bounds that keep hostile input from hanging the bastion or filling its memory.

Past any of them a line is "unparseable", which gets the strictest action of the rules in scope.
The numbers are far above what a person types or pastes (bench/commands.py measures the cost).
"""

from __future__ import annotations

MAX_LINE = 16 * 1024  # characters in one line or exec command (a pasted 300-line script fits)
MAX_PARSED = 2 * MAX_LINE  # characters parsed for one line, re-parsed program texts included
MAX_NODES = 50_000  # syntax-tree nodes visited for one line, all re-parses included
MAX_REPARSE_DEPTH = 8  # bash -c "eval 'sh -c ...'": program texts parsed inside each other
MAX_UNWRAP = 16  # wrappers looked through in one command (sudo env nice timeout ...)
MAX_COMMANDS = 500  # simple commands found in one line
MAX_WORDS = 32_768  # words of all commands looked at (wrappers and find -exec nest)
MAX_BRACE_WORDS = 1024  # words one brace expansion may make
MAX_BRACE_DEPTH = 32  # braces nested inside each other (and brace groups in one word)


class LimitExceeded(Exception):
    """A bound was crossed: the line is treated as unparseable."""
