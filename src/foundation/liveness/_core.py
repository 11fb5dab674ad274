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
        """
        if self.down is None:
            self.down = down
        down = self.down
        monitors = self.monitors
        taken: list[OnDown] = []
        while monitors:
            try:
                mon, on_down = monitors.popitem()
            except KeyError:  # emptied by a concurrent demonitor/close
                break
            mon._manager._monitors.pop(mon, None)
            taken.append(on_down)
        escaped: BaseException | None = None
        for on_down in reversed(taken):  # popitem is LIFO; call in monitor order
            try:
                invoke(on_down, down)
            except BaseException as exc:  # SystemExit & co: every taken monitor still runs
                if escaped is None:
                    escaped = exc
        if escaped is not None:
            raise escaped


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
    """Deliver ``down`` to ``mon`` if nobody else has taken it yet."""
    on_down = watch.monitors.pop(mon, None)
    if on_down is not None:
        mon._manager._monitors.pop(mon, None)
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
