"""The default application tree: flags, monitors, registry, migration monitor.

``Application`` is a :class:`~foundation.supervision.Supervisor` (strategy
``rest_for_one``) whose children start in this order, each ready before the
next, and stop in reverse:

1. ``flags`` — :class:`~foundation.FeatureFlags` over the configured store
   (memory, SQLite or Redis), with the config layer loaded from the config's
   ``[flags]`` table and ``FOUNDATION_FLAG_*`` variables;
2. ``monitors`` — the :class:`~foundation.liveness.MonitorManager` that owns
   every watcher thread of the application;
3. ``registry`` — a :class:`~foundation.MigratingRegistry` over
   ``ThreadLocalRegistry`` and ``MemoryRegistry`` (the embedded default), or a
   :class:`~foundation.RedisRegistry` when configured; without the flags
   service, the plain ``MemoryRegistry``;
4. ``migration_monitor`` — a :class:`~foundation.Migration` over the default
   plan, refusing to advance while the registry reports divergences, and, when
   thresholds are configured, rolling back automatically on real health
   signals (restarts per minute in the application's own tree, registry
   lookup latency against the baseline measured at start, and the error rate
   fed to ``app.health``);
5. ``workers`` — an optional nested supervisor of the caller's children,
   registered by name in the registry on every (re)start, through the
   registry's async face (``register_async``): a slow or frozen Redis never
   blocks the tree's event loop. During a registry outage the workers keep
   running unregistered and their registrations are retried until Redis is
   back (degraded mode: see :class:`~foundation.supervision.Supervisor`,
   "Registry outages"); an outage never stops a worker.

``services=`` leaves any of the first four out (the original's test mode):
what depends on a missing service degrades as described above; only the
migration monitor cannot run without the flags service (``InvalidConfig``).

The application is OTP's permanent application: when the tree gives up,
:meth:`Application.wait` and :meth:`Application.wait_for_signal` raise its
failure, so the program ends (``docs/otp-parity.md``, application_SUITE).

Logs: the application reports its life on the ``foundation.application``
logger, one record per event, with ``extra=`` fields ``event``,
``application`` (its name), ``service`` (or ``None``) and ``reason``: INFO
when it starts (``app_starting``, then ``service_started`` for each service in
order, then ``app_started``) and stops (``app_stopping``, ``service_stopped``
in reverse order, ``app_stopped``); ERROR, with the traceback, when it fails
to start (``app_start_failed``; one line pointing to the crash report above
when a service or worker failed to start: that report has the traceback;
a Ctrl-C during the start is no failure: INFO ``app_start_interrupted``, no
traceback, and the ``KeyboardInterrupt`` goes on once the start is rolled back),
fails to stop (``app_stop_failed``; a Ctrl-C while ``with app:`` stops the tree
cuts that stop short: WARNING ``app_stop_cut_short`` naming the children still
running, no traceback, and the ``KeyboardInterrupt`` goes on; INFO
``app_stop_interrupted`` instead when the stop had ended as it landed;
a cancellation while ``async with`` stops the tree, a Ctrl-C under
``asyncio.run`` or a timeout, is INFO ``app_stop_cancelled``: the stop under way
goes on to its end, then the cancellation; a second one cuts that wait short,
WARNING ``app_stop_cut_short`` naming the children still running)
or gives up (``app_failed``: restart intensity exceeded; its services are
stopped by then, so the order is ``service_stopped`` in reverse,
``app_failed``, then ``app_stopped`` without an ``app_stopping``). The
signal :meth:`Application.wait_for_signal` received, and a forced stop, are
reported as :func:`foundation.supervision.run` reports them
(``foundation.supervision.runner``). Crashes and restarts of its services
are the supervisor's crash and progress reports (loggers under
``foundation.supervision``, supervisor named after the application).

Example:
    >>> from foundation import Application
    >>> with Application.start(services=("flags", "monitors", "registry")) as app:
    ...     app.registry.protocol_version()
    '2.0'
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Self

from foundation import telemetry
from foundation._appconfig import AppConfig
from foundation._public import fixup_module_paths
from foundation.errors import (
    InvalidConfig,
    InvalidFlagValue,
    ShutdownError,
    SupervisorError,
    bounded_repr,
)
from foundation.flags import DEFAULT_FLAGS, FeatureFlags, Flag, FlagStore, MemoryFlagStore
from foundation.flags._migration import (
    AutoRollback,
    HealthSample,
    HealthThresholds,
    Migration,
    MigrationPlan,
)
from foundation.liveness import MonitorManager
from foundation.registry import Registry
from foundation.supervision import ChildContext, ChildSpec, Supervisor, SupervisorThread, _wakeup
from foundation.supervision._cancelled_stop import raised_on_exit, stop_past_cancel
from foundation.supervision._notices import traceback_logged
from foundation.supervision._runner import (
    FORCE_GRACE,
    SignalHandlers,
    report_forced,
    report_left_running,
    report_signal,
)
from foundation.supervision._runs import force_tree, in_thread_child_of
from foundation.supervision._spec import MAX_NAME_CHARS, _check_specs, check_name
from foundation.supervision._supervisor import _error as _supervisor_error
from foundation.supervision._supervisor import running_paths, runs_in_tree

if TYPE_CHECKING:
    import asyncio
    import concurrent.futures
    from types import TracebackType

__all__ = ["ALL_SERVICES", "AppConfig", "AppHealth", "Application"]

ALL_SERVICES = ("flags", "monitors", "registry", "migration_monitor")

_log = logging.getLogger("foundation.application")

# True in wait_for_signal()'s stopping thread: a ShutdownError of that stop (a
# thread left running) is reported once, by the runner's WARNING, as run() does.
_SIGNAL_STOP: ContextVar[bool] = ContextVar("foundation_signal_stop", default=False)


def _report(
    level: int,
    event: str,
    msg: str,
    *args: object,
    application: str,
    service: str | None = None,
    reason: str,
    exc: BaseException | None = None,
    **fields: object,
) -> None:
    """One application report on ``foundation.application``; cheap when
    disabled, never raises (a broken handler is not the application's problem)."""
    if not _log.isEnabledFor(level):
        return
    extra: dict[str, object] = {
        "event": event,
        "application": application,
        "service": service,
        "reason": reason,
    }
    extra.update(fields)
    with contextlib.suppress(Exception):  # a raising filter: starting and stopping carry on
        _log.log(level, msg, *args, exc_info=exc, extra=extra, stacklevel=2)


# How often a stop() or a with-block exit from outside the tree, waiting for
# the start lock, looks whether another thread's stop is under way (seconds).
_LOCK_POLL = 0.05

# How often a forced stop, waiting for the tree's loop to run the force, looks
# whether the orderly stop ended meanwhile (seconds).
_FORCE_POLL = 0.1


class AppHealth:
    """Real health signals for automatic rollback: restarts, latency, errors.

    Restarts are counted from ``supervisor.child_restarted`` telemetry over the
    last minute: with ``supervisor=``, only those of its tree (that supervisor
    and the supervisors nested under it), as an :class:`Application` counts
    its own; without, those of every supervisor in the process. Latency is
    the mean cost of a registry lookup probe, compared with the baseline
    measured when the registry started; the error rate is what callers report
    through :meth:`record`.

    Example:
        >>> health = AppHealth()
        >>> health.record(ok=False); health.record(ok=True)
        >>> health.sample().error_rate
        0.5
        >>> health.close()
    """

    def __init__(
        self, registry: Registry | None = None, *, supervisor: Supervisor | None = None
    ) -> None:
        self._registry = registry
        self._supervisor = supervisor
        self._restarts: deque[float] = deque()
        self._outcomes: deque[bool] = deque(maxlen=1000)
        self._baseline = self._probe() if registry is not None else None
        self._detach = telemetry.attach("supervisor.child_restarted", self._on_restart)

    def _on_restart(self, _name: str, data: Mapping[str, Any]) -> None:
        tree = self._supervisor
        if tree is not None and not runs_in_tree(tree, data.get("handle")):
            return  # another tree's restart (another library's, a test's supervisor)
        self._restarts.append(time.monotonic())

    def record(self, *, ok: bool) -> None:
        """Count one operation outcome towards the error rate."""
        self._outcomes.append(ok)

    def _probe(self, n: int = 200) -> float | None:
        if self._registry is None:
            return None
        lookup = self._registry.lookup
        started = time.perf_counter()
        for _ in range(n):
            lookup("__foundation_health_probe__")
        return (time.perf_counter() - started) / n

    def sample(self) -> HealthSample:
        """The current measurements (``None`` for a signal with no data yet)."""
        cutoff = time.monotonic() - 60.0
        while self._restarts and self._restarts[0] < cutoff:
            self._restarts.popleft()
        outcomes = list(self._outcomes)
        error_rate = outcomes.count(False) / len(outcomes) if outcomes else None
        return HealthSample(
            error_rate=error_rate,
            restarts_per_minute=float(len(self._restarts)),
            latency=self._probe(),
            baseline_latency=self._baseline,
        )

    def close(self) -> None:
        self._detach()


def _chosen_services(services: Iterable[str]) -> tuple[str, ...]:
    """Application(): the services as a tuple; InvalidConfig unless all are known names."""
    if isinstance(services, str):  # tuple("flags") would be its letters
        raise InvalidConfig(
            f"services is a collection of names, not the str {bounded_repr(services)}; "
            f"write services=({bounded_repr(services)},)"
        )
    chosen = tuple(services)
    unknown = [s for s in chosen if s not in ALL_SERVICES]
    if unknown:
        raise InvalidConfig(f"unknown services {unknown}; choose from {ALL_SERVICES}")
    if "migration_monitor" in chosen and "flags" not in chosen:
        # Refused here, not by a failed start (OTP: {error, {not_started, Dep}}).
        raise InvalidConfig(
            "the migration_monitor service needs the flags service: "
            "add 'flags' to services, or leave 'migration_monitor' out"
        )
    return chosen


def _checked_workers(workers: Sequence[ChildSpec]) -> tuple[ChildSpec, ...]:
    """Application(): the workers as a tuple; raise unless they can be supervised together."""
    workers = tuple(workers)
    for spec in workers:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"workers must be ChildSpec instances, not {bounded_repr(spec)}")
    problem = _check_specs(workers, "never")
    if problem is not None:
        raise ValueError(f"workers: {problem}")
    return workers


def _checked_flag_args(declared: Iterable[Flag], flag_store: FlagStore | None) -> tuple[Flag, ...]:
    """Application(): the declared flags as a tuple; InvalidFlagValue for a wrong type."""
    # FeatureFlags' own answers, given here rather than when the flags service starts.
    declared = tuple(declared)
    for flag in declared:
        if not isinstance(flag, Flag):
            raise InvalidFlagValue(f"declare flags with Flag(...), not {bounded_repr(flag)}")
    if flag_store is not None and not isinstance(flag_store, FlagStore):
        raise InvalidFlagValue(
            f"flag_store must be a FlagStore or None, not {bounded_repr(flag_store)}"
        )
    return declared


def _load_config(config: AppConfig | str | os.PathLike[str] | None) -> AppConfig:
    """Application(): ``config`` itself, loaded from its path, or discovered when None."""
    if config is None:
        return AppConfig.discover()
    if isinstance(config, str | os.PathLike):
        return AppConfig.from_file(os.fspath(config))
    if not isinstance(config, AppConfig):
        raise TypeError(f"config must be an AppConfig, a path or None, not {type(config).__name__}")
    return config


class Application:
    """Foundation's service tree, started in order and stopped in reverse.

    Use ``with Application.start(config) as app:`` from synchronous code (the
    tree runs on an event loop in a named thread), or ``async with
    Application(config) as app:`` inside a loop. ``config`` is an
    :class:`AppConfig`, a path to ``foundation.toml``/``pyproject.toml``, or
    ``None`` to discover one in the working directory. ``wait_for_signal()``
    blocks until SIGINT or SIGTERM, then shuts the tree down in order.

    ``with app:`` is shared: entering starts the tree unless it runs, and
    counts the entry; leaving uncounts it, and the last one out stops the
    tree. So threads (or nested blocks in one thread) may each hold the
    application open, and it stops once all have left. :meth:`stop` still
    stops it at once: the blocks still inside then leave an ended run, which
    changes nothing (not even a new run started since). Entries and starts
    are one at a time: an entry made while the last one out stops the tree
    waits for that stop, then starts a new run. A block's exit is matched to
    the entry its own thread made last; a tree's own worker may enter too,
    while the tree runs or starts. :meth:`start` is not an entry.

    ``name`` names the tree (its supervisor, threads and logs): a supervisor
    name's rule, with 8 characters fewer (``InvalidConfig`` otherwise).

    Example:
        >>> from foundation import Application
        >>> with Application.start(services=("flags",)) as app:
        ...     app.flags.enabled("use_ets_agent_registry")
        False
    """

    def __init__(
        self,
        config: AppConfig | str | os.PathLike[str] | None = None,
        *,
        services: Iterable[str] = ALL_SERVICES,
        workers: Sequence[ChildSpec] = (),
        declared: Iterable[Flag] = (),
        flag_store: FlagStore | None = None,
        name: str = "foundation",
    ) -> None:
        # A supervisor name's rule, with room for the "-workers" of the workers' tree.
        check_name("an application name", name, limit=MAX_NAME_CHARS - len("-workers"))
        chosen = _chosen_services(services)
        workers = _checked_workers(workers)
        declared = _checked_flag_args(declared, flag_store)
        config = _load_config(config)
        self.config = config
        self.services = frozenset(chosen)
        self.name = name
        self._declared = _merge_declared(declared)
        self._given_store = flag_store
        self.flags: FeatureFlags | None = None
        self.monitors: MonitorManager | None = None
        self.registry: Registry | None = None
        self.migration: Migration | None = None
        self.health: AppHealth | None = None
        self.stopped_order: list[str] = []
        specs = self._children(workers)
        self._service_ids = [spec.id for spec in specs]  # start order, for the reports
        self._supervisor = Supervisor(specs, strategy="rest_for_one", name=name, max_restarts=3)
        self._thread: SupervisorThread | None = None
        # A stop asked by a worker runs in this thread (on that tree's loop);
        # a later stop() from elsewhere waits for it and gets its error.
        self._stopper: tuple[threading.Thread, asyncio.AbstractEventLoop] | None = None
        self._stop_error: BaseException | None = None
        self._stop_lock = threading.Lock()
        # Held over every start, and over every stop asked from outside the
        # tree: a ``with app:`` waits for a start or stop under way, never
        # overlaps it. The tree's own threads never take it (see _in_own_tree).
        self._start_lock = threading.Lock()
        # Under _stop_lock: a start is running; a stop() was asked meanwhile;
        # an ``async with`` start is running.
        self._starting = False
        self._stop_asked = False
        self._async_starting = False
        # Under _stop_lock: the ``async with`` run, from its start until its
        # block is left (a stop() may stop it before: see _AsyncRun).
        self._async_run: _AsyncRun | None = None
        # Under _stop_lock: the current run's number, and the ``with app:``
        # blocks still inside it; each thread's stack of the runs it entered.
        self._run = 0
        self._entries = 0
        self._entered = threading.local()
        # Set when the current run's tree has ended (stopped or gave up).
        self._ended: threading.Event | None = None

    # ------------------------------------------------------------------ starting

    @classmethod
    def start(
        cls, config: AppConfig | str | os.PathLike[str] | None = None, **options: Any
    ) -> Application:
        """Build and start the tree on a loop in a named thread; use as a context manager.

        The start is not an entry: ``with Application.start() as app:`` enters
        it once, and leaving that block stops it (see :class:`Application`).
        """
        app = cls(config, **options)
        with app._start_lock:
            app._start_in_thread(entering=False)
        return app

    def _start_in_thread(self, *, entering: bool) -> int:
        """Start a new run (``_start_lock`` held); its number. ``entering``: the
        caller's ``with app:`` is the run's first entry, counted from the start."""
        with self._stop_lock:
            background = self._stopper
        if background is not None:
            stopper, loop = background
            # Race: a worker's stop (or one asked during the last start) may
            # still be stopping the previous run: the same supervisor cannot
            # start before it has stopped.
            if stopper is not threading.current_thread() and not in_thread_child_of(loop):
                stopper.join()
        with self._stop_lock:
            if self._async_run_locked():
                # Race: run by ``async with`` (on another loop), or still stopping:
                # refused before any report or change, as the supervisor would.
                raise self._already_running(by_async_with=False)
            self._starting = True
            self._run += 1
            run = self._run
            # Race: a wait() from another thread while this start runs waits for
            # this run's end, not the previous run's (ended) or none at all.
            ended = self._ended = threading.Event()
            # Race: a worker may enter and leave its application while the tree
            # starts: counting the starter's entry first, its leaving cannot be
            # the last one and stop the tree under the starter.
            self._entries = 1 if entering else 0
        try:
            self._report_starting()
            try:
                self._thread = self._supervisor.run_in_thread(name=f"{self.name}-app")
            except BaseException as exc:
                self._report_start_failed(exc)
                _mark(ended)  # nothing runs: a wait() for this run returns
                raise
            self._report_started()
        finally:
            with self._stop_lock:
                self._starting = False
                asked, self._stop_asked = self._stop_asked, False
                if self._thread is None or asked:
                    self._entries = 0  # failed, or stopping: no entry is inside it
                # Race: a stop() asked while the tree started (a worker stopping
                # it at once: the tree is not ours to stop before its start
                # returns) is done now, as a worker's: in the background.
                if asked and self._thread is not None:
                    thread, self._thread = self._thread, None
                    self._stop_in_background_locked(thread)
        return run

    def _async_run_locked(self) -> bool:
        """Whether ``async with`` (or a stop not yet ended) holds the supervisor
        (``_stop_lock`` held)."""
        return (
            self._async_starting
            or self._async_run is not None
            or self._supervisor.state in ("starting", "running", "stopping")
        )

    def _already_running(self, by_async_with: bool) -> SupervisorError:
        """The SupervisorError of a start refused (reason ``"supervisor_running"``)."""
        if by_async_with:
            why = "async with starts a stopped one only; share a running one with `with app:`"
        else:
            why = "run by `async with` (which `with app:` cannot share), or still stopping"
        return _supervisor_error(
            "supervisor_running",
            None,
            f"Application {self.name!r} is already running, starting or stopping: {why}",
        )

    def _stop_in_background_locked(self, thread: SupervisorThread) -> None:
        """Stop the tree of ``thread`` in a thread of its own (``_stop_lock`` held)."""
        stopper = threading.Thread(
            target=self._stop_reported,
            args=(thread, False, self._ended),
            name=f"{self.name}-app:stop",
            daemon=True,
        )
        self._stopper = (stopper, thread.loop)
        stopper.start()

    def stop(self) -> None:
        """Stop every service in reverse order, at once (idempotent).

        It stops the tree whatever ``with app:`` blocks are still inside it:
        their leaving then changes nothing (see :class:`Application`).

        Called from the tree itself (a worker, or a task child on its loop),
        it starts the stop in a thread of its own and returns at once: the
        stop waits for that worker to return, so it cannot wait for the stop.
        The outcome is reported on the ``foundation.application`` logger as
        usual. A stop() from anywhere else (the main thread leaving ``with
        app:``) meanwhile waits for that stop to end, and raises what it
        raised. Called while the tree starts, from the tree, it returns at
        once and the tree is stopped, in the background, as soon as its start
        returns; from anywhere else, it waits for the start, then stops.

        The same holds for a tree run by ``async with``: from its loop (or
        its tree) the stop runs in a task of that loop, and stop() returns
        at once; from another thread, stop() waits for the stop's end and
        raises what it raised. Leaving the block then only waits for that
        stop (it raises nothing of it: it was reported).
        """
        if self._stop_async_run():
            return
        if self._in_own_tree():
            with self._stop_lock:
                self._stop_from_own_tree_locked()
            return
        # Race: a start under way from another thread: this waits for it, so
        # the tree it stops is a whole one, not a half-started one.
        if not self._lock_unless_stopping():
            self._finish_stop(None)  # (waits only for a stop in the background)
            return
        try:
            with self._stop_lock:
                self._entries = 0
                thread, self._thread = self._thread, None
            self._finish_stop(thread)
        finally:
            self._start_lock.release()

    def _stop_async_run(self) -> bool:
        """stop() of the ``async with`` run, if one runs (False: none does)."""
        with self._stop_lock:
            run = self._async_run
            if run is None:
                return False
            self._ask_async_stop_locked(run)
        if not _on_loop(run.loop):
            # Not the loop (nor a child of the tree on it) the stop runs on:
            # it can wait for it.
            run.stopped.result()
        return True

    def _ask_async_stop_locked(self, run: _AsyncRun) -> None:
        """Begin ``run``'s stop on its loop unless asked already (``_stop_lock``
        held); while it starts, __aenter__ begins it once the start returns."""
        if run.asked:
            return
        run.asked = True
        if self._async_starting:
            return
        try:
            run.loop.call_soon_threadsafe(self._begin_async_stop, run)
        except RuntimeError:  # race: its loop closed (its block never left): nothing runs
            run.stopped.set_result(None)

    def _begin_async_stop(self, run: _AsyncRun) -> None:
        """On ``run``'s loop: its stop, in a task of its own (see stop())."""
        run.task = run.loop.create_task(self._stop_async(run), name=f"{self.name}-app:stop")

    async def _stop_async(self, run: _AsyncRun) -> None:
        """Stop the ``async with`` tree and report it; the outcome in ``run.stopped``."""
        import asyncio

        self._report_stopping()
        try:
            try:
                await self._stop_tree(run)
            finally:
                _mark(run.ended)
        except BaseException as err:  # for whoever waits for this stop
            cut = isinstance(err, asyncio.CancelledError | KeyboardInterrupt)
            if run.cancelled is None or not cut:  # (cut short: reported by _stop_tree)
                self._report_stop_failed(err)
            run.stopped.set_exception(err)
            return
        self._report_stopped()
        run.stopped.set_result(None)

    async def _stop_tree(self, run: _AsyncRun) -> None:
        """Stop the tree; the first cancellation of the caller meanwhile (a
        Ctrl-C under ``asyncio.run``, an ``asyncio.timeout()``) lets the stop
        under way go on to its end (kept in ``run.cancelled``, raised after)."""

        def met(exc: asyncio.CancelledError) -> None:
            run.cancelled = exc

        await stop_past_cancel(
            self._supervisor, met, self._report_stop_cancelled, self._report_stop_cut_short
        )

    def _lock_unless_stopping(self) -> bool:
        """Take ``_start_lock`` (from outside the tree); False, not taken, once no
        tree runs or starts: stopped, or being stopped by another thread.

        Race: that other thread's stop may be waiting for this one (a worker
        joining a helper thread that calls ``stop()`` or leaves its own ``with
        app:`` when it sees the shutdown): waiting for the lock until that stop
        ends would hold the shutdown until the worker's ``shutdown_timeout``.
        So the wait looks again at the state every ``_LOCK_POLL`` seconds.
        """
        while not self._start_lock.acquire(timeout=_LOCK_POLL):
            with self._stop_lock:
                if self._thread is None and not self._starting:
                    return False
        return True

    def _in_own_tree(self) -> bool:
        """Whether the calling thread is one the tree's start or stop waits for:
        one of its thread children, or its event loop (a task child)."""
        loop: asyncio.AbstractEventLoop | None = getattr(self._supervisor, "_loop", None)
        if loop is None:  # never started
            return False
        return _on_loop(loop)

    def _stop_from_own_tree_locked(self) -> None:
        """stop() from the tree itself (``_stop_lock`` held): never waits."""
        self._entries = 0
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop_in_background_locked(thread)
        elif self._starting:
            self._stop_asked = True  # done once the start returns (_start_in_thread)

    def _finish_stop(self, thread: SupervisorThread | None) -> None:
        """Stop ``thread``'s tree here, or wait for a stop in the background
        (from outside the tree; ``_start_lock`` held when ``thread`` is given)."""
        if thread is not None:
            self._stop_reported(thread, True, self._ended)
            return
        with self._stop_lock:
            background = self._stopper
        if background is None:
            return
        stopper, loop = background
        if stopper is threading.current_thread() or in_thread_child_of(loop):
            return  # the stop waits for this very thread: it cannot wait for the stop
        stopper.join()
        with self._stop_lock:
            error, self._stop_error = self._stop_error, None
        if error is not None:
            raise error

    def _stop_reported(
        self, thread: SupervisorThread, reraise: bool, ended: threading.Event | None
    ) -> None:
        """Stop ``thread``'s tree and report it; ``ended`` is that run's end, taken
        with the thread (a start made once the tree is stopped has its own)."""
        if ended is None or not ended.is_set():
            # A tree that ended already (it gave up: its services stopped and
            # reported, then app_failed; or its root supervisor ended on its
            # own) is past stopping: no "stopping" line after its end.
            self._report_stopping()
        cut: list[bool] = []

        def cut_short() -> None:  # a Ctrl-C cut the stop: the handle asks us to say so
            cut.append(True)
            self._report_stop_cut_short()

        try:
            try:
                thread._stop(cut_short)
            finally:
                # Its loop is closed: the tree has ended, whatever stop() raised.
                # Race: an ``async with app:`` (on another loop) may start a new
                # run as soon as the supervisor is stopped: this run's end is set,
                # not the newest one's.
                _mark(ended)
        except BaseException as exc:
            if not cut:  # (cut short: one record, app_stop_cut_short, as async with's)
                self._report_stop_failed(exc)
            if reraise:
                raise
            with self._stop_lock:
                self._stop_error = exc  # for a stop() waiting for this one
            return
        self._report_stopped()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the tree ends, its services stopped: stopped (returns) or
        given up (raises).

        The application is OTP's *permanent* application: its tree giving up
        (restart intensity exceeded) is the program's end, and this is how a
        main thread learns it. Returns at once when the application is not
        running; while another thread starts it, waits for that run (returns
        at once if that start fails). Its services are already stopped when it
        raises.

        Raises:
            RestartIntensityExceeded: the tree gave up (``supervisor.failure``).
            TimeoutError: still running after ``timeout`` seconds.
            SupervisorError: called from the tree itself, running, starting or
                stopping (a worker, or a task child on its loop): the tree's end
                waits for that child, so it would wait for itself.
        """
        ended = self._ended
        # Its own tree, starting or stopping too (the tree then is no longer,
        # or not yet, ``_thread``): the end it would wait for waits for it.
        # Once ended (an ``async with`` block left, on its loop), it returns.
        if self._in_own_tree() and not (ended is not None and ended.is_set()):
            raise SupervisorError(
                f"Application {self.name!r}: wait() called from a child of its own tree, "
                "whose end waits for that child"
            )
        if ended is not None and not ended.wait(timeout):
            raise TimeoutError(f"application {self.name!r} still running after {timeout} s")
        failure = self._supervisor.failure
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------ reports

    def _report_starting(self) -> None:
        self.stopped_order = []  # this run's: a restarted application starts a new list
        ids = self._service_ids
        _report(
            logging.INFO,
            "app_starting",
            "Application %s starting: %s",
            self.name,
            ", ".join(ids),
            application=self.name,
            reason="starting",
            services=ids,
        )

    def _report_started(self) -> None:
        self._watch()
        ids = self._service_ids
        _report(
            logging.INFO,
            "app_started",
            "Application %s started: %s",
            self.name,
            ", ".join(ids),
            application=self.name,
            reason="started",
            services=ids,
        )

    def _report_start_failed(self, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt):
            # The operator's Ctrl-C, not a failure: one line, no traceback (the
            # start is rolled back and the KeyboardInterrupt re-raised).
            _report(
                logging.INFO,
                "app_start_interrupted",
                "Application %s interrupted during start",
                self.name,
                application=self.name,
                reason="interrupted",
            )
            return
        child = getattr(exc, "child", None)
        # A child's failed start has its crash report, with the traceback, on
        # foundation.supervision.crash just before: this one line says so
        # rather than log the same traceback again.
        logged = traceback_logged(exc)
        _report(
            logging.ERROR,
            "app_start_failed",
            "Application %s failed to start: %r"
            + (" (traceback in the crash report above)" if logged else ""),
            self.name,
            exc,
            application=self.name,
            service=child if isinstance(child, str) else None,
            reason="start_error",
            exc=None if logged else exc,
        )

    def _report_stopping(self) -> None:
        _report(
            logging.INFO,
            "app_stopping",
            "Application %s stopping",
            self.name,
            application=self.name,
            reason="stopping",
        )

    def _report_stopped(self) -> None:
        failed = self._supervisor.failure is not None
        _report(
            logging.INFO,
            "app_stopped",
            "Application %s stopped%s",
            self.name,
            " (after failing)" if failed else "",
            application=self.name,
            reason="failed" if failed else "shutdown",
            stopped_order=list(self.stopped_order),
        )

    def _report_stop_cancelled(self) -> None:
        # A Ctrl-C under asyncio.run, or a timeout, while async with stops the
        # tree: no failure; the stop goes on to its end, then the cancellation.
        _report(
            logging.INFO,
            "app_stop_cancelled",
            "Application %s: stop cancelled; it completes first, then the cancellation goes on",
            self.name,
            application=self.name,
            reason="cancelled",
        )

    def _report_stop_cut_short(self) -> None:
        # A second cancellation while waiting for that stop, the loop's end
        # cancelling the stop itself, or a Ctrl-C cutting with app:'s stop (its
        # handle's loop closed): the children still running, named.
        left = running_paths(self._supervisor)
        _report(
            logging.WARNING,
            "app_stop_cut_short",
            "Application %s: stop cancelled before its end; still running: %s",
            self.name,
            ", ".join(left) or "none",
            application=self.name,
            reason="cancelled",
            children=left,
        )

    def _report_stop_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ShutdownError) and _SIGNAL_STOP.get():
            return  # wait_for_signal() reports it (a WARNING, as run() does)
        if isinstance(exc, KeyboardInterrupt):
            # The operator's Ctrl-C, not a failure (as during the start): one
            # line, no traceback; the KeyboardInterrupt goes on. (One that cut
            # the stop short is app_stop_cut_short instead: see _stop_reported.)
            _report(
                logging.INFO,
                "app_stop_interrupted",
                "Application %s interrupted during stop",
                self.name,
                application=self.name,
                reason="interrupted",
            )
            return
        _report(
            logging.ERROR,
            "app_stop_failed",
            "Application %s failed to stop cleanly: %r",
            self.name,
            exc,
            application=self.name,
            reason="shutdown_error",
            exc=exc,
        )

    def _watch(self) -> None:
        """Report the tree giving up (restart intensity exceeded) when it happens,
        and mark the run ended (for :meth:`wait` and :meth:`wait_for_signal`)."""
        ended = self._ended  # made by the start, before the tree started
        if ended is None:
            return
        task = self._supervisor.task
        if task is None:
            ended.set()
            return
        supervisor = self._supervisor

        def done(_done: asyncio.Future[None]) -> None:
            failure = supervisor.failure
            if failure is not None:
                _report(
                    logging.ERROR,
                    "app_failed",
                    "Application %s failed: %s",
                    self.name,
                    failure,
                    application=self.name,
                    reason="failed",
                    exc=failure,
                )
            ended.set()  # after the report: a waiter that wakes finds it logged

        # The supervisor's end, once its children are stopped; not its task,
        # which ends as a stop begins (a wait() then returned with the services
        # still stopping, a program ending there cut their stop short).
        finished = supervisor._done_future()
        try:
            # Future callbacks are not thread-safe: add it on the tree's own loop
            # (a future already done still gets it, called soon).
            task.get_loop().call_soon_threadsafe(finished.add_done_callback, done)
        except RuntimeError:  # race: the loop already closed, so the tree has ended
            done(finished)

    def _report_service(self, ctx: ChildContext, service: str, *, started: bool) -> None:
        if not _log.isEnabledFor(logging.INFO):
            return
        ids = self._service_ids
        position = ids.index(service) + 1 if service in ids else 0
        if started:
            how = "restarted" if ctx.attempt else "started"
            _report(
                logging.INFO,
                "service_started",
                "Application %s: service %s %s (%d/%d)",
                self.name,
                service,
                how,
                position,
                len(ids),
                application=self.name,
                service=service,
                reason=how,
                attempt=ctx.attempt,
            )
        else:
            _report(
                logging.INFO,
                "service_stopped",
                "Application %s: service %s stopped",
                self.name,
                service,
                application=self.name,
                service=service,
                reason="shutdown",
            )

    @property
    def supervisor(self) -> Supervisor:
        """The root supervisor (for ``which_children`` and friends)."""
        return self._supervisor

    def which_children(self) -> list[Any]:
        """The root supervisor's children, in start order."""
        if self._thread is not None:
            return self._thread.which_children()
        return self._supervisor.which_children()

    def wait_for_signal(
        self,
        signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
        *,
        on_installed: Callable[[], None] | None = None,
    ) -> int:
        """Block until one of ``signals`` arrives (main thread only), then stop in order.

        The signals are handled as :func:`foundation.supervision.run` handles
        them, with its reports (``foundation.supervision.runner``): the first
        stops the tree in order; a second one during that stop forces it
        (process children SIGKILLed, tasks cancelled, threads asked to stop
        and left running) and puts the previous handlers back, so a third
        one meets them (by default: SIGTERM kills the process, SIGINT raises
        ``KeyboardInterrupt``). A thread that outlives its ``shutdown_timeout``
        is reported (WARNING) and left running; the stop still completed.

        ``on_installed`` runs once the handlers are in place: announce readiness
        there, so a signal sent on that announcement cannot arrive before the
        handler (it would kill the process with the default action).
        Returns the signal number received after an orderly stop, ``128 +
        signo`` (run()'s exit status) after a stop forced by a second signal
        ``signo``, or 0 when the tree ended without one (a worker or another
        thread called :meth:`stop`).

        Raises:
            RestartIntensityExceeded: the tree gave up (OTP: a permanent
                application's exit stops the node); it is stopped first.
            SupervisorError: called off the main thread with ``signals`` (only
                the main thread can handle signals); the tree is left running.
        """
        signals = tuple(signals)
        if signals and threading.current_thread() is not threading.main_thread():
            # As supervision.run(): refused before anything changes (was the
            # stdlib's ValueError from signal.signal).
            raise SupervisorError(
                f"Application {self.name!r}: wait_for_signal() installs signal handlers: "
                "call it from the main thread (elsewhere, use wait())"
            )
        # Signals, then 0 once a stop ends. SimpleQueue.put is safe in a signal
        # handler (which interrupts the main thread anywhere, even in get()).
        arrivals: queue.SimpleQueue[int] = queue.SimpleQueue()
        # The runner's handlers (foundation.supervision.run): restore_after=2,
        # so the second signal puts the previous ones back at once and a third
        # meets them; the rest are restored when the stop is over.
        status = 0
        with SignalHandlers(signals, arrivals.put, restore_after=2):
            if on_installed is not None:
                on_installed()
            signo = self._first_signal(arrivals)
            if signo:
                status = self._stop_on_signal(signo, arrivals)
        if not signo:
            self.stop()  # ended without a signal: gave up, or stopped elsewhere
        failure = self._supervisor.failure
        if failure is not None:  # race: gave up as the signal came; the failure says more
            raise failure
        return status

    def _first_signal(self, arrivals: queue.SimpleQueue[int]) -> int:
        """wait_for_signal(): the first signal, or 0 once the tree ended without one."""
        ended = self._ended  # None: never started, so only a signal ends the wait
        # Short waits: between them, a tree that ended without a signal (gave
        # up, or stopped) ends the wait.
        while True:
            with contextlib.suppress(queue.Empty):
                return arrivals.get(timeout=0.2)
            if ended is not None and ended.is_set():
                return 0

    def _stop_on_signal(self, signo: int, arrivals: queue.SimpleQueue[int]) -> int:
        """wait_for_signal(): stop in order after ``signo``, in a helper thread,
        while the main thread (which receives the signals) waits for the stop's
        end or a second signal, as run() does; the status (see wait_for_signal)."""
        report_signal(self.name, signo)
        errors: list[BaseException] = []

        def stop() -> None:
            _SIGNAL_STOP.set(True)  # (this thread's own context)
            try:
                self.stop()
            except BaseException as exc:  # handed to the main thread
                errors.append(exc)
            finally:
                arrivals.put(0)

        stopper = threading.Thread(target=stop, name=f"{self.name}-app:signal-stop", daemon=True)
        stopper.start()
        # Race: the stop's end and a second signal may both be queued: the
        # first one queued decides, as run()'s wait on both.
        second = arrivals.get()
        if not second:
            error = errors[0] if errors else None
            if isinstance(error, ShutdownError):
                # With the status returned (none if the tree gave up meanwhile:
                # wait_for_signal() raises its failure instead).
                gave_up = self._supervisor.failure is not None
                report_left_running(self.name, error, None if gave_up else signo)
            elif error is not None:
                raise error
            return signo
        status = report_forced(self.name, second, self._force(stopper))
        stopper.join(FORCE_GRACE)  # the forced children's exits seen, the services closed
        return status

    def _force(self, stopper: threading.Thread) -> list[str]:
        """Force the tree on its loop (see supervision.run); what was killed.
        ``stopper``: the thread of the orderly stop, which ends with the tree."""
        import concurrent.futures

        loop: asyncio.AbstractEventLoop | None = getattr(self._supervisor, "_loop", None)
        forced: concurrent.futures.Future[list[str]] = concurrent.futures.Future()

        def force() -> None:  # on the tree's loop, where its runs live
            try:
                forced.set_result(force_tree(self._supervisor))
            except BaseException as exc:
                forced.set_exception(exc)

        if loop is None:
            return []
        try:
            loop.call_soon_threadsafe(force)
        except RuntimeError:  # race: the stop ended and closed the loop: nothing is left
            return []
        return _forced_once_run(forced, stopper)

    def __enter__(self) -> Self:
        """Start the tree unless it runs, and count this entry (see :class:`Application`).

        Raises:
            StartError: a service or worker failed to start (nothing is left
                running, and no entry is counted).
            SupervisorError: entered from the tree itself while it stops, or
                the application is run by ``async with`` (``.reason``
                ``"supervisor_running"``).
        """
        if self._in_own_tree():
            # A worker (or task child) entering its own application: the tree
            # runs, or starts with this child in it; the start lock may be held
            # by a start or stop that waits for this very thread, so not taken.
            with self._stop_lock:
                if self._thread is None and not (self._starting and not self._stop_asked):
                    # Stopping (or run by ``async with``): it cannot start again
                    # before this child returns, and waiting would wait for itself.
                    raise SupervisorError(
                        f"Application {self.name!r} entered from a child of its own tree "
                        "while it stops: it cannot start again before that child returns"
                    )
                self._entries += 1
                self._entered_runs().append(self._run)
            return self
        # Race: threads entering at once (OTP's otp_2973): one starts the tree
        # while the others wait on the lock, then find it running; if that
        # start failed, the next one tries again and raises its own error.
        # Race: the last one out stops the tree under the same lock: an entry
        # made meanwhile waits for that stop, then starts a new run; it never
        # counts itself into a tree that is being stopped.
        with self._start_lock:
            with self._stop_lock:
                running = self._thread is not None
                if running:
                    self._entries += 1
                    run = self._run
            if not running:
                run = self._start_in_thread(entering=True)
            self._entered_runs().append(run)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Uncount this thread's last entry; the last one out stops the tree."""
        runs = self._entered_runs()
        run = runs.pop() if runs else None  # None: entered in another thread
        if self._in_own_tree():
            with self._stop_lock:
                if self._leave_locked(run):
                    self._stop_from_own_tree_locked()
            return
        if not self._lock_unless_stopping():
            return  # the run this block entered is stopped, or being stopped: left
        try:
            with self._stop_lock:
                if not self._leave_locked(run):
                    return
                # Race: deciding to stop and taking the tree are one step under
                # _stop_lock: a worker entering meanwhile either counts before
                # (and this is not the last exit) or finds the tree stopping.
                self._entries = 0
                thread, self._thread = self._thread, None
            self._finish_stop(thread)
        finally:
            self._start_lock.release()

    def _entered_runs(self) -> list[int]:
        """This thread's stack of the runs its open ``with app:`` blocks entered."""
        runs: list[int] | None = getattr(self._entered, "runs", None)
        if runs is None:
            runs = self._entered.runs = []
        return runs

    def _leave_locked(self, run: int | None) -> bool:
        """Uncount one entry into ``run`` (``_stop_lock`` held): True for the last one out."""
        if run is not None and run != self._run:
            # Race: the run this block entered was stopped (stop()) and another
            # started since: leaving an ended run changes nothing in the new one.
            return False
        if self._entries > 1:
            self._entries -= 1
            return False
        # The last one out, or the run was stopped already (stop() again is a
        # no-op, or waits for the stop under way and raises what it raised).
        return True

    async def __aenter__(self) -> Self:
        """Start the tree on the running loop; leaving the block stops it.

        Not shared, unlike ``with app:``: it starts a stopped application only.

        Raises:
            StartError: a service or worker failed to start (nothing is left
                running).
            SupervisorError: the application runs, starts or stops already
                (``.reason`` ``"supervisor_running"``); nothing is logged.
        """
        with self._stop_lock:
            # Refused before any report: the start would not even begin (was
            # logged as app_starting, then app_start_failed). Race: a start or
            # stop under way in another thread holds _start_lock, or is marked.
            if (
                self._thread is not None
                or self._starting
                or self._start_lock.locked()
                or self._async_run_locked()
            ):
                raise self._already_running(by_async_with=True)
            import asyncio

            self._async_starting = True
            ended = self._ended = threading.Event()  # this run's, before it starts (wait())
            run = self._async_run = _AsyncRun(asyncio.get_running_loop(), ended)
        started = False
        # A Ctrl-C under asyncio.run wakes the loop at once (supervision/_wakeup.py).
        run.wakeup = _wakeup.install(run.loop)
        try:
            self._report_starting()
            try:
                await self._supervisor.start()
            except BaseException as exc:
                self._report_start_failed(exc)
                _mark(ended)
                raise
            self._report_started()
            started = True
        finally:
            if not started:
                _wakeup.uninstall(run.loop, run.wakeup)
            self._async_start_ended(run, started)
        return self

    def _async_start_ended(self, run: _AsyncRun, started: bool) -> None:
        """__aenter__'s end: a failed start leaves no run; a stop() asked while
        it started begins now (as a worker's: in the background)."""
        with self._stop_lock:
            self._async_starting = False
            if not started:
                self._async_run = None
                if not run.stopped.done():  # a stop() waiting for it: nothing runs
                    run.stopped.set_result(None)
            elif run.asked:
                self._begin_async_stop(run)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the tree (unless a ``stop()`` did); a cancellation met in the
        block or meanwhile goes on after it (see ``raised_on_exit``)."""
        with self._stop_lock:
            run = self._async_run
            if run is None:  # (entered elsewhere: nothing of this block runs)
                return
            begun, run.asked = run.asked, True
        try:
            if not begun:
                await self._stop_async(run)
                error = raised_on_exit(run.stopped.exception(), run.cancelled, exc)
                if error is not None:
                    raise error
            else:
                await _stopped_by_stop(run)
        finally:
            _wakeup.uninstall(run.loop, run.wakeup)
            with self._stop_lock:
                self._async_run = None

    # ------------------------------------------------------------------ the tree

    def _children(self, workers: Sequence[ChildSpec]) -> list[ChildSpec]:
        order = [
            ("flags", self._run_flags),
            ("monitors", self._run_monitors),
            ("registry", self._run_registry),
            ("migration_monitor", self._run_migration_monitor),
        ]
        specs = [
            ChildSpec(service, run, kind="thread", shutdown_timeout=10.0, ready_timeout=30.0)
            for service, run in order
            if service in self.services
        ]
        if workers:
            specs.append(
                ChildSpec(
                    "workers",
                    lambda: Supervisor(
                        workers, name=f"{self.name}-workers", registry=self.registry
                    ),
                    kind="supervisor",
                )
            )
        return specs

    def _serve(self, ctx: ChildContext, service: str) -> None:
        # Reported before ready: once ready, the next service starts (and reports).
        self._report_service(ctx, service, started=True)
        ctx.ready()
        ctx.stopping.wait()
        self.stopped_order.append(service)
        self._report_service(ctx, service, started=False)

    def _run_flags(self, ctx: ChildContext) -> None:
        store = self._given_store or self._make_flag_store()
        flags = FeatureFlags(self._declared, store=store)
        try:
            flags.load_from_config(dict(self.config.flags))
            self.flags = flags
            self._serve(ctx, "flags")
        finally:
            self.flags = None
            flags.close()
            if self._given_store is None:
                store.close()

    def _run_monitors(self, ctx: ChildContext) -> None:
        manager = MonitorManager(name=f"{self.name}-monitors")
        self.monitors = manager
        try:
            self._serve(ctx, "monitors")
        finally:
            self.monitors = None
            manager.close()

    def _run_registry(self, ctx: ChildContext) -> None:
        registry = self._make_registry()
        self.registry = registry
        try:
            self._serve(ctx, "registry")
        finally:
            self.registry = None
            registry.close()

    def _run_migration_monitor(self, ctx: ChildContext) -> None:
        if self.flags is None:
            raise InvalidConfig("the migration monitor needs the flags service")
        readiness = []
        readiness_of = getattr(self.registry, "readiness", None)
        if readiness_of is not None:
            readiness.append(readiness_of)
        health = AppHealth(self.registry, supervisor=self._supervisor)
        self.health = health
        thresholds = None
        if self.config.wants_auto_rollback:
            thresholds = HealthThresholds(
                max_error_rate=self.config.max_error_rate,
                max_restarts_per_minute=self.config.max_restarts_per_minute,
                max_latency_ratio=self.config.max_latency_ratio,
            )
        migration = Migration(
            self.flags,
            MigrationPlan.default(),
            readiness=readiness,
            health=health.sample if thresholds else None,
            thresholds=thresholds,
        )
        self.migration = migration
        watcher = (
            AutoRollback(migration, interval=self.config.health_interval) if thresholds else None
        )
        try:
            self._serve(ctx, "migration_monitor")
        finally:
            if watcher is not None:
                watcher.stop()
            self.migration = None
            self.health = None
            health.close()

    # ------------------------------------------------------------------ backends

    def _make_flag_store(self) -> FlagStore:
        config = self.config
        limit = config.flag_store_history_limit
        # Only what the config sets: otherwise the store's own default.
        options: dict[str, Any] = (
            {} if limit is None else {"history_limit": None if limit == "unlimited" else limit}
        )
        if config.flag_store == "sqlite":
            from foundation.flags import SQLiteFlagStore

            return SQLiteFlagStore(config.flag_store_path or "flags.sqlite3", **options)
        if config.flag_store == "redis":
            from foundation.flags import RedisFlagStore

            return RedisFlagStore(
                str(config.flag_store_redis_url or config.redis_url),
                namespace=config.flag_store_namespace or config.namespace,
                **options,
            )
        return MemoryFlagStore(**options)

    def _make_registry(self) -> Registry:
        from foundation.registry import MemoryRegistry, MigratingRegistry, ThreadLocalRegistry

        indexed = self.config.indexed
        if self.config.registry_backend == "redis":
            from foundation.registry import RedisRegistry

            target: Registry = RedisRegistry(
                str(self.config.redis_url),
                namespace=self.config.namespace,
                indexed=indexed,
                lease_ttl=self.config.lease_ttl,
                manager=self.monitors,
            )
        else:
            target = MemoryRegistry(indexed=indexed, manager=self.monitors)
        if self.flags is None:
            return target
        legacy = ThreadLocalRegistry(indexed=indexed)
        return MigratingRegistry(legacy, target, self.flags)


class _AsyncRun:
    """An ``async with`` run: its loop, its end, and its stop once asked
    (by stop() or by leaving the block; ``stopped`` holds the outcome)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ended: threading.Event) -> None:
        import concurrent.futures

        self.loop = loop
        self.ended = ended
        self.asked = False
        self.stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.task: asyncio.Task[None] | None = None  # a stop() begun in the background
        # The caller's cancellation met while its block's exit stopped the tree
        # (raised once the stop is over, or cut short).
        self.cancelled: asyncio.CancelledError | None = None
        self.wakeup = False  # whether its block set up the signal wakeup fd


async def _stopped_by_stop(run: _AsyncRun) -> None:
    """Leaving the ``async with`` block after a stop(): wait for that stop's end;
    its failure, reported already (and raised to a stop() that waited), is not raised."""
    import asyncio

    waiter = asyncio.wrap_future(run.stopped)
    await asyncio.wait({waiter})
    if not waiter.cancelled():
        waiter.exception()  # retrieved: it was reported


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the calling thread runs ``loop``, or is a thread child supervised on it."""
    import asyncio

    if in_thread_child_of(loop):
        return True
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:  # no loop runs in this thread
        return False


def _forced_once_run(
    forced: concurrent.futures.Future[list[str]], stopper: threading.Thread
) -> list[str]:
    """What the force did, once it has run on the tree's loop.

    A child may block that loop (a task's cleanup that does not return to
    it): the force runs when the loop is free again, as run()'s does, and
    what it killed is then reported. Waits in short steps, so a third signal
    (the previous handlers: KeyboardInterrupt) ends the wait at once. Empty
    only when the stop ended (its loop closed) before the force could run.
    """
    import concurrent.futures

    while True:
        try:
            return forced.result(_FORCE_POLL)
        except concurrent.futures.TimeoutError:
            if not stopper.is_alive() and not forced.done():
                return []  # the tree ended first: nothing was left to force


def _mark(ended: threading.Event | None) -> None:
    """Mark a run's end (``None``: no run had one)."""
    if ended is not None:
        ended.set()


def _merge_declared(extra: Iterable[Flag]) -> list[Flag]:
    declared = {f.name: f for f in DEFAULT_FLAGS}
    for flag in extra:
        declared[flag.name] = flag
    return list(declared.values())


fixup_module_paths(globals(), __name__)
