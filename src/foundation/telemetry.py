"""Named events with zero cost when nobody listens.

Producers guard emission with a plain attribute read, so a hot path that
nobody observes pays one dictionary lookup at most::

    if telemetry.has_listeners("flag.changed"):
        telemetry.emit("flag.changed", {...})

Listeners are called synchronously in the emitting thread, in attach order
(never queued, unlike ``subscribe`` listeners), so a listener must be quick
and must not block: the thread that emits waits for it. A listener that
raises never breaks the producer: the error is logged under
``foundation.telemetry`` (with its traceback) and passed to
``sys.unraisablehook`` if one is installed.

``foundation.redis.round_trip`` is emitted by every thread that calls Redis,
a ``RedisRegistry`` node's lease thread included. A listener that blocks there
(a metrics shipper whose socket hangs) stops the node's heartbeat: once it
has blocked for ``lease_ttl`` (5 s by default), the other nodes take the node
for dead and reap every agent it registered, live ones included, cluster-wide
(the node re-asserts them when its heartbeat runs again). Hand slow work,
such as a network send, to a bounded queue and a thread of your own.

Event names used by Foundation:

``flag.changed``, ``migration.advanced``, ``migration.rolled_back``,
``migration.emergency_rollback``, ``migration.auto_rollback``,
``registry.divergence``, ``registry.flag_ignored``,
``registry.mirror_skipped``, ``registry.mirror_deferred``,
``supervisor.child_started``, ``supervisor.child_exited``,
``supervisor.child_restarted``, ``supervisor.intensity_exceeded``,
``foundation.supervision.registration_degraded``,
``foundation.supervision.registration_restored``,
``foundation.supervision.registration_abandoned`` (degraded mode; each
supervisor event carries ``supervisor`` and ``child``, the names as in logs,
and ``template`` and ``supervisor_label``, what ``foundation.metrics`` labels
by: the id of the ``DynamicSupervisor`` template the child was made from, else
None, and the supervisor's name with such a child's id in its path replaced by
the template's), and the
flag store's outage events ``foundation.flags.stale``,
``foundation.flags.started_from_cache``, ``foundation.flags.restored``,
``foundation.flags.pending_recorded``, ``foundation.flags.pending_committed``,
``foundation.flags.pending_superseded``, ``foundation.flags.in_sync``,
``foundation.flags.read_only``, ``foundation.flags.writable``, and
``foundation.redis.round_trip`` (a timed Redis call, only while someone
listens; ``foundation.metrics`` and ``foundation.otel`` feed on these), and
``foundation.registry.listener_backlog``,
``foundation.registry.redis.listener_backlog``,
``foundation.flags.listener_backlog`` (a ``subscribe()`` listener holds up a
backlog of events: ``where``, ``queued``, ``listener``, ``thread``,
``stalled_s``; with a WARNING on the same logger name).

Example:
    >>> from foundation import telemetry
    >>> seen = []
    >>> detach = telemetry.attach("demo.event", lambda name, data: seen.append(data))
    >>> telemetry.emit("demo.event", {"n": 1})
    >>> seen
    [{'n': 1}]
    >>> detach()
    >>> telemetry.has_listeners("demo.event")
    False
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from foundation import _fork
from foundation._unraisable import report_unraisable

__all__ = ["Listener", "attach", "emit", "has_listeners", "listeners"]

Listener = Callable[[str, Mapping[str, Any]], None]

# Copy-on-write: readers see an immutable tuple per name, writers swap it
# under a lock, so ``emit`` never locks and never sees a half-built list.
# Unlocked in a forked child (held by a parent thread at the fork, it hung the
# child's first attach or detach); the tuples are whole either way.
_listeners: dict[str, tuple[Listener, ...]] = {}
_lock = threading.Lock()
_fork.unlock_after_fork(_lock)


def attach(name: str, listener: Listener) -> Callable[[], None]:
    """Call ``listener(name, data)`` on every ``emit(name, ...)``; returns a detach callable."""
    with _lock:
        _listeners[name] = (*_listeners.get(name, ()), listener)

    def detach() -> None:
        with _lock:
            current = _listeners.get(name, ())
            if listener in current:
                remaining = tuple(x for x in current if x is not listener)
                if remaining:
                    _listeners[name] = remaining
                else:
                    _listeners.pop(name, None)

    return detach


def has_listeners(name: str) -> bool:
    """True when at least one listener is attached to ``name`` (lock-free)."""
    return name in _listeners


def listeners(name: str) -> tuple[Listener, ...]:
    """The listeners currently attached to ``name``."""
    return _listeners.get(name, ())


def emit(name: str, data: Mapping[str, Any]) -> None:
    """Deliver ``data`` to the listeners of ``name``; a no-op when there are none."""
    for listener in _listeners.get(name, ()):
        try:
            listener(name, data)
        except Exception as exc:  # a broken observer must never break the producer
            report_unraisable(exc, f"telemetry listener for {name!r}", listener)
