"""How long this process did not run: a pause clock (jHiccup's idea).

A daemon thread asks to wake every ``TICK`` seconds and adds up how much later
than asked it woke. While a full garbage collection or a long C call holds the
GIL, while the process is stopped (SIGSTOP) or starved of CPU, no thread of it
runs, and the ticker wakes late by as much. A ``RedisRegistry``'s lease thread
reads it to tell its own silence from Redis' (see ``registry._redis._lease``):
its own measure of lateness, taken only where it waits for a heartbeat's due
time, missed a pause that fell inside a Redis call (the reply sat unread, or
the request waited to be sent), and called that silence a global outage.

Threads that keep the GIL busy delay its wakeups too (each waits its turn,
up to hundreds of milliseconds with a dozen busy threads), as they delay the
lease thread: that counts as a pause. So in such a process a Redis freeze
within a few graces may be taken for this process's silence (logged at INFO,
not as an outage). Subtracting the process's CPU time from the lateness
removed that, but then a long C call holding the GIL (a big batch's, which
starves the lease thread just as surely) went unseen: 4 of 10 big
``register_many`` runs logged false outages again; the lease thread's own
lateness is what matters, and this is its closest measure.

The clock runs while at least one user holds it (``running()``): 20 wakeups a
second, each a few microseconds.

Example:
    >>> from foundation._pause_clock import PAUSES
    >>> with PAUSES.running():
    ...     before = PAUSES.paused()
    ...     PAUSES.paused() >= before
    True
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Final

from foundation import _fork

__all__ = ["PAUSES", "TICK", "PauseClock"]

TICK: Final = 0.05
"""Seconds between the ticker's wakeups: a pause is measured to within this."""

_SLACK: Final = 0.005
"""A wakeup this late is scheduling noise (a GIL hand-over), not a pause."""


class PauseClock:
    """Seconds this process did not run, summed since it was created."""

    def __init__(self, tick: float = TICK) -> None:
        self._tick = tick
        self._lock = threading.Lock()
        self._users = 0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        # (pauses summed up to the last tick, time.monotonic() of that tick): one
        # tuple replaced whole, so a reader never pairs one tick's sum with
        # another's time.
        self._state = (0.0, time.monotonic())
        _fork.track(self)  # a forked child has no ticker: it starts afresh

    def paused(self) -> float:
        """Seconds this process did not run so far; never decreases.

        Race: a reader may run right after a pause, before the ticker does: the
        ticker's overdue time counts already (it is a pause in progress), and
        the ticker's next sum takes it over exactly, so two readings never go
        backwards. With no user, the sum stands still.
        """
        total, at = self._state
        if self._stop is None:
            return total
        return total + self._overdue(at, time.monotonic())

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Keep the ticker running for the ``with`` block (shared by every user).

        If no thread can be started (the process is at its thread limit), the
        block runs without it: the sum then stands still, as if nothing paused.
        """
        held = self._acquire()
        try:
            yield
        finally:
            if held:
                self._release()

    def _overdue(self, at: float, now: float) -> float:
        return max(0.0, now - at - self._tick - _SLACK)

    def _acquire(self) -> bool:
        with self._lock:
            self._users += 1
            if self._users > 1:
                return True
            stop = threading.Event()
            thread = threading.Thread(
                target=self._tick_until, args=(stop,), name="foundation-pause-clock", daemon=True
            )
            self._state = (self._state[0], time.monotonic())  # idle time is no pause
            self._stop, self._thread = stop, thread
            try:
                thread.start()
            except RuntimeError:  # "can't start new thread"
                self._users, self._stop, self._thread = 0, None, None
                return False
            return True

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._stop is None:
                return
            stop, thread = self._stop, self._thread
            self._stop = self._thread = None
            stop.set()
            self._take_sum()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _take_sum(self) -> None:
        """Add the time overdue now to the sum (holding the lock)."""
        total, at = self._state
        now = time.monotonic()
        self._state = (total + self._overdue(at, now), now)

    def _tick_until(self, stop: threading.Event) -> None:
        while not stop.wait(self._tick):
            with self._lock:
                if self._stop is not stop:
                    return  # released meanwhile (the release took the sum)
                self._take_sum()

    def _inherited_by_fork(self) -> None:
        # The child has no ticker thread, and no user yet (a RedisRegistry is
        # closed in a forked child): the next user starts one of its own.
        self._lock = threading.Lock()
        self._users, self._stop, self._thread = 0, None, None
        self._state = (self._state[0], time.monotonic())


PAUSES: Final = PauseClock()
"""The process's one pause clock."""
