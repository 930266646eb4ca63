"""Draw a pyte screen on the analyst's terminal with escape sequences bastion writes itself.

Nothing recorded is copied to the terminal as bytes: each cell's character (checked printable)
and attributes are turned into a fixed set of sequences (cursor position, SGR, erase). This is
why replay is safe even from escapes the sanitizer does not know: they never get here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pyte
from pyte.graphics import FG_AIXTERM, FG_ANSI
from wcwidth import wcswidth

from bastion.replay.screens import printable

CSI = "\x1b["
_NAMED = {name: code for code, name in FG_ANSI.items() if name != "default"}
_BRIGHT = {name: code for code, name in FG_AIXTERM.items()}
_HEX = re.compile(r"[0-9a-fA-F]{6}\Z")

ENTER = "\x1b[?1049h\x1b[?25l\x1b[2J"  # alternate screen, cursor hidden, cleared
LEAVE = "\x1b[0m\x1b[?25h\x1b[?1049l"  # the analyst's screen and cursor back


def _colour(value: str, foreground: bool) -> list[str]:
    if value in _NAMED:
        return [str(_NAMED[value] + (0 if foreground else 10))]
    if value in _BRIGHT:
        return [str(_BRIGHT[value] + (0 if foreground else 10))]
    if _HEX.match(value):
        r, g, b = int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)
        return ["38" if foreground else "48", "2", str(r), str(g), str(b)]
    return []  # "default" or anything unknown


def sgr(char: pyte.screens.Char, reverse: bool = False) -> str:
    """The SGR sequence for a cell's attributes (always starting from a reset)."""
    codes = ["0"]
    if char.bold:
        codes.append("1")
    if char.italics:
        codes.append("3")
    if char.underscore:
        codes.append("4")
    if char.blink:
        codes.append("5")
    if char.reverse != reverse:
        codes.append("7")
    if char.strikethrough:
        codes.append("9")
    codes += _colour(char.fg, True)
    codes += _colour(char.bg, False)
    return f"{CSI}{';'.join(codes)}m"


def draw_rows(screen: pyte.Screen, rows: Iterable[int], width: int, height: int,
              show_cursor: bool = True) -> str:
    """Sequences that draw ``rows`` of ``screen`` in the top-left ``width`` x ``height`` cells."""
    out: list[str] = []
    cursor = screen.cursor
    for y in sorted(rows):
        if y >= min(height, screen.lines):
            continue
        line = screen.buffer[y]
        out.append(f"{CSI}{y + 1};1H")
        current = ""
        x = 0
        limit = min(width, screen.columns)
        while x < limit:
            char = line[x]
            is_cursor = show_cursor and not cursor.hidden and y == cursor.y and x == cursor.x
            attrs = sgr(char, reverse=is_cursor)
            if attrs != current:
                out.append(attrs)
                current = attrs
            data = char.data
            if data == "":  # the right half of a wide character drawn just before
                x += 1
                continue
            text = printable(data) or " "
            if len(text) == 1 and x + 1 < limit and line[x + 1].data == "":
                out.append(text)  # a wide character takes both cells
                x += 2
                continue
            out.append(text if text.isascii() or _narrow(text) else "?")
            x += 1
        out.append(f"{CSI}0m{CSI}K")
    return "".join(out)


def _narrow(text: str) -> bool:
    return bool(wcswidth(text) == 1)


def status_line(row: int, width: int, text: str) -> str:
    """A reverse-video line at ``row`` (1-based) holding ``text`` (already sanitized)."""
    text = text[:width]
    return f"{CSI}{row};1H{CSI}0;7m{text}{' ' * (width - len(text))}{CSI}0m"


def plain_line(row: int, width: int, text: str) -> str:
    """An ordinary line at ``row`` holding ``text`` (already sanitized)."""
    return f"{CSI}{row};1H{CSI}0m{text[:width]}{CSI}K"


def clear() -> str:
    """Clear the whole terminal."""
    return f"{CSI}0m{CSI}2J"
