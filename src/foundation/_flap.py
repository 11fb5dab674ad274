"""Flap damping: the same fault right after each recovery, said once.

A fault that cuts some connections only while Redis answers (``CLIENT KILL`` in
a loop, ``maxclients`` reached, client eviction under ``maxmemory-clients``)
fails a component again moments after each recovery. Logged as any outage,
each round is a WARNING and an INFO line: a flood on every node.
:class:`FlapDamper` decides which lines belong to such a flap; its owner says
them, in its own words under its own logger (a registry node's
``registry._redis._state.Link``, a flag store's listener in
``flags._redis_store``):

- a drop (up -> down) with the cause of the last drop, less than
  ``FLAP_WINDOW`` s after the return in between, repeats it: the first repeat
  is one WARNING, then the flap's drops and returns are logged at DEBUG;
- any other drop ends the flap, and so does a failure with another cause
  while down: a new outage is logged as usual, never at DEBUG;
- up ``FLAP_WINDOW`` s since the last return: the flap is over (an INFO line);
- down ``FLAP_WINDOW`` s since the last drop, with no return: the flap ended
  in an outage (a WARNING: its drop was logged at DEBUG).

Not thread-safe: its owner calls it under the lock that orders its own state
changes, so the damper never sees a drop and a return in another order.

>>> now = [0.0]
>>> damper = FlapDamper(clock=lambda: now[0])
>>> cut = "Redis at redis://h:1/0 failed while reading: unreachable: {}"
>>> damper.drop(cut.format("reset by peer")), damper.up()  # an outage, and back
('usual', False)
>>> now[0] = 0.5  # cut again, right after
>>> damper.drop(cut.format("closed by server")), damper.up()  # the same cause
('first', True)
>>> now[0] = 1.0
>>> damper.drop(cut.format("reset by peer")), damper.up(), damper.over()
('quiet', True, None)
>>> now[0] = 1.0 + FLAP_WINDOW  # up ever since
>>> over = damper.over()
>>> over.drops, over.cause, over.seconds, damper.flapping
(2, 'unreachable', 10.0, False)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

__all__ = ["FLAP_WINDOW", "FlapDamper", "FlapOver", "Verdict", "cause_of"]

FLAP_WINDOW = 10.0
"""Seconds: a drop this soon after the return that followed the last one, with
its cause, repeats it (read at each call, so a test may set it)."""

Verdict = Literal["usual", "first", "quiet"]
"""How to log a drop: as any outage, as the flap's first repeat (one WARNING
that says so, then the drop's own line at DEBUG), or at DEBUG."""


def cause_of(error: str) -> str:
    """The cause in a backend error: after ``failed while <doing>: ``, up to its
    detail. Two failures alike compare equal whatever the detail (the same
    ``CLIENT KILL`` reads "closed by server" or "reset by peer") and whichever
    call met them (the lease, the change stream, a write).

    >>> cause_of("Redis at redis://h:1/0 failed while renewing the lease: unreachable: x")
    'unreachable'
    >>> cause_of("no answer in time")
    'no answer in time'
    """
    _head, sep, rest = error.partition(" failed while ")
    return (rest.partition(": ")[2] if sep else error).partition(": ")[0]


class FlapOver:
    """A flap that ended: ``drops`` damped, their ``cause``, ``seconds`` since the
    last return (over) or the last drop (lingers). (A plain class: a dataclass
    costs its build at ``import foundation``.)"""

    __slots__ = ("cause", "drops", "seconds")

    def __init__(self, drops: int, cause: str, seconds: float) -> None:
        self.drops, self.cause, self.seconds = drops, cause, seconds

    def __repr__(self) -> str:
        return f"FlapOver(drops={self.drops}, cause={self.cause!r}, seconds={self.seconds:.1f})"


class FlapDamper:
    """Which drops and returns of one component are a flap (see the module docstring).

    The owner reports each drop (:meth:`drop`), each change or failure while
    down (:meth:`again`) and each return (:meth:`up`), and asks whether a flap
    ended (:meth:`over` while up, :meth:`lingers` while down). ``flapping`` may
    be read without the owner's lock (a hot path's cheap check; the answer is
    then re-checked under it).
    """

    __slots__ = ("_cause", "_clock", "_down_at", "_drops", "_up", "_up_at", "flapping")

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.flapping = False
        self._up = False  # between up() and the next drop()
        self._up_at: float | None = None  # clock at the last up()
        self._down_at = 0.0  # clock at the last drop()
        self._cause: str | None = None  # the last drop's cause (None: no failure)
        self._drops = 0  # drops damped since the flap began (said when it ends)

    def drop(self, error: str | None) -> Verdict:
        """Up -> down, failing with ``error`` (None: down for no failure, which
        ends a flap): ``"first"`` when it repeats the last drop's cause less than
        ``FLAP_WINDOW`` s after the return in between, ``"quiet"`` for the next
        repeats, ``"usual"`` otherwise."""
        now = self._clock()
        cause = None if error is None else cause_of(error)
        repeat = cause is not None and cause == self._cause and self._soon_after_up(now)
        self._cause, self._up, self._down_at = cause, False, now
        first = repeat and not self.flapping
        self.flapping = repeat
        if repeat:
            self._drops = 1 if first else self._drops + 1
        return "first" if first else ("quiet" if repeat else "usual")

    def _soon_after_up(self, now: float) -> bool:
        """Less than ``FLAP_WINDOW`` s since the last return (``up``)."""
        return self._up_at is not None and now - self._up_at < FLAP_WINDOW

    def again(self, error: str | None) -> bool:
        """A report while down (a failure with ``error``, None for a change with no
        failure): True while it belongs to the flap (log it at DEBUG). A failure
        with another cause ends the flap (False: a new outage, log it as usual);
        the next drop is compared with it."""
        if self.flapping and error is not None and (cause := cause_of(error)) != self._cause:
            self.flapping = False
            self._cause = cause
        return self.flapping

    def up(self) -> bool:
        """Down -> up (recovered, in sync): True when that is part of a flap (DEBUG)."""
        self._up, self._up_at = True, self._clock()
        return self.flapping

    def over(self) -> FlapOver | None:
        """The flap that ended up (``FLAP_WINDOW`` s since the last return), once;
        None otherwise. The owner asks after each call that succeeded."""
        if not self.flapping or not self._up or self._up_at is None or self._cause is None:
            return None
        since = self._clock() - self._up_at
        if since < FLAP_WINDOW:
            return None
        self.flapping = False
        return FlapOver(self._drops, self._cause, since)

    def lingers(self) -> FlapOver | None:
        """The flap that ended down (``FLAP_WINDOW`` s since its last drop, logged at
        DEBUG, with no return: the server went away meanwhile, say), once; None
        otherwise. The owner asks at each failed retry, so a lasting outage is
        never left at DEBUG."""
        if not self.flapping or self._up or self._cause is None:
            return None
        since = self._clock() - self._down_at
        if since < FLAP_WINDOW:
            return None
        self.flapping = False
        return FlapOver(self._drops, self._cause, since)
