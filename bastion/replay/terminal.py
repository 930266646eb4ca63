"""A pyte screen that takes any sequence a terminal would take, without raising.

pyte passes every parameter of a CSI sequence on to its screen's method, and several of those
methods raise on what a terminal ignores: extra parameters (``ESC[1;3A``: TypeError) or an
unknown erase (``ESC[9999J``: UnboundLocalError). An exception ends pyte's parser, so one such
sequence in a recording stopped its replay, and in a target's output it ended the session at
the next command line (command control renders the output to read the line, and fails closed).
Output and recordings come from whoever controls the target: anything may be in them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import pyte


class TolerantScreen(pyte.Screen):
    """pyte's screen, taking any CSI sequence as xterm does: unused parameters ignored, an
    unknown erase mode erasing nothing."""

    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        """pyte's, except that an unknown ``how`` erases nothing (as in xterm) instead of
        raising."""
        if how in (0, 1, 2, 3):
            super().erase_in_display(how, *args, **kwargs)

    def erase_in_line(self, how: int = 0, private: bool = False) -> None:
        """pyte's, except that an unknown ``how`` erases nothing instead of raising."""
        if how in (0, 1, 2):
            super().erase_in_line(how, private)


def _taking_what_it_names(method: Callable[..., None]) -> Callable[..., None] | None:
    """``method`` given only the parameters it names (None: it takes any). pyte also passes
    ``private=True`` (``ESC[?...``) to methods that have no such parameter."""
    params = inspect.signature(method).parameters.values()
    kinds = {p.kind for p in params}
    most = None if inspect.Parameter.VAR_POSITIONAL in kinds else sum(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) - 1
    names = None if inspect.Parameter.VAR_KEYWORD in kinds else frozenset(
        p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    if most is None and names is None:
        return None

    @functools.wraps(method)
    def tolerant(self: pyte.Screen, *args: Any, **kwargs: Any) -> None:
        if names is not None:
            kwargs = {key: value for key, value in kwargs.items() if key in names}
        method(self, *(args if most is None else args[:most]), **kwargs)
    return tolerant


for _name in sorted(set(pyte.Stream.csi.values())):
    _tolerant = _taking_what_it_names(getattr(TolerantScreen, _name))
    if _tolerant is not None:
        setattr(TolerantScreen, _name, _tolerant)
