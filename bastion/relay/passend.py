"""Work put off to the end of an event-loop pass, all of it in one callback.

The relay joins what arrives in one pass before handing it on (``target.PassJoiner``), and
writes each connection's packets of one pass at once (``wire.CoalescingTransport``). Each used
to ask ``call_soon`` for its own callback. A joiner's flush writes to a transport, and the
transport's ``call_soon`` from inside it ran only after the whole next pass (asyncio runs the
callbacks that were ready when a pass began), so a keystroke's echo waited through one more pass
of every other session's traffic. Here the joiners run first and the transports last, in the
same callback: what a joiner hands on leaves the bastion at the end of the same pass.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

JOIN = 0  # joiners: hand on what a pass brought
WRITE = 1  # transports: write what the joiners (and everything else) wrote


class _PassEnd:
    __slots__ = ("_loop", "_phases", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._phases: tuple[list[Callable[[], None]], ...] = ([], [])
        self._scheduled = False

    def add(self, phase: int, callback: Callable[[], None]) -> None:
        self._phases[phase].append(callback)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        joins, writes = self._phases
        try:
            # What the callbacks add is run here too (a write may, rarely, wake a joiner
            # again): until both are empty.
            while joins or writes:
                for batch in (joins, writes):
                    while batch:
                        callbacks = batch[:]
                        batch.clear()
                        for callback in callbacks:
                            self._call(callback)
        finally:
            self._scheduled = False

    def _call(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # as asyncio's Handle._run: report it, run the others
            self._loop.call_exception_handler({
                "message": f"Exception in pass-end callback {callback!r}",
                "exception": exc})


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _PassEnd] = \
    weakref.WeakKeyDictionary()


def at_pass_end(phase: int, callback: Callable[[], None],
                loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Run ``callback`` once at the end of this pass of ``loop`` (default: the running one),
    after every ``JOIN`` callback if it is a ``WRITE`` one."""
    loop = loop or asyncio.get_running_loop()
    pass_end = _by_loop.get(loop)
    if pass_end is None:
        pass_end = _by_loop[loop] = _PassEnd(loop)
    pass_end.add(phase, callback)
