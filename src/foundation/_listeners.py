"""One way to hold and call listeners: registries, feature flags, stores.

``Listeners(where, area=...)`` is a copy-on-write tuple of callables:

- ``subscribe(listener)`` refuses a non-callable at once (``TypeError``), so a
  mistake fails at the call that made it, not at the next event; it returns an
  unsubscribe callable that is idempotent (a second call does nothing) and
  removes exactly this subscription (a listener subscribed twice is called
  twice, and one unsubscribe leaves the other subscription in place).
- ``dispatch(event)`` calls every listener of the tuple it read; an exception
  is reported through :func:`foundation._unraisable.report_unraisable` (a log
  record under ``foundation.<area>``, plus an installed ``sys.unraisablehook``)
  and the next listener runs: a broken listener never breaks the writer.

Race, handled here once for every user: a subscribe or unsubscribe racing with
a dispatch replaces ``current`` under the lock and never mutates the tuple
being iterated, so dispatch takes no lock (an unsubscribed listener may still
get an event that was already being delivered, as with any observer list).

Owners check their own closed state before calling ``subscribe``; the hot
path tests ``listeners.current`` (an empty tuple is false) before building an
event.

Example:
    >>> seen = []
    >>> listeners = Listeners("an example listener", area="example")
    >>> unsubscribe = listeners.subscribe(seen.append)
    >>> listeners.dispatch("one")
    >>> unsubscribe(); unsubscribe()        # idempotent
    >>> listeners.dispatch("two")
    >>> seen
    ['one']
    >>> listeners.subscribe(None)
    Traceback (most recent call last):
    ...
    TypeError: a listener must be callable, not None
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from foundation._unraisable import report_unraisable

__all__ = ["Listeners", "call_each", "check_listener", "subscribe_to", "unsubscriber", "without"]

E = TypeVar("E")


def check_listener(listener: object) -> None:
    """``TypeError`` unless ``listener`` is callable (the one message every subscribe uses)."""
    if not callable(listener):
        raise TypeError(f"a listener must be callable, not {listener!r:.200}")


def without(listeners: tuple[Any, ...], listener: object) -> tuple[Any, ...]:
    """``listeners`` minus ONE occurrence of ``listener`` (by identity): one subscription."""
    for i, candidate in enumerate(listeners):
        if candidate is listener:
            return listeners[:i] + listeners[i + 1 :]
    return listeners


def subscribe_to(
    owner: object,
    attr: str,
    lock: threading.Lock,
    listener: Callable[[Any], object],
    *,
    before: Callable[[], None] | None = None,
) -> Callable[[], None]:
    """Add ``listener`` to the tuple ``owner.<attr>`` (replaced under ``lock``).

    ``before`` runs under the lock first and may raise (a closed owner). Returns
    :func:`unsubscriber` for this subscription.

    Raises:
        TypeError: ``listener`` is not callable (checked before anything else).
    """
    check_listener(listener)
    with lock:
        if before is not None:
            before()
        setattr(owner, attr, (*getattr(owner, attr), listener))
    return unsubscriber(owner, attr, lock, listener)


def unsubscriber(
    owner: object, attr: str, lock: threading.Lock, listener: object
) -> Callable[[], None]:
    """The unsubscribe of ONE subscription of ``listener`` in the tuple ``owner.<attr>``.

    Idempotent: the first call removes one occurrence (under ``lock``), later
    calls do nothing, so a listener subscribed twice keeps its other subscription.
    """
    done = False

    def unsubscribe() -> None:
        nonlocal done
        with lock:
            if done:
                return
            done = True
            setattr(owner, attr, without(getattr(owner, attr), listener))

    return unsubscribe


def call_each(
    listeners: tuple[Callable[[E], object], ...], event: E, where: str, area: str
) -> None:
    """Call each of ``listeners`` with ``event``; an ``Exception`` is reported
    (:func:`foundation._unraisable.report_unraisable`, naming ``where``) and the
    next listener runs. The one loop behind every ``dispatch``."""
    for listener in listeners:
        try:
            listener(event)
        except Exception as exc:  # a broken listener must not break the writer
            report_unraisable(exc, where, listener, area=area)


class Listeners(Generic[E]):
    """A copy-on-write list of listeners with reported dispatch (see the module docs).

    ``where`` names them in error reports ("MigratingRegistry listener"),
    ``area`` picks the logger ``foundation.<area>``.
    """

    __slots__ = ("_area", "_lock", "_where", "current")

    def __init__(self, where: str, *, area: str) -> None:
        self._lock = threading.Lock()
        self._where = where
        self._area = area
        #: The subscribed listeners: read without a lock, replaced (never mutated) under it.
        self.current: tuple[Callable[[E], object], ...] = ()

    def subscribe(self, listener: Callable[[E], object]) -> Callable[[], None]:
        """Add ``listener``; returns an idempotent unsubscribe for this subscription.

        Raises:
            TypeError: ``listener`` is not callable.
        """
        return subscribe_to(self, "current", self._lock, listener)

    def dispatch(self, event: E) -> None:
        """Call every listener with ``event``; errors are reported, never raised."""
        call_each(self.current, event, self._where, self._area)

    def clear(self) -> None:
        """Drop every listener (``close()``); later unsubscribes do nothing."""
        with self._lock:
            self.current = ()

    def __repr__(self) -> str:
        return f"<Listeners {self._where!r}: {len(self.current)}>"
