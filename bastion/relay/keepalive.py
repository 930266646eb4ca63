"""asyncssh's keepalive timer, moved on lazily instead of remade for every read.

asyncssh sends a keepalive request after ``keepalive_interval`` of silence from the peer. To
know when, it cancels its timer and makes a new one (``call_later``) for every socket read: a
timer handle made and dropped per read (2.1 us with uvloop, against 0.06 us to note the time;
2-4 % of a worker's profile relaying busy terminals' small packets, though the worker's CPU
under 50 streaming sessions moved less than its noise of about 5 %). Here a read only notes the
loop's time. When the one armed timer
fires and something was read since, it is armed again for what is left of the interval. So a
keepalive goes out, and a peer that stopped answering is dropped, at the same moments as before
(tests/unit/test_server_keepalive.py).

Like ``wire``, this replaces attributes asyncssh keeps private (``_reset_keepalive_timer``,
``_keepalive_timer_callback``) on one connection object, and leaves a connection alone (returns
False) if an asyncssh version no longer has them.
"""

from __future__ import annotations

from typing import Any

_NEEDED = ("_loop", "_auth_complete", "_keepalive_interval", "_keepalive_timer",
           "_reset_keepalive_timer", "_keepalive_timer_callback", "_set_keepalive_timer")


def lazy_keepalive(conn: Any) -> bool:
    """Make ``conn`` note reads instead of remaking its keepalive timer for each."""
    if not all(hasattr(conn, name) for name in _NEEDED):
        return False
    loop = conn._loop
    remake = conn._reset_keepalive_timer  # asyncssh's: cancel the timer, make a new one
    keepalive_due = conn._keepalive_timer_callback  # asyncssh's: count, re-arm, send a request
    last_read = [loop.time()]
    armed_for: list[float | None] = [None]  # the interval the armed timer was made with

    def note_read() -> None:
        if not conn._auth_complete:
            return
        last_read[0] = loop.time()
        if conn._keepalive_timer is None or conn._keepalive_interval != armed_for[0]:
            # No timer yet, or set_keepalive() changed the interval: asyncssh's own way.
            armed_for[0] = conn._keepalive_interval
            remake()

    def timer_fired() -> None:
        interval = conn._keepalive_interval
        if interval:
            due = last_read[0] + interval
            if loop.time() < due:  # the peer spoke since the timer was armed
                conn._keepalive_timer = loop.call_at(due, timer_fired)
                return
        keepalive_due()

    conn._reset_keepalive_timer = note_read
    # asyncssh's _set_keepalive_timer arms self._keepalive_timer_callback: this one.
    conn._keepalive_timer_callback = timer_fired
    return True
