"""FairRLock: a reentrant lock that hands itself to its waiters in arrival order.

``threading.RLock`` is not fair: a thread that releases it and asks again at
once (a writer in a loop) usually wins against a thread that has been waiting,
because the waiter must first be woken and scheduled. ``FeatureFlags`` holds its
lock around each store transaction, so a busy writer thread starved the store's
notification thread, and a kill switch from another process waited seconds to
be applied. This lock queues waiters and, on release, passes ownership to the
longest waiting one: a waiter waits for at most the holders ahead of it.

Example:
    >>> lock = FairRLock()
    >>> with lock, lock:      # reentrant
    ...     pass
"""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["FairRLock"]

_HANDED_OVER = -1  # owner id while ownership travels to the woken waiter


class FairRLock:
    """A FIFO-fair reentrant lock (``with`` only); see the module docs."""

    __slots__ = ("_count", "_mutex", "_owner", "_waiters")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._owner: int | None = None
        self._count = 0
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._count += 1
                return
            if self._owner is None:  # free, so nobody is queued either
                self._owner, self._count = me, 1
                return
            gate = threading.Lock()
            gate.acquire()
            self._waiters.append(gate)
        try:
            gate.acquire()  # released by the holder that hands us the lock
        except BaseException:
            with self._mutex:
                if gate in self._waiters:  # interrupted before our turn: leave the queue
                    self._waiters.remove(gate)
                    raise
            # Race: our turn came as we were interrupted; take it, then pass it on.
            self._take(me)
            self.release()
            raise
        self._take(me)

    def _take(self, me: int) -> None:
        with self._mutex:
            self._owner, self._count = me, 1

    def release(self) -> None:
        with self._mutex:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release un-acquired lock")
            self._count -= 1
            if self._count:
                return
            if self._waiters:
                # Hand over: nobody else can take the lock until the waiter runs.
                self._owner = _HANDED_OVER
                self._waiters.popleft().release()
            else:
                self._owner = None

    def __enter__(self) -> FairRLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
