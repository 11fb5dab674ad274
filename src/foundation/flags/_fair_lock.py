"""FairRLock: a reentrant lock that hands itself to its waiters in arrival order.

``threading.RLock`` is not fair: a thread that releases it and asks again at
once (a writer in a loop) usually wins against a thread that has been waiting,
because the waiter must first be woken and scheduled. ``FeatureFlags`` holds its
lock around each store transaction, so a busy writer thread starved the store's
notification thread, and a kill switch from another process waited seconds to
be applied. This lock queues waiters: only the longest waiting one may take the
lock, and a thread that finds others queued queues behind them, so a waiter
waits for at most the holders ahead of it.

The lock held is a ``threading.RLock``; the queue only decides who may wait
for it. Release is that RLock's own (C) ``release``/``__exit__``: a Ctrl-C is
raised at the first instruction of a Python function, so a Python release
(``__exit__``) could be cut before it released anything, and the lock stayed
held for ever (every ``FeatureFlags`` write, and ``close()``, then waited for
it). Acquire is Python: whatever raises in it gives back what it took.

Example:
    >>> lock = FairRLock()
    >>> with lock, lock:      # reentrant
    ...     pass
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from foundation._rlock import held_levels

__all__ = ["FairRLock"]


class FairRLock:
    """A FIFO-fair reentrant lock (``with``, ``acquire()``/``release()``); see the module docs."""

    __slots__ = ("_count", "_held", "_is_owned", "_mutex", "_waiters")
    _held: threading.RLock

    def __new__(cls) -> FairRLock:
        # Race (see the module docs): ``with`` looks ``__exit__`` up on the type,
        # so each lock gets a subclass whose ``__exit__`` and ``release`` are
        # its RLock's own C methods; nothing of ours runs before the release.
        held = threading.RLock()
        mine = type(
            cls.__name__,
            (cls,),
            {"__slots__": (), "__exit__": held.__exit__, "release": held.release},
        )
        self: FairRLock = object.__new__(mine)
        self._held = held
        return self

    def __init__(self) -> None:
        self._mutex = threading.Lock()  # guards _waiters
        # Gates of the queued threads; the first one (the head) waits for _held.
        self._waiters: deque[threading.Lock] = deque()
        self._is_owned: Any = self._held._is_owned  # type: ignore[attr-defined]
        self._count = held_levels(self._held)  # (older 3.11: owned or not; see _rlock)

    @property
    def _owner(self) -> int | None:
        """The owning thread's ident if it is this one, else None (a hint)."""
        return threading.get_ident() if self._is_owned() else None

    def acquire(self) -> None:
        """Take the lock (reentrant), after the threads queued before this one."""
        held = self._held
        before = self._count()  # this thread's levels (no check point until the try)
        gate: threading.Lock | None = None
        try:
            if before:  # reentered: ours already
                held.acquire()
                return
            with self._mutex:
                if not self._waiters and held.acquire(blocking=False):
                    return  # free, and nobody queued
                gate = threading.Lock()
                if self._waiters:
                    gate.acquire()  # released when we reach the head of the queue
                self._waiters.append(gate)
            gate.acquire()  # we are the head: only we wait for _held now
            held.acquire()  # a thread arriving meanwhile queues behind us: no barging
            self._leave(gate)
        except BaseException:
            # Race: a Ctrl-C is raised at any check point in here: as a C call
            # (an acquire) returns, at a `with` exit, at a Python call. Queued,
            # we leave the queue (a head hands its place on); a level of the
            # lock taken by this call is given back. Else the lock (or the head
            # of the queue) stayed ours for ever.
            if gate is not None:
                self._leave(gate)
            if self._count() > before:
                held.release()
            raise

    def _leave(self, gate: threading.Lock) -> None:
        """Leave the queue (if ``gate`` is still in it); a head lets the next one on."""
        with self._mutex:
            waiters = self._waiters
            if waiters and waiters[0] is gate:
                # Race: no check point from the del to the release (a subscript,
                # a length: no call), so a Ctrl-C cannot strand the next waiter
                # (it was, when raised as remove() returned: the retry found
                # the gate gone and released nothing).
                del waiters[0]
                if waiters:
                    waiters[0].release()  # the next waiter is the head now
            elif gate in waiters:
                waiters.remove(gate)

    def _after_fork_in_child(self) -> None:
        """In a forked child: unlocked, nobody queued; reset in place, no new lock.

        The parent's threads (a holder, the queued) do not exist in the child;
        their gates are dropped. A lock the forking thread itself holds stays
        held: that thread goes on in the child and releases it (as
        ``_fork.unlock_after_fork`` treats an ``RLock``). In place because a new
        lock makes a new class (see ``__new__``): tens of microseconds in every
        ``subprocess`` child with a ``preexec_fn``.
        """
        self._mutex._at_fork_reinit()  # type: ignore[attr-defined]
        self._waiters = deque()
        if not self._is_owned():
            self._held._at_fork_reinit()  # type: ignore[attr-defined]

    def release(self) -> None:  # replaced by the RLock's own in each lock's subclass
        """Release one level; ``RuntimeError`` if this thread does not hold it."""
        self._held.release()

    def __enter__(self) -> FairRLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:  # replaced as release is
        self._held.release()
