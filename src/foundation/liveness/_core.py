"""Down records, monitors and the per-agent watch they hang from.

A *watch* is one record per watched agent. It holds a small dict of the
monitors on that agent (``Monitor -> on_down``) and, once the agent has died,
the recorded :class:`Down`. Every hand-over of a monitor is a single atomic
``dict.pop``/``dict.popitem`` on that dict, so whoever pops a monitor owns its
one and only ``on_down`` call; nobody else can call it. That is how "at most
once" holds without a lock on the hot path, and why ``demonitor()`` returning
True guarantees that ``on_down`` will never be called.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from foundation._unraisable import report_unraisable

if TYPE_CHECKING:
    from foundation.liveness._manager import MonitorManager

__all__ = ["Down", "DownReason", "ManagerStats", "Monitor", "OnDown"]

DownReason = Literal[
    "normal", "exception", "cancelled", "exit", "killed", "noproc", "lease_expired"
]
_REASONS = frozenset(
    ("normal", "exception", "cancelled", "exit", "killed", "noproc", "lease_expired")
)


@dataclass(frozen=True, slots=True)
class Down:
    """Why a monitored agent is gone.

    ``reason`` is one of ``"normal"`` (returned; OS process exit code 0),
    ``"exception"`` (``exception`` holds it), ``"cancelled"``, ``"exit"`` (OS
    process with a non-zero ``exit_code``, or ``exit_code=None`` when the status
    of a foreign process cannot be read), ``"killed"`` (OS process ended by
    ``signal``), ``"noproc"`` (already dead when monitored) or
    ``"lease_expired"`` (remote agents).

    Example:
        >>> Down("exit", exit_code=3)
        Down(reason='exit', exception=None, exit_code=3, signal=None)
        >>> Down("vanished")
        Traceback (most recent call last):
        ...
        ValueError: unknown Down reason 'vanished'
    """

    reason: DownReason
    exception: BaseException | None = None
    exit_code: int | None = None
    signal: int | None = None

    def __post_init__(self) -> None:
        if self.reason not in _REASONS:
            raise ValueError(f"unknown Down reason {self.reason!r}")


NORMAL = Down("normal")
NOPROC = Down("noproc")
CANCELLED = Down("cancelled")

OnDown = Callable[[Down], object]  # the return value is ignored


@dataclass(frozen=True, slots=True)
class ManagerStats:
    """A snapshot of what a :class:`MonitorManager` holds (for leak checks).

    ``monitors``: live monitors; ``watched_agents``: distinct agents they watch;
    ``threads_running``: watcher threads alive; ``open_fds``: file descriptors
    the manager owns (pidfds, the epoll fd and its wake-up fd).
    """

    monitors: int
    watched_agents: int
    threads_running: int
    open_fds: int


class Watch:
    """One per watched agent: its monitors and, once dead, its Down."""

    __slots__ = ("agent", "down", "monitors")

    # Managed watches belong to one manager and are detached (callback removed,
    # pidfd closed) when their last monitor goes; shared ones live with the agent.
    detachable: ClassVar[bool] = False

    def __init__(self, agent: object) -> None:
        self.agent = agent
        self.monitors: dict[Monitor, OnDown] = {}
        self.down: Down | None = None

    def target(self) -> object:
        """The watched agent."""
        return self.agent

    def fire(self, down: Down) -> None:
        """Record the agent's death and call every monitor's on_down once.

        Race: ``down`` is recorded BEFORE the monitors are taken, so a monitor
        inserted concurrently is either taken here or sees ``self.down`` in its
        own post-insert check (and takes itself); the pop decides which.

        A monitor popped here is owned by this call alone (nobody else can
        call it), so nothing between its pop and its call may lose it: if
        queueing it fails (the list grows: ``MemoryError``) it is called at
        once, out of order; if the manager's bookkeeping fails (dropping it
        from ``_monitors``) it is still called, and that bookkeeping is
        retried once every taken monitor was called. Every monitor taken is
        called even if another's ``on_down`` raises.

        Raises only after every monitor it took was called: a
        ``BaseException`` an ``on_down`` raised (``SystemExit``, ...), or a
        ``MemoryError`` taking the next monitor (``popitem`` allocates its
        result before removing anything, so the monitors not yet taken are
        all still in ``self.monitors``). Callers that find ``self.monitors``
        not empty after a raise call ``fire`` again later (see
        :func:`fire_retrying`): it delivers exactly the monitors left.
        """
        if self.down is None:
            self.down = down
        down = self.down
        monitors = self.monitors
        taken: list[OnDown] = []  # MemoryError here: nothing taken, nothing lost
        escaped: BaseException | None = None
        stale: Monitor | None = None  # a taken monitor its manager still counts
        try:
            while monitors:
                try:
                    mon, on_down = monitors.popitem()
                except KeyError:  # emptied by a concurrent demonitor/close
                    break
                try:
                    taken.append(on_down)
                except BaseException as exc:  # MemoryError growing the list: call it now
                    escaped = _call_now(exc, self, on_down, down, escaped)
                try:
                    mon._manager._monitors.pop(mon, None)
                except BaseException as exc:  # bookkeeping: retried below, after the calls
                    report(exc, "liveness bookkeeping (retried once the monitors ran)", self)
                    stale = mon
        except BaseException as exc:  # popitem's MemoryError: the rest stay in monitors
            escaped = escaped or exc
        finally:
            # popitem is LIFO: call in monitor order. reversed() allocates one
            # iterator (MemoryError before any call); then list.pop() gives the
            # same order without allocating (slower: the fallback only).
            try:
                backwards = reversed(taken)
            except BaseException:
                escaped = _call_popping(taken, down, escaped)
            else:
                for on_down in backwards:
                    try:
                        invoke(on_down, down)
                    except BaseException as exc:  # SystemExit & co: the others still run
                        escaped = escaped or exc
            _forget_stale(stale)  # None: nothing failed
        if escaped is not None:
            raise escaped


def _call_now(
    exc: BaseException, watch: Watch, on_down: OnDown, down: Down, escaped: BaseException | None
) -> BaseException | None:
    """``fire`` could not queue a monitor it took (``exc``): call it at once.
    Returns the first exception that escaped an ``on_down`` so far."""
    report(exc, "liveness: queueing a monitor (called out of order)", watch)
    try:
        invoke(on_down, down)
    except BaseException as raised:  # SystemExit & co: every taken monitor still runs
        return escaped or raised
    return escaped


def _call_popping(
    taken: list[OnDown], down: Down, escaped: BaseException | None
) -> BaseException | None:
    """``fire``'s calls when ``reversed()`` has no memory: the same (monitor)
    order by popping from the end, which allocates nothing."""
    while taken:
        on_down = taken.pop()
        try:
            invoke(on_down, down)
        except BaseException as exc:
            escaped = escaped or exc
    return escaped


def _forget_stale(mon: Monitor | None) -> None:
    """Retry dropping taken monitors from their manager's ``_monitors`` (after a
    failure to): every entry of that manager whose monitor is no longer in its
    watch goes. Race: a monitor being demonitored or claimed on another
    thread is briefly in ``_monitors`` only; popping it here is what that
    thread does next (a pop with a default: whoever comes second is a no-op).
    A monitor being added is in its watch before ``_monitors``: never swept."""
    if mon is None:
        return
    table = mon._manager._monitors
    try:
        for other in list(table):
            if other not in other._watch.monitors:
                table.pop(other, None)
    except BaseException as exc:  # still failing: a fired monitor stays counted
        report(exc, "liveness bookkeeping (a fired monitor stays counted)", mon._manager)


def fire_retrying(watch: Watch, down: Down, where: str) -> None:
    """``watch.fire(down)`` by a caller that keeps the watch nowhere to retry
    from (the end of a ``spawn_thread`` thread, a future's done-callback).

    If ``fire`` could not take every monitor (``MemoryError``), retry after a
    growing pause, up to about two seconds in all, then log an ERROR (``where``,
    the agent, how many monitors were not told). An exception an ``on_down``
    raised is re-raised once every monitor was called. ``where`` is a constant:
    nothing is allocated before the first ``fire``.
    """
    pause = 0.001
    while True:
        try:
            watch.fire(down)
            return
        except BaseException as exc:
            if not watch.monitors:
                raise  # every monitor was called: only an on_down's BaseException
            if pause > 1.0:
                n = len(watch.monitors)
                report(exc, f"{where}: {n} monitor(s) not told of the death", watch.target())
                return
            time.sleep(pause)  # sleep-ok: backoff before retrying out of memory
            pause *= 2


class Monitor:
    """A handle on one ``on_down`` subscription; see :func:`monitor`.

    ``active`` is True until the monitor fired, was demonitored, or its
    manager closed. ``demonitor()`` is idempotent and returns True only for
    the call that released it; after a True return ``on_down`` is never
    called. (A False return means it already fired, is firing right now on
    another thread, or was released before.)

    Example:
        >>> import threading
        >>> from foundation.liveness import MonitorManager, spawn_thread
        >>> stop = threading.Event()
        >>> with MonitorManager(name="doc-monitor") as manager:
        ...     mon = manager.monitor(spawn_thread(stop.wait), print)
        ...     (mon.active, mon.demonitor(), mon.demonitor(), mon.active)
        (True, True, False, False)
        >>> stop.set()
    """

    __slots__ = ("_manager", "_watch")

    def __init__(self, manager: MonitorManager, watch: Watch) -> None:
        self._manager = manager
        self._watch = watch

    @property
    def agent(self) -> object:
        """The monitored agent."""
        return self._watch.target()

    @property
    def active(self) -> bool:
        """True while ``on_down`` may still be called."""
        return self in self._watch.monitors

    def demonitor(self) -> bool:
        """Release this monitor; True if this call released it."""
        watch = self._watch
        if watch.monitors.pop(self, None) is None:
            return False
        self._manager._monitors.pop(self, None)
        if watch.detachable and not watch.monitors:
            # Last monitor of a managed watch: drop its callback / pidfd. The
            # manager re-checks emptiness under its lock (a monitor() may race).
            self._manager._release_watch(watch)
        return True

    def __repr__(self) -> str:
        state = "active" if self.active else "inactive"
        return f"<Monitor {state} agent={self._watch.target()!r}>"


def claim(mon: Monitor, watch: Watch, down: Down) -> None:
    """Deliver ``down`` to ``mon`` if nobody else has taken it yet.

    Once popped, ``mon`` is ours alone: it is called even if the manager's
    bookkeeping fails (retried after the call, see ``_forget_stale``).

    Race: ``monitor()`` inserts into ``watch.monitors`` and then into the
    manager's ``_monitors``; a ``fire`` between the two takes the monitor and
    drops it from ``_monitors`` before it is there. Its caller then lands
    here (``watch.down`` is set) and finds it taken: it drops the entry the
    firing side could not (idempotent if that side drops it after us).
    """
    on_down = watch.monitors.pop(mon, None)
    if on_down is None:
        mon._manager._monitors.pop(mon, None)
    else:
        try:
            mon._manager._monitors.pop(mon, None)
        except BaseException as exc:
            report(exc, "liveness bookkeeping (retried once the monitor ran)", watch)
            invoke(on_down, down)
            _forget_stale(mon)
            return
        invoke(on_down, down)


def invoke(on_down: OnDown, down: Down) -> None:
    """Call ``on_down``; a failing callback is reported, never propagated.

    Only ``Exception`` is caught here: ``SystemExit`` and ``KeyboardInterrupt``
    keep their meaning on the caller's thread; the watcher threads catch them
    around their loop body, report them and carry on.
    """
    try:
        on_down(down)
    except Exception as exc:  # a broken subscriber must never break a watcher
        report(exc, "on_down callback", on_down)


def report(exc: BaseException, where: str, obj: object = None) -> None:
    """Report an error that must not propagate (logged under ``foundation.liveness``)."""
    report_unraisable(exc, where, obj, area="liveness")
