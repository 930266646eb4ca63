"""Typed reading of a parsed TOML document, with errors that name file, line, key and expectation.

Every section parser in this package reads through a ``Table`` so that a wrong value anywhere
produces the same kind of message: ``bastion.toml:12: targets[1].port: expected an integer
from 1 to 65535, got "ssh"``. Unknown keys are errors too, so typos never pass silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError

_MISSING: Any = object()
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([^\]]+?)\s*\]\]")
_TABLE_HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
_KEY_LINE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")

KeyPath = tuple[str | int, ...]


def format_key(path: KeyPath) -> str:
    """Render a key path as ``targets[1].port``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True)
class Source:
    """The file a document came from, kept to locate keys by line for error messages."""

    path: Path
    text: str

    def line_of(self, path: KeyPath) -> int | None:
        """Best-effort line number of a key path in the TOML text."""
        counts: dict[str, int] = {}
        current: KeyPath = ()
        header_line: int | None = None
        for number, line in enumerate(self.text.splitlines(), start=1):
            if m := _ARRAY_HEADER.match(line):
                name = m.group(1)
                counts[name] = counts.get(name, 0) + 1
                current = (*name.split("."), counts[name] - 1)
            elif m := _TABLE_HEADER.match(line):
                current = tuple(m.group(1).split("."))
            else:
                if (m := _KEY_LINE.match(line)) and (*current, m.group(1)) == path:
                    return number
                continue
            if current and path[: len(current)] == current:
                header_line = number
        return header_line


@dataclass
class Table:
    """One TOML table being read; tracks which keys were used so leftovers can be refused."""

    data: dict[str, Any]
    path: KeyPath
    source: Source
    _used: set[str] = field(default_factory=set)

    # -- errors ---------------------------------------------------------------------------
    def error(self, key: str | None, expected: str, got: Any = _MISSING) -> ConfigError:
        """Build the error for ``key`` of this table: file, line, key and what was expected."""
        path = (*self.path, key) if key is not None else self.path
        line = self.source.line_of(path)
        where = f"{self.source.path}:{line}" if line else str(self.source.path)
        name = format_key(path) or "(top level)"
        detail = "" if got is _MISSING else f", got {_show(got)}"
        return ConfigError(f"{where}: {name}: expected {expected}{detail}")

    # -- scalar getters -------------------------------------------------------------------
    def _get(self, key: str, default: Any) -> Any:
        self._used.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise self.error(key, "this key (it is required)")
        return default

    def has(self, key: str) -> bool:
        """Whether ``key`` is present."""
        return key in self.data

    def string(self, key: str, default: Any = _MISSING, pattern: str | None = None,
            what: str = "a string") -> Any:
        """A string, optionally matching ``pattern``."""
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or (pattern and not re.fullmatch(pattern, value)):
            raise self.error(key, what, value)
        return value

    def integer(self, key: str, default: Any = _MISSING, lo: int | None = None,
            hi: int | None = None) -> Any:
        """An integer within ``lo``..``hi``."""
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            ok = False
        if not ok:
            rng = f" from {lo} to {hi}" if lo is not None and hi is not None else (
                f" of at least {lo}" if lo is not None else "")
            raise self.error(key, f"an integer{rng}", value)
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        """A boolean."""
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "true or false", value)
        return value

    def duration(self, key: str, default: Any = _MISSING, allow_zero: bool = True) -> Any:
        """Seconds, from a number or a string such as ``"90s"``, ``"15m"``, ``"12h"``."""
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        seconds: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        if seconds is None or seconds < 0 or (seconds == 0 and not allow_zero):
            raise self.error(key, 'a duration such as 30, "90s", "15m" or "12h"', value)
        return seconds

    def filepath(self, key: str, default: Any = _MISSING) -> Any:
        """A filesystem path; relative paths are taken from the config file's folder."""
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or not value:
            raise self.error(key, "a file or folder path", value)
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.source.path.parent / path).resolve()

    def strings(self, key: str, default: Any = _MISSING, pattern: str | None = None,
                 what: str = "a list of strings") -> Any:
        """A list of strings, each optionally matching ``pattern``; returned as a tuple."""
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, what, value)
        if pattern:
            for item in value:
                if not re.fullmatch(pattern, item):
                    raise self.error(key, what, item)
        return tuple(value)

    # -- nested tables --------------------------------------------------------------------
    def table(self, key: str) -> Table:
        """A sub-table; an absent one reads as empty so defaults apply."""
        value = self._get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, "a table", value)
        return Table(value, (*self.path, key), self.source)

    def tables(self, key: str) -> Iterator[Table]:
        """An array of tables (``[[key]]``)."""
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(key, f"an array of tables ([[{key}]])", value)
        for index, item in enumerate(value):
            yield Table(item, (*self.path, key, index), self.source)

    def done(self) -> None:
        """Refuse keys nobody read: they are typos or options this version does not have."""
        for key in self.data:
            if key not in self._used:
                raise self.error(key, "no such key here (unknown option)")


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 60 else text[:57] + "..."
