"""Down records, monitors and the per-agent watch they hang from.

A *watch* is one record per watched agent. It holds a small dict of the
monitors on that agent (``Monitor -> on_down``) and, once the agent has died,
the recorded :class:`Down`. Every hand-over of a monitor is a single atomic
removal (``del``, ``dict.pop``/``dict.popitem``) from that dict, so whoever
removes a monitor owns its one and only ``on_down`` call; nobody else can call
it. That is how "at most once" holds without a lock on the hot path, and why
``demonitor()`` returning True guarantees that ``on_down`` will never be
called.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
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
    ``"exception"`` (``exception`` holds it; None only if the process was out
    of memory to build this record: the death is told without it),
    ``"cancelled"`` (also an asyncio future left pending when its event
    loop was closed), ``"exit"`` (OS process with a non-zero ``exit_code``, or
    ``exit_code=None`` when the status of a foreign process cannot be read),
    ``"killed"`` (OS process ended by ``signal``), ``"noproc"`` (already dead
    when monitored) or ``"lease_expired"`` (remote agents).

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
# Delivered instead of Down("exception", exception=exc) when that record cannot
# be built (out of memory): the death is told, without its exception.
EXCEPTION = Down("exception")


def exception_down(exc: BaseException) -> Down:
    """``Down("exception", exception=exc)``; out of memory, the preallocated
    ``Down("exception")`` (``exception`` None): the death is never lost for
    want of its record."""
    try:
        return Down("exception", exception=exc)
    except MemoryError:  # nothing allocated below: a constant
        return EXCEPTION


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
                ctx = None  # an empty context left by the last call: reused
                for on_down in backwards:
                    try:
                        ctx = invoke_fresh(on_down, down, ctx)
                    except BaseException as exc:  # SystemExit & co: the others still run
                        ctx = None  # maybe written to: not reused
                        escaped = escaped or exc
            _forget_stale(stale)  # None: nothing failed
        if escaped is not None:
            raise escaped

    def redeliver(self) -> bool:
        """Fire again the monitors a past ``fire`` could not take (the
        redeliverer thread); True once none is left to retry. Never raises:
        an ``on_down``'s ``SystemExit`` & co is reported (a library thread)."""
        down = self.down
        if down is None:  # never fired: nothing to redeliver
            return True
        try:
            self.fire(down)
        except BaseException as exc:
            if self.monitors:
                return False  # still out of memory: retried later
            report(exc, "on_down (redelivered)", self.target())
        return True


def _call_now(
    exc: BaseException, watch: Watch, on_down: OnDown, down: Down, escaped: BaseException | None
) -> BaseException | None:
    """``fire`` could not queue a monitor it took (``exc``): call it at once.
    Returns the first exception that escaped an ``on_down`` so far."""
    report(exc, "liveness: queueing a monitor (called out of order)", watch)
    try:
        invoke_fresh(on_down, down)
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
            invoke_fresh(on_down, down)
        except BaseException as exc:
            escaped = escaped or exc
    return escaped


def _forget_stale(mon: Monitor | None) -> None:
    """Retry dropping taken monitors from their manager's ``_monitors`` (after a
    failure to): every entry of that manager whose monitor is no longer in its
    watch goes. Race: a monitor being demonitored or claimed on another
    thread is briefly in ``_monitors`` only; popping it here is what that
    thread does next (a pop with a default: whoever comes second is a no-op).
    A monitor being added is in its watch before ``_monitors``: never swept.
    If this fails too, the manager's next ``active_count()``/``stats()``
    sweeps the same way (before, the fired monitor stayed counted for ever)."""
    if mon is None:
        return
    table = mon._manager._monitors
    try:
        for other in list(table):
            if other not in other._watch.monitors:
                table.pop(other, None)
    except BaseException as exc:  # still failing: swept by the next count
        mon._manager._sweep_needed = True  # an attribute store: allocates nothing
        report(exc, "liveness bookkeeping (swept at the next count)", mon._manager)


def fire_retrying(watch: Watch, down: Down, where: str) -> None:
    """``watch.fire(down)`` by a caller that keeps the watch nowhere to retry
    from (the end of a ``spawn_thread`` thread, a future's done-callback).

    If ``fire`` could not take every monitor (``MemoryError``), the failure is
    logged (``where``, a constant: nothing is allocated before the first
    ``fire``) and the watch is handed to the redeliverer thread, which retries
    until every monitor left was told (:func:`redeliver_later`): the calling
    thread is not held. An exception an ``on_down`` raised is re-raised once
    every monitor was called.
    """
    try:
        watch.fire(down)
        return
    except BaseException as exc:
        if not watch.monitors:
            raise  # every monitor was called: only an on_down's BaseException
        report(exc, where, watch.target())
    redeliver_later(watch)


class _Redeliverer:
    """One process-wide thread, ``foundation-liveness-redeliver``, that retries
    the deaths a watch could not deliver (out of memory) when nothing else
    would: shared watches (``spawn_thread`` threads, concurrent futures) have
    no manager thread behind them, and an asyncio watch's retries must
    survive its loop stopping or closing (a ``call_later`` would be dropped).
    Started on the first hand-over, then idle on a condition.

    Why not a manager's poller: a shared watch's monitors may belong to
    several managers, each may close (dropping only its own monitors) while
    the others still wait, and a manager starts its threads only on need.

    Race: a watch may be retried here and by its own thread at once (a
    hand-over that failed half-way falls back to retrying in place): ``fire``
    is safe for that, each monitor being owned by whoever pops it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.pending: list[Watch] = []
        self.thread: threading.Thread | None = None

    def add(self, watch: Watch) -> None:
        """Take ``watch``; raises (``MemoryError``, ``RuntimeError``: no thread)
        if it cannot, and the caller keeps it."""
        with self.lock:
            if self.thread is None:
                thread = threading.Thread(
                    target=self.run, name="foundation-liveness-redeliver", daemon=True
                )
                thread.start()
                self.thread = thread
            self.pending.append(watch)
            self.cond.notify()

    def run(self) -> None:
        """Retry every pending watch, with a growing pause while some fail.

        A watch leaves ``pending`` only once its ``redeliver`` said so; any
        failure of this loop itself (out of memory) keeps it there for the
        next round. Nothing escapes: this thread must outlive everything."""
        pause = _REDELIVER_PAUSE
        failing = False  # this loop's own failure is logged once per run of them
        while True:
            try:
                with self.lock:
                    while not self.pending:
                        pause = _REDELIVER_PAUSE
                        self.cond.wait()
                    batch = list(self.pending)
                left = [watch for watch in batch if not watch.redeliver()]
                with self.lock:
                    # Race: others appended meanwhile (the same watch again,
                    # maybe) and only this thread removes: the batch is still
                    # the head of pending, whatever was appended follows it.
                    self.pending = left + self.pending[len(batch) :]
                failing = False
            except BaseException as exc:  # this thread outlives anything: report, carry on
                if not failing:
                    failing = True
                    with contextlib.suppress(BaseException):
                        report(exc, "liveness redeliverer (retrying)")
            try:
                with self.lock:
                    if self.pending or failing:
                        self.cond.wait(pause)
            except BaseException:  # Condition.wait allocates: a plain pause instead
                time.sleep(pause)  # sleep-ok: backoff while out of memory
            pause = min(pause * 2, _REDELIVER_MAX_PAUSE)


# The first pause between two rounds of the redeliverer, doubled up to the
# second while some watch still fails (a cheap retry: one fire per watch).
_REDELIVER_PAUSE = 0.001
_REDELIVER_MAX_PAUSE = 0.5
_REDELIVERER = _Redeliverer()


def _new_redeliverer_after_fork() -> None:
    # A forked child has no redeliverer thread, and the parent delivers its own
    # pending deaths: the child starts empty.
    global _REDELIVERER
    _REDELIVERER = _Redeliverer()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_redeliverer_after_fork)


def redeliver_later(watch: Watch) -> None:
    """Hand ``watch`` (monitors left that ``fire`` could not take) to the
    redeliverer thread. If even that fails (no memory for the hand-over, no
    thread), retry both here, with a growing pause, until the monitors were
    told or the hand-over succeeded: a death is never given up while the
    process lives.
    """
    pause = _REDELIVER_PAUSE
    reported = False
    while True:
        try:
            _REDELIVERER.add(watch)
            return
        except BaseException as exc:
            if not reported:
                reported = True
                with contextlib.suppress(BaseException):
                    report(exc, "liveness: handing a death to the redeliverer (retried here)")
        time.sleep(pause)  # sleep-ok: backoff before retrying out of memory
        if watch.redeliver():
            return
        pause = min(pause * 2, _REDELIVER_MAX_PAUSE)


class Monitor:
    """A handle on one ``on_down`` subscription; see :func:`monitor`.

    ``active`` is True until the monitor fired, was demonitored, or its
    manager closed. ``demonitor()`` is idempotent and returns True only for
    the call that released it; after a True return ``on_down`` is never
    called. (A False return means it already fired, is firing right now on
    another thread, or was released before: by a call cut short by a Ctrl-C,
    too, whose bookkeeping this one finishes.)

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
        # Inlined in MemoryRegistry.unregister (its hot path): keep both in step.
        # Race (Ctrl-C): a signal's exception is raised at a check point: a
        # function's start, or right after a C call returns. With two pop()
        # calls, one cut after the watch's pop left the monitor counted in
        # _monitors (and a last one's pidfd open) for good: the next
        # demonitor() found it gone from its watch and did nothing. `del` is
        # no call, so nothing can cut between the two removals; the steps
        # after (dropping a managed watch) are finished by the next call.
        # Race (a death on another thread): whoever removes self from its
        # watch owns it (fire calls it; this call drops it): the atomic `del`
        # decides, as the pop did.
        watch = self._watch
        try:
            del watch.monitors[self]
        except KeyError:
            return self._settle_released(watch)
        self._manager._monitors.pop(self, None)
        if watch.detachable and not watch.monitors:
            # Last monitor of a managed watch: drop its callback / pidfd. The
            # manager re-checks emptiness under its lock (a monitor() may race).
            self._manager._release_watch(watch)
        return True

    def _settle_released(self, watch: Watch) -> bool:
        """``demonitor()`` found ``self`` already out of its watch: finish the
        bookkeeping whoever took it may have left (False: not released here).

        Race: a call cut short (Ctrl-C) after taking ``self`` from its watch
        left it counted in ``_monitors``, or its emptied managed watch
        attached (a pidfd open): each step is idempotent, so whoever finds it
        left does it. A ``fire``/``claim`` on another thread that took it does
        the same pop next (a pop with a default: the second is a no-op); a
        managed watch is released only once empty and still the manager's,
        re-checked under its lock (a racing ``monitor()`` or death's detach
        wins or finds it gone)."""
        manager = self._manager
        manager._monitors.pop(self, None)
        if watch.detachable and not watch.monitors:
            key = watch.key  # type: ignore[attr-defined]  # a _ManagedWatch's
            if manager._watches.get(key) is watch:
                manager._release_watch(watch)
        return False

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
        except MemoryError as exc:
            # Race (Ctrl-C): not BaseException, which took a KeyboardInterrupt
            # raised right after the pop for a bookkeeping failure: reported,
            # then swallowed (monitor() returned as if never cut).
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


def invoke_fresh(
    on_down: OnDown, down: Down, ctx: contextvars.Context | None = None
) -> contextvars.Context | None:
    """``invoke``, in a fresh empty ``contextvars.Context``: how ``fire`` tells
    a death, whichever thread it runs on.

    As asyncio runs each callback in its own context, nothing an ``on_down``
    (a registry's listener) sets in a ContextVar is seen by any other
    ``on_down``, of this death or a later one, nor left on the thread that
    fires (before, every death on a loop ran in one shared context, its
    values piling up for the loop's lifetime). Paid per death, not on
    ``monitor()``. Out of memory, it is called in the current context rather
    than not at all.

    ``ctx``: the one the previous call returned, if any. Returns ``ctx`` if
    it is still empty (nothing was set: as good as a fresh one), for the next
    monitor of the same ``fire`` (one allocation per monitor saved); else
    None. Never reused across ``fire`` calls: a nested ``fire`` (an
    ``on_down`` completing another agent) must not enter a context already
    entered.
    """
    if ctx is None:
        try:
            ctx = contextvars.Context()
        except MemoryError:  # a death is never lost for want of its context
            invoke(on_down, down)
            return None
    ctx.run(invoke, on_down, down)
    return None if len(ctx) else ctx


def report(exc: BaseException, where: str, obj: object = None) -> None:
    """Report an error that must not propagate (logged under ``foundation.liveness``)."""
    report_unraisable(exc, where, obj, area="liveness")
