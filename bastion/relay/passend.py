"""Work put off to the end of an event-loop pass, all of it in one callback.

The relay joins what arrives in one pass before handing it on (``target.PassJoiner``), and
writes each connection's packets of one pass at once (``wire.CoalescingTransport``). Each used
to ask ``call_soon`` for its own callback. A joiner's flush writes to a transport, and the
transport's ``call_soon`` from inside it ran only after the whole next pass (asyncio runs the
callbacks that were ready when a pass began), so a keystroke's echo waited through one more pass
of every other session's traffic. Here the joiners run first and the transports last, in the
same callback: what a joiner hands on leaves the bastion at the end of the same pass.

That work (masking, recording, encrypting, the ``send()`` calls) is most of the relay's, and
with many sessions streaming one pass's worth took several milliseconds. A keystroke arriving
meanwhile waited for all of it, twice per echo (on its way in, and its echo on the way out):
+20 to +45 ms at p99 with 50 sessions streaming through 2 workers. So the work runs in rounds
(a round: the joins queued when it starts, then the writes queued once they ran), and once it
has run for ``BUDGET`` the rest is put after the loop's next look at its sockets: a keystroke
is read, and sent on at once (``ChannelRelay.typed``), within about a budget of the moment the
worker could take it (+3 to +10 ms at p99 then). Nothing is reordered within a connection: a
joiner or transport hands on everything it holds, in order, whenever it runs.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Callable

JOIN = 0  # joiners: hand on what a pass brought
WRITE = 1  # transports: write what the joiners (and everything else) wrote

# Seconds of pass-end work before the loop reads its sockets again (the rest runs after).
BUDGET = 0.00025


class _PassEnd:
    __slots__ = ("_clock", "_joins_left", "_loop", "_phases", "_scheduled", "_writes_left")

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._loop = loop
        self._clock = clock
        self._phases: tuple[deque[Callable[[], None]], ...] = (deque(), deque())
        self._scheduled = False
        # The round under way: its joins still to run, then its writes (-1: not counted yet).
        self._joins_left = 0
        self._writes_left = 0

    def add(self, phase: int, callback: Callable[[], None]) -> None:
        self._phases[phase].append(callback)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        joins, writes = self._phases
        deadline = self._clock() + BUDGET
        try:
            while True:
                if not (self._joins_left or self._writes_left):
                    if not (joins or writes):
                        break
                    # A new round: the joins queued now, then the writes queued once they ran
                    # (with what the joins wrote). Anything added meanwhile waits for the next
                    # round, so a steady stream of new joins cannot hold writes back.
                    self._joins_left, self._writes_left = len(joins), -1
                if self._joins_left:
                    self._joins_left -= 1
                    self._call(joins.popleft())
                else:
                    if self._writes_left < 0:
                        self._writes_left = len(writes)
                        if not self._writes_left:
                            continue
                    self._writes_left -= 1
                    self._call(writes.popleft())
                if self._clock() >= deadline and (joins or writes):
                    self._loop.call_soon(self._run)  # the loop reads its sockets first
                    return
        except BaseException:
            self._joins_left = self._writes_left = 0
            self._scheduled = False
            raise
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
