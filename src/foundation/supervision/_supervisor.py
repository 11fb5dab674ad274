"""Supervisor and DynamicSupervisor: OTP supervision on an asyncio event loop.

Concurrency model: every state change happens on the supervisor's event loop.
Child exits arrive as events on a queue consumed by one task (``_run``); that
task and the management calls hold one ``asyncio.Lock`` while they change the
tree, so a restart and a ``terminate_child`` never interleave. Readiness waits
also watch ``_stop_requested``, so a stop never waits behind a child that will
not become ready. From other threads, use :meth:`Supervisor.run_in_thread`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from foundation import telemetry
from foundation._retry import RetryBackoff
from foundation.errors import (
    AlreadyRegistered,
    BackendUnavailable,
    NotAlive,
    RestartIntensityExceeded,
    ShutdownError,
    StartError,
    SupervisorError,
)
from foundation.supervision import _reports as reports
from foundation.supervision._runs import Run, make_run
from foundation.supervision._spec import (
    _AUTO_SHUTDOWN,
    _STRATEGIES,
    AutoShutdown,
    Backoff,
    ChildCounts,
    ChildExit,
    ChildInfo,
    ChildSpec,
    ChildStatus,
    Strategy,
    _check_number,
    _check_specs,
    check_childspecs,
)

if TYPE_CHECKING:
    # asyncio is imported in the methods that use it: importing it costs more than
    # the rest of `import foundation`, and none of them runs before start().
    import asyncio

    from foundation.registry import Registry
    from foundation.supervision._thread import SupervisorThread

__all__ = ["ChildErrorReason", "DynamicSupervisor", "Supervisor", "SupervisorState"]

_log = logging.getLogger("foundation.supervision")

#: Telemetry events of degraded mode (see ``Supervisor``, "Registry outages").
REGISTRATION_DEGRADED = "foundation.supervision.registration_degraded"
REGISTRATION_RESTORED = "foundation.supervision.registration_restored"
REGISTRATION_ABANDONED = "foundation.supervision.registration_abandoned"

SupervisorState = Literal["new", "starting", "running", "stopping", "stopped", "failed"]
_RunStatus = Literal["running", "restarting", "stopped"]
"""A child's own status; ``which_children`` shows a stopped one "abandoned" while
its abandoned thread (or task) runs (``ChildStatus``)."""
ChildErrorReason = Literal[
    "not_found",
    "running",
    "restarting",
    "already_started",
    "already_present",
    "max_children",
    "supervisor_running",
    "supervisor_not_running",
    "simple_one_for_one",
    "killed",
]


def _error(
    reason: ChildErrorReason, child: str | None, message: str, handle: Any = None
) -> SupervisorError:
    """A ``SupervisorError`` carrying OTP's reason (``.reason``), the child id
    and, for ``"already_started"``, the running handle (``.handle``)."""
    err = SupervisorError(message)
    err.reason = reason
    err.child = child
    err.handle = handle
    return err


def _not_dynamic(call: str, child: str, why: str) -> SupervisorError:
    """OTP's ``{error, simple_one_for_one}``: ``call`` does not apply to a
    DynamicSupervisor's ``child``, because ``why``."""
    return _error(
        "simple_one_for_one",
        child,
        f"a DynamicSupervisor does not support {call} (child {child!r}): {why}",
    )


def _describe(exit: ChildExit) -> str:
    if exit.exception is not None:
        return f"{exit.reason}: {exit.exception!r}"
    if exit.exit_code is not None and exit.reason == "exit":
        return f"exit code {exit.exit_code}"
    if exit.signal is not None:
        return f"killed by signal {exit.signal}"
    return exit.reason


def _still_running(handle: Any) -> bool:
    """Whether an abandoned run's handle (a thread, or a task) still runs."""
    done = getattr(handle, "done", None)
    if callable(done):  # an asyncio.Task
        return not done()
    alive = getattr(handle, "is_alive", None)
    return bool(alive()) if callable(alive) else False


class _Child:
    __slots__ = (
        "abandoned",
        "consecutive",
        "owned",
        "pending",
        "registered",
        "registrar",
        "restarts",
        "run",
        "spec",
        "status",
        "write",
    )

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.run: Run | None = None
        self.status: _RunStatus = "stopped"
        self.restarts = 0  # restarts since the supervisor started
        self.consecutive = 0  # restarts since it last ran for min_uptime (backoff exponent)
        self.pending: object | None = None  # token of a delayed (backoff) restart
        self.registered = False  # the current run's handle is in the registry
        self.registrar: asyncio.Task[None] | None = None  # degraded mode: retries registering
        self.write: asyncio.Task[None] | None = None  # this child's last registry write
        self.owned: tuple[Any, ...] = ()  # agents of its latest registration attempts (<= 3)
        self.abandoned: Any = None  # the handle of its last run, abandoned (until it starts)


# The events of the supervisor's queue are plain classes, not dataclasses:
# nothing compares, copies or prints them, and `import foundation` would pay
# about a millisecond per dataclass built (tests/test_import_cost.py).


class _Exited:
    """A child's run ended with ``exit``."""

    __slots__ = ("exit", "id", "run")

    def __init__(self, id: str, run: Run, exit: ChildExit) -> None:
        self.id = id
        self.run = run
        self.exit = exit


class _StartFailed:
    """A child could not be restarted: ``exit`` says why."""

    __slots__ = ("exit", "id")

    def __init__(self, id: str, exit: ChildExit) -> None:
        self.id = id
        self.exit = exit


class _Round:
    """The token of one delayed restart round; ``owner`` is the child whose exit began it."""

    __slots__ = ("owner",)

    def __init__(self, owner: str) -> None:
        self.owner = owner


class _RestartDue:
    """The delayed restart round ``token`` is due for the children ``ids``."""

    __slots__ = ("ids", "token")

    def __init__(self, token: object, ids: tuple[str, ...]) -> None:
        self.token = token
        self.ids = ids


_STOP = object()


def _checked_children(
    children: Iterable[ChildSpec], auto_shutdown: AutoShutdown
) -> tuple[ChildSpec, ...]:
    """Supervisor(): the children as a tuple; raise unless they fit ``auto_shutdown``."""
    specs = tuple(children)
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"children must be ChildSpec instances, not {spec!r}")
    if auto_shutdown not in _AUTO_SHUTDOWN:
        raise ValueError(f"auto_shutdown must be one of {_AUTO_SHUTDOWN}, not {auto_shutdown!r}")
    problem = _check_specs(specs, auto_shutdown)
    if problem is not None:
        raise ValueError(problem)
    return specs


def _check_restart_policy(
    strategy: Strategy, max_restarts: int, max_seconds: float, min_uptime: float | None
) -> None:
    """Supervisor(): raise unless the strategy and restart intensity arguments are valid."""
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {_STRATEGIES}, not {strategy!r}")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ValueError(f"max_restarts must be an int >= 0, not {max_restarts!r}")
    _check_number("max_seconds", max_seconds)
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, not {max_seconds!r}")
    if min_uptime is not None:
        _check_number("min_uptime", min_uptime)
        if not min_uptime >= 0:
            raise ValueError(f"min_uptime must be >= 0 or None, not {min_uptime!r}")


def _check_backoff_and_registry(backoff: Backoff | None, registry: Registry | None) -> None:
    """Supervisor(): raise unless ``backoff`` and ``registry`` are of their types (or None)."""
    if backoff is not None and not isinstance(backoff, Backoff):
        raise TypeError(f"backoff must be a Backoff, not {backoff!r}")
    if registry is not None:
        from foundation.registry._types import Registry as _Registry

        if not isinstance(registry, _Registry):
            raise TypeError(f"registry must be a Registry or None, not {type(registry).__name__}")


def _restarts_after(spec: ChildSpec, exit: ChildExit) -> bool:
    """True if ``spec``'s restart type restarts its child after ``exit``."""
    return spec.restart == "permanent" or (spec.restart == "transient" and exit.abnormal)


class Supervisor:
    """Starts children in order, restarts them by strategy, stops them in reverse.

    Strategies: ``"one_for_one"`` restarts only the child that ended;
    ``"one_for_all"`` stops every other child (reverse order) and restarts all;
    ``"rest_for_one"`` does that for the children started after it.

    Restart intensity: more than ``max_restarts`` restarts within
    ``max_seconds``, counted across all children, and the supervisor gives up:
    it stops every child in reverse order, ``wait()`` raises
    :class:`~foundation.errors.RestartIntensityExceeded` (whose ``__cause__`` is
    the last child's exception), and a parent supervisor sees this one as a
    crashed child. A failed restart counts as one more crash.

    Start: children start one at a time, each ready (see :class:`ChildSpec`)
    before the next. If one fails, those already started are stopped in reverse
    and :class:`~foundation.errors.StartError` names the child, with the cause
    as ``__cause__``. Stop: reverse order, each child within its
    ``shutdown_timeout``, then killed where its kind allows it (a task is
    cancelled at once; a process gets SIGTERM, then SIGKILL). A thread, or a
    task that swallows its cancellation, cannot be killed: it is abandoned (a
    daemon thread runs on unsupervised), reported as a ``"abandoned"`` exit,
    and ``stop()`` / ``terminate_child()`` raise
    :class:`~foundation.errors.ShutdownError` naming it after finishing the rest.

    In ``one_for_all`` and ``rest_for_one`` a restart restarts every child of
    its scope that has a spec, including siblings that were stopped (by
    ``terminate_child``, a normal transient exit, or ``ignore``), as OTP's
    ``restart_multiple_children`` does. When such a restart fails, the child
    that failed is ``"restarting"`` (it is retried, each retry one more crash)
    and the siblings after it that could not start yet are ``"stopped"``
    (OTP's pid ``undefined``): a ``terminate_child`` of the failing child
    leaves them restartable with ``restart_child`` and deletable.

    Brutal kill: a child with ``shutdown_timeout=0`` is killed without an
    orderly stop: a process gets SIGKILL at once (and is waited for, as OTP
    waits for the ``'DOWN'``); a task is cancelled and given only the few loop
    turns its cancellation takes (one that swallows it is abandoned); a thread,
    which cannot be killed, is abandoned at once (``"abandoned"``, so
    ``stop()``/``terminate_child()`` raise ``ShutdownError`` for it).

    Closed: a ``Supervisor`` is not a closeable. ``stop()`` ends a run and
    ``start()`` may begin another, so a stopped supervisor is between runs,
    not closed: its management calls (``start_child``, ``terminate_child``,
    ``restart_child``, ``delete_child``) raise ``SupervisorError`` with
    ``reason == "supervisor_not_running"`` (OTP's ``noproc``), and
    ``which_children()`` and friends show the children as they ended. The
    closeable is the handle of :meth:`run_in_thread`, whose event loop ends
    with it: after its ``stop()`` every call raises ``errors.Closed``.

    Significant children and ``auto_shutdown`` (OTP 24): with
    ``auto_shutdown="any_significant"`` the supervisor stops itself (normally,
    no failure) when a ``significant`` child ends on its own and is not
    restarted (a temporary one after any exit, a transient one after a normal
    exit); with ``"all_significant"`` when the last running significant child
    does. Exits the supervisor causes (``terminate_child``, a strategy's
    restart, its own stop) never trigger it. ``"never"`` (the default)
    refuses significant children.

    Ignore: a child calling ``ctx.ignore()`` instead of ``ctx.ready()`` is
    not running but its spec is kept, ``"stopped"`` (a temporary child's spec
    is dropped); one_for_all/rest_for_one restarts start it again.

    A supervisor killed from outside (its :attr:`task` cancelled) notices: it
    stops its children in reverse order and ends failed (a ``SupervisorError``
    with ``reason == "killed"``), so a parent sees a crashed child and applies
    its restart policy.

    ``backoff`` (a :class:`Backoff`) delays restarts; each still counts against
    the intensity when it is decided. ``min_uptime`` (default ``max_seconds``)
    is how long a run must last for its child to count as healthy again, which
    resets its backoff.

    With ``registry=``, each child's live handle is registered under its
    ``ChildSpec.key`` on every (re)start, once ready (the ``{:via, Registry,
    ...}`` analogue): a lookup finds the current run or, in between, nothing
    (the registry drops dead agents), never a stale handle. As ``:via`` does,
    a key held by a live agent that is not this child's previous run is
    refused: the start fails (``StartError`` with ``.reason ==
    "already_started"`` and the holder as ``.handle``); the child's own earlier
    registration is replaced. Two children of one supervisor may not share a
    key (``ValueError``). A nested supervisor is registered as its ``task``.
    Every registry write goes through the registry's async face (its executor),
    so a slow or frozen backend never blocks the event loop; the writes for one
    child are made one at a time, in order.

    Registry outages (degraded mode): a child whose registration fails with
    :class:`~foundation.errors.BackendUnavailable`, or is still pending after
    ``registration_wait`` seconds (a frozen server), has *not* failed: it runs
    (status ``"running"``, ``ChildInfo.registered`` False) and the registration
    is retried in the background (full-jitter exponential backoff, 0.05 s base,
    2 s cap) until it succeeds, the run ends (the retry is cancelled) or the
    supervisor stops. An outage never stops a healthy child and never counts
    towards the restart intensity. Each episode is logged on the
    ``foundation.supervision`` logger (WARNING when degraded, INFO when
    restored) and emitted as telemetry ``foundation.supervision.registration_degraded``
    and ``foundation.supervision.registration_restored`` (``supervisor``,
    ``child``, ``key``, ``error``; the latter also ``attempts`` and
    ``seconds``). Any other registry error (``InvalidKey``, ``InvalidMetadata``,
    ...) fails the start as before; one that arrives only after the child was
    let run is logged as an ERROR and the retrying stops.

    Management (async; from other threads use :meth:`run_in_thread`):
    ``start_child``, ``terminate_child``, ``restart_child``, ``delete_child``
    raise :class:`~foundation.errors.SupervisorError` whose ``.reason`` is OTP's
    (``"not_found"``, ``"running"``, ``"restarting"``, ``"already_started"``
    with the running ``.handle``, ``"already_present"``, ...; see
    ``ChildErrorReason``) and ``.child`` the id. ``which_child``,
    ``get_childspec`` and ``check_childspecs`` answer without changing anything.

    Reports: every event it handles is logged through ``logging`` (crash,
    progress and supervisor reports; see ``foundation.supervision._reports``).

    Telemetry (``foundation.telemetry``): ``supervisor.child_started``,
    ``supervisor.child_exited`` (``reason``, ``exception``, ``exit_code``,
    ``signal``, ``restart``), ``supervisor.child_restarted``,
    ``supervisor.intensity_exceeded`` and the two degraded-mode events above;
    each carries ``supervisor`` and ``child``.

    Example:
        >>> import asyncio
        >>> from foundation.supervision import ChildSpec, Supervisor
        >>> async def worker(ctx, name):
        ...     ctx.ready()
        ...     await asyncio.Event().wait()  # serve until cancelled
        >>> async def main():
        ...     specs = [ChildSpec("db", worker, args=("db",)),
        ...              ChildSpec("web", worker, args=("web",))]
        ...     async with Supervisor(specs, strategy="rest_for_one") as sup:
        ...         return [(c.id, c.status) for c in sup.which_children()]
        >>> asyncio.run(main())
        [('db', 'running'), ('web', 'running')]
    """

    #: Seconds a start waits for a child's registration before letting it run
    #: unregistered (degraded mode) while the write finishes in the background.
    registration_wait: float = 1.0
    #: Backoff of the background registration retries: full jitter, exponential.
    registration_retry_base: float = 0.05
    registration_retry_cap: float = 2.0

    def __init__(
        self,
        children: Iterable[ChildSpec] = (),
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: str | None = None,
        registry: Registry | None = None,
        backoff: Backoff | None = None,
        min_uptime: float | None = None,
        auto_shutdown: AutoShutdown = "never",
    ) -> None:
        specs = _checked_children(children, auto_shutdown)
        _check_restart_policy(strategy, max_restarts, max_seconds, min_uptime)
        _check_backoff_and_registry(backoff, registry)
        self._specs = specs
        self._auto_shutdown: AutoShutdown = auto_shutdown
        self._strategy: Strategy = strategy
        self._max_restarts = max_restarts
        self._max_seconds = float(max_seconds)
        self._name = name if name is not None else f"supervisor-{id(self):x}"
        self._registry = registry
        self._backoff = backoff
        self._healthy_after = float(max_seconds if min_uptime is None else min_uptime)
        self._state: SupervisorState = "new"
        self._children: dict[str, _Child] = {}
        # Registry key -> child id, for the duplicate check of start_child in O(1).
        # Entries of removed children go stale (checked on read, pruned in bulk);
        # they hold the id only, never the spec: an ended temporary child's
        # start arguments are released with it (OTP's "do not save start
        # parameters for temporary children").
        self._keys: dict[Hashable, str] = {}
        self._failure: SupervisorError | None = None
        self._main: asyncio.Task[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        """This supervisor's name (used in thread, task and event names)."""
        return self._name

    @property
    def strategy(self) -> Strategy:
        """The restart strategy."""
        return self._strategy

    @property
    def state(self) -> SupervisorState:
        """``"new"``, ``"starting"``, ``"running"``, ``"stopping"``, ``"stopped"``
        or ``"failed"`` (gave up: restart intensity exceeded)."""
        return self._state

    @property
    def failure(self) -> SupervisorError | None:
        """Why it gave up, once ``state == "failed"``: a ``RestartIntensityExceeded``
        (or, for a defect in the supervisor itself, a ``SupervisorError`` whose
        ``__cause__`` is the defect); else ``None``."""
        return self._failure

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The asyncio task that supervises while running (what a registry is
        given for a nested supervisor); ``None`` before ``start()``."""
        return self._main

    def _done_future(self) -> asyncio.Future[None]:
        assert self._done is not None, "not started"
        return self._done

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._name!r} {self._state} children={len(self._children)}>"
        )

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start every child in order, each ready before the next.

        A stopped or failed supervisor may be started again: it starts afresh
        from the specs it was built with (children added later are gone).

        Raises:
            StartError: a child failed to start (``.child``; ``__cause__`` says
                why); the children already started were stopped in reverse.
            SupervisorError: already running (``.reason == "supervisor_running"``).
        """
        import asyncio

        if self._state in ("starting", "running", "stopping"):
            raise _error("supervisor_running", None, f"supervisor {self._name!r} is {self._state}")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._children = {spec.id: _Child(spec) for spec in self._specs}
        self._keys = {child.spec.key: child.spec.id for child in self._children.values()}
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._stop_requested: asyncio.Future[None] = loop.create_future()
        self._done = loop.create_future()
        self._failure = None
        self._restart_times: deque[tuple[float, str]] = deque()
        self._main = None
        self._stop_task = None
        self._stopping = False
        self._state = "starting"
        async with self._lock:
            try:
                for child in list(self._children.values()):
                    if not await self._start_run(child) and child.spec.restart == "temporary":
                        del self._children[child.spec.id]  # OTP: an ignored temporary child
            except BaseException:  # StartError, or start() itself cancelled: roll back
                self._stopping = True
                await self._shutdown_children()
                self._finish()
                raise
            self._main = loop.create_task(self._run(), name=f"supervisor {self._name}")
            self._main.add_done_callback(self._main_ended)
            self._state = "running"
        reports.supervisor_started(
            self._name, strategy=self._strategy, children=len(self._children)
        )

    async def stop(self) -> None:
        """Stop every child in reverse order; idempotent.

        The stop runs in a task of its own: a caller that is itself a child of
        this supervisor (and so gets cancelled by it) does not cut it short.
        Concurrent callers share it and its outcome.

        Raises:
            ShutdownError: a child could not be stopped (an abandoned thread or
                task); every other child was stopped first.
        """
        import asyncio

        if self._state in ("new", "stopped", "failed"):
            return
        if self._stop_task is None:
            self._stop_task = self._loop.create_task(
                self._stop_sequence(), name=f"stop supervisor {self._name}"
            )
            # Retrieved here so that an outcome nobody awaits is not logged.
            self._stop_task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.shield(self._stop_task)

    async def _stop_sequence(self) -> None:
        import asyncio

        if self._stopping:  # a failed start or a give-up is under way
            await asyncio.shield(self._done_future())
            return
        self._stopping = True
        self._state = "stopping"
        self._request_stop()
        if self._main is not None:
            self._events.put_nowait(_STOP)
            await asyncio.wait({self._main})
        async with self._lock:  # management calls in flight finish (or fail) first
            abandoned = await self._shutdown_children()
            self._finish()
        reports.supervisor_stopped(self._name, reason="shutdown")
        if abandoned:
            raise ShutdownError(
                f"supervisor {self._name!r} stopped, but could not stop {abandoned}: "
                f"abandoned ({_why_abandoned(self._children, abandoned)})"
            )

    async def wait(self) -> None:
        """Wait until this supervisor ends.

        Raises:
            RestartIntensityExceeded: it gave up (the same error as ``failure``).
            SupervisorError: never started (``.reason == "supervisor_not_running"``).
        """
        import asyncio

        if self._done is None:
            raise _error("supervisor_not_running", None, f"supervisor {self._name!r} never started")
        await asyncio.shield(self._done)
        if self._failure is not None:
            raise self._failure

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def run_in_thread(self, *, name: str | None = None) -> SupervisorThread:
        """Start this supervisor on an event loop of its own, in a named thread.

        Returns a :class:`SupervisorThread` (also a context manager) exposing the
        management calls synchronously. Raises what :meth:`start` raises, and
        ``StartError`` if the process has no thread or fd left for the loop's
        thread (nothing is left started).
        """
        from foundation.supervision._thread import SupervisorThread

        return SupervisorThread(self, name=name)

    def _main_ended(self, task: asyncio.Task[None]) -> None:
        """The supervising task ended: fine when we stopped it, else it was killed."""
        if self._stopping:
            return
        # Killed from outside (its task cancelled, as a parent or a user may do
        # with the handle a registry holds): nothing supervises the children
        # any more, so stop them and end failed; a parent then sees this
        # supervisor crash (its SupervisorRun watches the done future).
        why = "its task was cancelled" if task.cancelled() else f"{task.exception()!r}"
        err = _error("killed", None, f"supervisor {self._name!r} was killed: {why}")
        if not task.cancelled():
            err.__cause__ = task.exception()
        self._failure = err
        self._stopping = True
        self._state = "stopping"
        self._request_stop()
        self._stop_task = self._loop.create_task(
            self._killed_sequence(), name=f"stop killed supervisor {self._name}"
        )
        self._stop_task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _killed_sequence(self) -> None:
        # Race: the task may have been cancelled while it held the lock (in the
        # middle of a restart); the lock is released by then (async with), and a
        # management call in flight finishes first.
        async with self._lock:
            await self._shutdown_children()
            self._finish()
        reports.supervisor_stopped(self._name, reason="killed")

    def _request_stop(self) -> None:
        if not self._stop_requested.done():
            self._stop_requested.set_result(None)

    def _has_ended(self) -> bool:
        return self._stopping

    def _finish(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for child in self._children.values():
            self._stop_registrar(child)
            # Stopped: no write needs ordering any more. Its thread finishes on
            # its own (a late write of a stopped run meets a dead agent: NotAlive).
            write, child.write = child.write, None
            if write is not None:
                write.cancel()
        self._stopping = True
        self._request_stop()
        self._state = "failed" if self._failure is not None else "stopped"
        done = self._done_future()
        if not done.done():
            done.set_result(None)

    # ------------------------------------------------------------------ introspection
    def which_children(self) -> list[ChildInfo]:
        """Every child, in start order (call on the supervisor's event loop)."""
        return [self._info(child) for child in self._children.values()]

    def count_children(self) -> ChildCounts:
        """How many specs, running children, supervisors and workers."""
        children = self._children.values()
        sups = sum(1 for c in children if c.spec.kind == "supervisor")
        return ChildCounts(
            specs=len(self._children),
            active=sum(1 for c in children if c.status == "running"),
            supervisors=sups,
            workers=len(self._children) - sups,
        )

    def _info(self, child: _Child) -> ChildInfo:
        run = child.run
        handle = run.handle if run is not None and child.status == "running" else None
        status: ChildStatus = child.status
        if status == "stopped" and child.abandoned is not None:
            # Shown "abandoned" while the abandoned thread (or task) still runs; the
            # child is stopped for every other purpose (restart_child, delete_child).
            if _still_running(child.abandoned):
                status, handle = "abandoned", child.abandoned
            else:
                child.abandoned = None
        spec = child.spec
        assert spec.kind is not None
        registered = child.registered and child.status == "running"
        return ChildInfo(
            spec.id, spec.kind, spec.restart, status, handle, child.restarts, registered
        )

    # ------------------------------------------------------------------ management
    def _require_running(self) -> None:
        if self._state != "running" or self._stopping:
            raise _error(
                "supervisor_not_running", None, f"supervisor {self._name!r} is {self._state}"
            )

    def _get(self, id: str) -> _Child:
        child = self._children.get(id)
        if child is None:
            raise _error("not_found", id, f"supervisor {self._name!r} has no child {id!r}")
        return child

    async def start_child(self, spec: ChildSpec, /) -> ChildInfo:
        """Add ``spec`` after the existing children and start it.

        A child that calls ``ctx.ignore()`` is kept ``"stopped"`` (a temporary
        one is not kept); the returned row says so (``handle`` ``None``).

        Raises:
            SupervisorError: ``.reason`` ``"already_started"`` (the id runs;
                ``.handle`` is the running child's), ``"already_present"``
                (the id is held by a stopped child, or one whose restart is
                pending; use ``restart_child`` or ``delete_child``),
                ``"supervisor_not_running"``.
            ValueError: its ``register_as`` key is another child's, or it is
                significant and ``auto_shutdown`` is ``"never"``.
            StartError: it failed to start (its spec is not kept); with
                ``.reason == "already_started"`` when its registry key is held
                by a live agent (``.handle``).
        """
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"start_child takes a ChildSpec, not {spec!r}")
        self._require_running()
        async with self._lock:
            self._require_running()
            self._check_new_child(spec)
            self._admit(spec)
            child = _Child(spec)
            self._children[spec.id] = child
            self._keys[spec.key] = spec.id
            try:
                started = await self._start_run(child)
            except BaseException:
                self._children.pop(spec.id, None)
                raise
            info = self._info(child)
            if not started and not self._keep_ignored(spec):
                self._children.pop(spec.id, None)
            return info

    def _check_new_child(self, spec: ChildSpec) -> None:
        """start_child (lock held): raise unless ``spec``'s id and key are free and it fits."""
        existing = self._children.get(spec.id)
        if existing is not None:
            # OTP's handle_start_child: {already_started, Pid} only with a live
            # pid; a stopped child or a pending restart is already_present.
            if existing.status == "running" and existing.run is not None:
                raise _error(
                    "already_started",
                    spec.id,
                    f"child {spec.id!r} is already started",
                    handle=existing.run.handle,
                )
            raise _error("already_present", spec.id, f"child {spec.id!r} is already present")
        problem = _check_specs([spec], self._auto_shutdown)
        if problem is None and self._key_holder(spec.key) is not None:
            problem = f"duplicate register_as {spec.key!r} (child {spec.id!r})"
        if problem is not None:
            raise ValueError(problem)

    def _key_holder(self, key: Hashable) -> _Child | None:
        """The current child whose registry key is ``key``, if any."""
        if len(self._keys) > 2 * len(self._children) + 64:  # amortised pruning
            self._keys = {c.spec.key: c.spec.id for c in self._children.values()}
        id = self._keys.get(key)
        holder = self._children.get(id) if id is not None else None
        if holder is None or holder.spec.key != key:
            return None  # stale: that child was removed (or its id now has another key)
        return holder

    def _keep_ignored(self, spec: ChildSpec) -> bool:
        """Whether an ignored child's spec is kept (OTP: not a temporary one)."""
        return spec.restart != "temporary"

    def _admit(self, spec: ChildSpec) -> None:
        """Hook: refuse a new child (called under the lock)."""

    async def terminate_child(self, id: str) -> None:
        """Stop child ``id`` (no restart); its spec stays, except a temporary child's.

        Raises:
            SupervisorError: ``.reason == "not_found"``.
            ShutdownError: it had to be abandoned (a thread that did not stop).
        """
        self._require_running()
        async with self._lock:
            self._require_running()  # it may have stopped or given up meanwhile
            child = self._get(id)
            exit = await self._terminate_child(child)
        if exit is not None and exit.reason == "abandoned":
            raise ShutdownError(f"child {id!r} did not stop in time and was abandoned")

    async def _terminate_child(self, child: _Child) -> ChildExit | None:
        round, child.pending = child.pending, None  # cancels a delayed restart
        if isinstance(round, _Round) and round.owner == child.spec.id:
            # The siblings stopped for this child's restart are left stopped (OTP:
            # pid undefined, restartable), not restarted without it nor stuck.
            for other in self._children.values():
                if other.pending is round:
                    other.pending = None
                    other.status = "stopped"
        exit = await self._terminate(child) if child.run is not None else None
        child.status = "stopped"
        if child.spec.restart == "temporary":
            self._children.pop(child.spec.id, None)
        return exit

    async def restart_child(self, id: str) -> ChildInfo:
        """Start again a child that is stopped (terminated, or ended and not restarted).

        A child that calls ``ctx.ignore()`` stays ``"stopped"``.

        Raises:
            SupervisorError: ``.reason`` ``"not_found"``, ``"running"``, ``"restarting"``.
            StartError: it failed to start (it stays stopped).
        """
        self._require_running()
        async with self._lock:
            self._require_running()  # it may have stopped or given up meanwhile
            child = self._get(id)
            self._require_stopped(child, "restart")
            started = await self._start_run(child)
            info = self._info(child)
            if not started and child.spec.restart == "temporary":
                self._children.pop(id, None)
            return info

    async def delete_child(self, id: str) -> None:
        """Forget the spec of a stopped child.

        Raises:
            SupervisorError: ``.reason`` ``"not_found"``, ``"running"``, ``"restarting"``.
        """
        self._require_running()
        async with self._lock:
            self._require_running()  # it may have stopped or given up meanwhile
            child = self._get(id)
            self._require_stopped(child, "delete")
            del self._children[id]

    def which_child(self, id: str) -> ChildInfo:
        """The ``which_children()`` row of child ``id`` (OTP 26's ``which_child``).

        Raises:
            SupervisorError: ``.reason == "not_found"``.
        """
        return self._info(self._get(id))

    def get_childspec(self, id: str) -> ChildSpec:
        """The spec child ``id`` runs from (OTP's ``get_childspec``).

        Raises:
            SupervisorError: ``.reason == "not_found"``.
        """
        return self._get(id).spec

    @staticmethod
    def check_childspecs(
        specs: Iterable[object], auto_shutdown: AutoShutdown = "never"
    ) -> str | None:
        """``None`` if ``specs`` can be one supervisor's children, else why not
        (OTP's ``check_childspecs``; see :func:`foundation.supervision.check_childspecs`)."""
        return check_childspecs(specs, auto_shutdown)

    def _require_stopped(self, child: _Child, verb: str) -> None:
        if child.status != "stopped":
            raise _error(
                child.status,
                child.spec.id,
                f"cannot {verb} child {child.spec.id!r}: it is {child.status}; terminate it first",
            )

    # ------------------------------------------------------------------ starting a run
    async def _start_run(self, child: _Child, *, restarted: bool = False) -> bool:
        """Launch one run of ``child`` and wait until it is ready and registered.

        Returns False when the child ignored its start (``ctx.ignore()``): it
        is then ``"stopped"``, without a run.
        """
        import asyncio

        spec = child.spec
        run = make_run(spec, self._name, child.restarts)
        child.run = run  # recorded before any await: a stop in between sees and stops it
        launched = False
        try:
            await run.launch()
            launched = True
            await self._await_ready(run)
            if _ignored(run):
                self._drop_run(child, run)
                # It should be returning by now; one that goes on is stopped as usual.
                await asyncio.shield(self._shutdown_run(run))
                reports.child_ignored(self._name, spec.id, str(spec.kind))
                return False
            await self._register(child, run)
        except BaseException as exc:
            self._drop_run(child, run)
            if launched:
                await asyncio.shield(self._shutdown_run(run))
            if not isinstance(exc, Exception):
                raise
            raise self._start_failure(spec, exc) from exc
        child.status = "running"
        child.abandoned = None
        run.started_at = self._loop.time()
        # Added after readiness: an exit before ready is a failed start, not a crash.
        # A run already ended by now still gets its event (callback on a done future).
        run.exited.add_done_callback(partial(self._on_exit, spec.id, run))
        self._announce_started(child, run, restarted)
        return True

    def _drop_run(self, child: _Child, run: Run) -> None:
        """Discard ``run`` (an ignored or failed start) and mark ``child`` stopped."""
        run.discarded = True
        if child.run is run:
            child.run = None
        child.status = "stopped"

    def _start_failure(self, spec: ChildSpec, exc: Exception) -> StartError:
        """Report the failed start of ``spec``; the StartError to raise for it."""
        reports.start_failed(self._name, spec.id, str(spec.kind), error=exc)
        err = StartError(
            spec.id, f"child {spec.id!r} of supervisor {self._name!r} failed to start: {exc}"
        )
        if isinstance(exc, AlreadyRegistered):
            # As {:via, Registry, name}: {error, {already_started, Holder}}.
            err.reason = "already_started"
            err.handle = exc.entry.agent if exc.entry is not None else None
        return err

    def _announce_started(self, child: _Child, run: Run, restarted: bool) -> None:
        """Emit the started (and restarted) telemetry events and progress report of a run."""
        spec = child.spec
        if telemetry.has_listeners("supervisor.child_started"):
            telemetry.emit(
                "supervisor.child_started",
                {
                    "supervisor": self._name,
                    "child": spec.id,
                    "kind": spec.kind,
                    "handle": run.handle,
                    "attempt": run.attempt,
                },
            )
        reports.child_started(
            self._name, spec.id, str(spec.kind), restarted=restarted, attempt=run.attempt
        )
        if restarted and telemetry.has_listeners("supervisor.child_restarted"):
            telemetry.emit(
                "supervisor.child_restarted",
                {
                    "supervisor": self._name,
                    "child": spec.id,
                    "handle": run.handle,
                    "restarts": child.restarts,
                },
            )

    async def _await_ready(self, run: Run) -> None:
        import asyncio

        if run.ready.done():
            return
        waiters: set[asyncio.Future[Any]] = {run.ready, run.exited, self._stop_requested}
        await asyncio.wait(
            waiters,
            timeout=run.spec.ready_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        # Ready wins a tie: a child that signalled and then ended did start.
        if run.ready.done():
            return
        if run.exited.done():
            exit = run.exited.result()
            if isinstance(exit.exception, Exception):
                raise exit.exception
            # Chained: the crash report then shows the child's own traceback.
            raise RuntimeError(
                f"it ended before it was ready ({_describe(exit)})"
            ) from exit.exception
        if self._stop_requested.done():
            raise RuntimeError(f"supervisor {self._name!r} is stopping")
        raise TimeoutError(f"it was not ready within {run.spec.ready_timeout} s")

    # ------------------------------------------------------------------ registration
    def _write(self, child: _Child, run: Run) -> asyncio.Task[None]:
        """Start registering ``run``'s handle, after this child's earlier writes.

        Race: a write for an earlier run may still be in flight in the
        registry's executor (its awaiter was cancelled, the thread was not).
        Chaining the writes of one child keeps them in order, so a late write
        of a dead run can never replace the registration of the live one.
        """
        registry = self._registry
        assert registry is not None
        spec = run.spec
        previous = child.write
        key, agent, metadata = spec.key, run.agent, spec.metadata
        # Ours to replace: this child's previous runs (a restart) and this very
        # run (a retry whose earlier attempt landed after all). Anything else
        # holding the key is someone else's live agent: refused, as :via does.
        if not any(mine is agent for mine in child.owned):
            child.owned = (*child.owned[-2:], agent)
        own = child.owned

        def register() -> None:
            try:
                registry.register(key, agent, metadata)
            except AlreadyRegistered as exc:
                holder = exc.entry.agent if exc.entry is not None else None
                if holder is agent:
                    return  # a retry: this very run's earlier attempt landed after all
                if holder is None or not any(holder is mine for mine in own):
                    raise
                # An earlier run of this child still holds the key while alive
                # (a thread that ignored its stop, say; a dead one is replaced
                # by the plain register above). Race: the holder may change
                # between these two calls; the window is one registry call, and
                # a newcomer then loses its key to the supervised child.
                registry.register(key, agent, metadata, replace=True)

        async def write() -> None:
            import asyncio

            if previous is not None and not previous.done():
                await asyncio.wait({previous})
            await registry._async_call(register)

        task = self._loop.create_task(write(), name=f"register {run.name}")
        # Its outcome is read by whoever still waits for it; if nobody does
        # (the run ended), it is retrieved here so that it is not logged.
        task.add_done_callback(_retrieve)
        child.write = task
        return task

    async def _register(self, child: _Child, run: Run) -> None:
        """Register a run that just became ready (see "Registry outages").

        Raises the registry's error, except ``NotAlive`` (the run died just
        after signalling ready; its exit event is on its way) and
        ``BackendUnavailable`` or a write still pending after
        ``registration_wait``: then the child runs and a registrar retries.
        """
        import asyncio

        child.registered = False
        self._stop_registrar(child)
        if self._registry is None:
            return
        attempt = self._write(child, run)
        # asyncio.wait never cancels what it waits for: if this start is
        # cancelled, the write finishes in the background (it is retrieved).
        await asyncio.wait(
            {attempt, self._stop_requested},
            timeout=self.registration_wait,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not attempt.done():
            if self._stop_requested.done():
                return  # stopping: nobody needs the registration any more
            self._degrade(child, run, pending=attempt, error=None)
            return
        error = attempt.exception()
        if error is None:
            child.registered = True
        elif isinstance(error, BackendUnavailable):
            self._degrade(child, run, pending=None, error=error)
        elif not isinstance(error, NotAlive):
            raise error

    def _degrade(
        self,
        child: _Child,
        run: Run,
        *,
        pending: asyncio.Task[None] | None,
        error: BaseException | None,
    ) -> None:
        """Let ``run`` go on unregistered; a registrar task keeps trying."""
        spec = run.spec
        why = (
            f"failed ({error!r})"
            if error is not None
            else (f"is still pending after {self.registration_wait:g} s")
        )
        _log.warning(
            "supervisor %r: child %r runs unregistered: registering it as %r %s; "
            "retrying in the background",
            self._name,
            spec.id,
            spec.key,
            why,
        )
        if telemetry.has_listeners(REGISTRATION_DEGRADED):
            telemetry.emit(
                REGISTRATION_DEGRADED,
                {"supervisor": self._name, "child": spec.id, "key": spec.key, "error": error},
            )
        registrar = self._loop.create_task(
            self._keep_registering(child, run, pending), name=f"registrar {run.name}"
        )
        child.registrar = registrar
        # A run that ends needs no registration: its retries stop with it.
        run.exited.add_done_callback(lambda _exit: registrar.cancel())

    async def _keep_registering(
        self, child: _Child, run: Run, pending: asyncio.Task[None] | None
    ) -> None:
        """Retry registering ``run`` with full-jitter exponential backoff until it sticks."""
        import asyncio

        spec = run.spec
        began = self._loop.time()
        failures = 0 if pending is not None else 1
        backoff = RetryBackoff(self.registration_retry_base, self.registration_retry_cap)
        while True:
            try:
                if pending is None:
                    await asyncio.sleep(backoff.next())
                    pending = self._write(child, run)
                # Shielded: cancelling the registrar (the run ended) leaves the
                # write to finish in order; the next write of this child waits for it.
                await asyncio.shield(pending)
            except asyncio.CancelledError:
                self._registration_abandoned(spec, "the run ended")
                raise
            except NotAlive:
                # It died: its exit event follows, a restart registers anew.
                self._registration_abandoned(spec, "the agent died")
                return
            except BackendUnavailable:
                failures += 1
                pending = None
                continue
            except Exception as exc:  # not an outage: report it and stop retrying
                _log.error(
                    "supervisor %r: child %r could not be registered as %r; giving up "
                    "(the child keeps running unregistered)",
                    self._name,
                    spec.id,
                    spec.key,
                    exc_info=exc,
                )
                self._registration_abandoned(spec, f"{type(exc).__name__}: {exc}")
                return
            break
        self._registration_restored(child, run, failures + 1, began)

    def _registration_restored(self, child: _Child, run: Run, attempts: int, began: float) -> None:
        """The registrar's write of ``run`` stuck at last: record, log and emit it."""
        import asyncio

        spec = run.spec
        if child.run is run:
            child.registered = True
        if child.registrar is asyncio.current_task():
            child.registrar = None
        seconds = self._loop.time() - began
        _log.info(
            "supervisor %r: child %r registered as %r again after %d attempt(s), %.3f s",
            self._name,
            spec.id,
            spec.key,
            attempts,
            seconds,
        )
        if telemetry.has_listeners(REGISTRATION_RESTORED):
            telemetry.emit(
                REGISTRATION_RESTORED,
                {
                    "supervisor": self._name,
                    "child": spec.id,
                    "key": spec.key,
                    "error": None,
                    "attempts": attempts,
                    "seconds": seconds,
                },
            )

    def _registration_abandoned(self, spec: ChildSpec, why: str) -> None:
        """A degraded registration ends without being restored (the run ended, or
        a non-outage error): say so, so gauges of degraded children come down."""
        if telemetry.has_listeners(REGISTRATION_ABANDONED):
            telemetry.emit(
                REGISTRATION_ABANDONED,
                {"supervisor": self._name, "child": spec.id, "key": spec.key, "error": why},
            )

    def _stop_registrar(self, child: _Child) -> None:
        registrar, child.registrar = child.registrar, None
        if registrar is not None:
            registrar.cancel()

    async def _unregister_if_current(self, child: _Child, run: Run) -> None:
        """Drop the registration of an abandoned run (still alive, no longer supervised)."""
        import asyncio

        registry = self._registry
        if registry is None:
            return
        self._stop_registrar(child)
        child.registered = False
        # Race: a registration of this run may still be in flight; it must land
        # first, or it would register the abandoned run after we looked.
        if child.write is not None and not child.write.done():
            await asyncio.wait({child.write})
        key, agent = run.spec.key, run.agent

        def unregister_if_current() -> bool:
            # Lookup and unregister in one call on the registry's write path,
            # so both see the same (possibly per-thread) store.
            entry = registry.lookup(key)
            return entry is not None and entry.agent is agent and registry.unregister(key)

        try:
            await registry._async_call(unregister_if_current)
        except BackendUnavailable as exc:
            # The agent is not ours any more; the backend's lease or the next
            # registration of this key takes it over.
            _log.warning(
                "supervisor %r: could not unregister abandoned child %r (%r)",
                self._name,
                run.spec.id,
                exc,
            )

    # ------------------------------------------------------------------ stopping runs
    async def _terminate(self, child: _Child, *, restart: bool = False) -> ChildExit:
        import asyncio

        run = child.run
        assert run is not None
        # Shielded: if our caller is cancelled the stop sequence still completes.
        exit = await asyncio.shield(self._shutdown_run(run))
        if child.run is run:
            child.run = None
        child.status = "stopped"
        if exit.reason == "abandoned":
            child.abandoned = run.handle
            await self._unregister_if_current(child, run)
        self._emit_exit(child, exit, restart=restart)
        return exit

    def _shutdown_run(self, run: Run) -> asyncio.Task[ChildExit]:
        """Stop ``run`` (once; concurrent callers share it). The run kinds report
        shutdown timeouts, kills (``brutal_kill`` included) and abandoned threads."""
        return run.shutdown(run.spec.shutdown_timeout)

    async def _shutdown_children(self) -> list[str]:
        """Stop every running child in reverse start order; returns the abandoned.

        A ``DynamicSupervisor`` stops them concurrently instead (OTP's
        ``terminate_dynamic_children``).
        """
        abandoned = []
        for child in reversed(list(self._children.values())):
            child.pending = None
            if child.run is not None:
                exit = await self._terminate(child)
                if exit.reason == "abandoned":
                    abandoned.append(child.spec.id)
            child.status = "stopped"
        return abandoned

    # ------------------------------------------------------------------ supervising
    def _on_exit(self, id: str, run: Run, fut: asyncio.Future[ChildExit]) -> None:
        if not self._stopping and not run.stopping:
            self._events.put_nowait(_Exited(id, run, fut.result()))

    async def _run(self) -> None:
        """The supervising task: handle exits and due restarts, one at a time."""
        while True:
            event = await self._events.get()
            if event is _STOP or self._stopping:
                return
            async with self._lock:
                if self._has_ended():  # a stop began while we waited for the lock
                    return
                try:
                    await self._handle(event)
                except Exception as exc:  # a defect: fail loudly rather than stop supervising
                    await self._give_up_on_defect(exc)
                    return
                if self._has_ended():  # gave up while handling it
                    return
            # Not kept while waiting for the next one: an exit event holds the
            # ended run, so its spec's start arguments and its exception.
            del event

    async def _handle(self, event: object) -> None:
        if isinstance(event, _Exited):
            await self._on_exited(event)
        elif isinstance(event, _StartFailed):
            await self._on_start_failed(event)
        elif isinstance(event, _RestartDue):
            await self._on_restart_due(event)

    async def _on_exited(self, event: _Exited) -> None:
        """A run ended: apply the child's restart policy, unless the event is stale."""
        child = self._children.get(event.id)
        # Stale events are dropped: the run was replaced, or stopped on purpose
        # (a strategy may stop a sibling whose own exit is already queued).
        if child is None or child.run is not event.run or event.run.stopping:
            return
        child.run = None
        uptime = self._loop.time() - event.run.started_at
        await self._child_down(child, event.exit, uptime)

    async def _on_start_failed(self, event: _StartFailed) -> None:
        """A restart failed: count it as the child going down again (already reported)."""
        child = self._children.get(event.id)
        if child is None or child.status != "restarting" or child.run is not None:
            return
        await self._child_down(child, event.exit, 0.0, reported=True)

    async def _on_restart_due(self, event: _RestartDue) -> None:
        """A delayed restart round is due: restart its children still waiting for it."""
        due = []
        for id in event.ids:
            child = self._children.get(id)
            if child is not None and child.pending is event.token:
                child.pending = None
                due.append(id)
        await self._restart(due)

    async def _child_down(
        self, child: _Child, exit: ChildExit, uptime: float, *, reported: bool = False
    ) -> None:
        """Apply the restart type, intensity and strategy to a child's own exit.

        ``reported``: a failed restart, already logged by ``start_failed``.
        """
        spec = child.spec
        if not _restarts_after(spec, exit):
            await self._ended_for_good(child, exit)
            return
        if self._intensity_exceeded(spec.id):
            self._emit_exit(child, exit, restart=False)
            if not reported:
                self._report_exit(child, exit, "shutdown (restart intensity exceeded)")
            await self._give_up(child, exit)
            return
        self._emit_exit(child, exit, restart=True)
        delay = self._next_restart_delay(child, uptime)
        if not reported:
            self._report_exit(child, exit, self._restart_action(delay))
        child.status = "restarting"
        scope = self._scope(child)
        await self._stop_scope(child, scope)
        await self._restart_round(spec, scope, delay)

    def _next_restart_delay(self, child: _Child, uptime: float) -> float:
        """Count one more consecutive restart of ``child`` (reset if it ran healthy); its delay."""
        if uptime >= self._healthy_after:
            child.consecutive = 0
        child.consecutive += 1
        return self._backoff.delay(child.consecutive) if self._backoff is not None else 0.0

    async def _restart_round(self, spec: ChildSpec, scope: list[_Child], delay: float) -> None:
        """Restart the stopped children of ``scope`` (``spec``'s round) now or after ``delay``."""
        ids = tuple(
            c.spec.id for c in scope if c.spec.id in self._children and c.status == "restarting"
        )
        # This round takes over any delayed restart still pending in its scope,
        # so the whole scope restarts together, in start order.
        token = _Round(spec.id) if delay > 0 else None
        for id in ids:
            self._children[id].pending = token
        if delay > 0:
            self._timers = [t for t in self._timers if not t.cancelled()]
            self._timers.append(
                self._loop.call_later(delay, self._events.put_nowait, _RestartDue(token, ids))
            )
            return
        await self._restart(ids)

    async def _ended_for_good(self, child: _Child, exit: ChildExit) -> None:
        """A child that is not restarted: stop it, report, maybe shut down (auto_shutdown)."""
        spec = child.spec
        self._emit_exit(child, exit, restart=False)
        child.status = "stopped"
        if spec.restart == "temporary":
            del self._children[spec.id]
        rule = self._auto_shutdown_rule(child)
        if rule is not None:
            action = "shutdown (significant)"
        elif spec.restart == "temporary":
            action = "no_restart (temporary)"
        else:
            action = "no_restart (transient, normal exit)"
        self._report_exit(child, exit, action)
        if rule is not None:
            reports.auto_shutdown(self._name, spec.id, rule=rule)
            await self._shut_down_automatically()

    def _intensity_exceeded(self, id: str) -> bool:
        """Count a restart of child ``id`` in the window; True past the limit."""
        now = self._loop.time()
        window = self._restart_times
        window.append((now, id))
        while window and window[0][0] <= now - self._max_seconds:
            window.popleft()
        return len(window) > self._max_restarts

    def _restart_action(self, delay: float) -> str:
        """The action reported for a restart under this strategy."""
        action = {
            "one_for_one": "restart",
            "one_for_all": "restart_all",
            "rest_for_one": "restart_rest",
        }[self._strategy]
        if delay > 0:
            action += f" (after {delay:g}s backoff)"
        return action

    def _report_exit(self, child: _Child, exit: ChildExit, action: str) -> None:
        """Report a child's exit: a crash if abnormal, else a plain exit."""
        spec = child.spec
        kind = str(spec.kind)
        if exit.abnormal:
            reports.child_crashed(self._name, spec.id, kind, exit, action=action)
        else:
            reports.child_exited(self._name, spec.id, kind, exit, action=action)

    async def _stop_scope(self, child: _Child, scope: list[_Child]) -> None:
        """Stop the other running children of ``child``'s scope, in reverse start order."""
        for other in reversed(scope):
            if other is child or other.spec.id not in self._children:
                continue
            if other.run is not None:
                await self._terminate(other, restart=other.spec.restart != "temporary")
                if other.spec.restart == "temporary":
                    del self._children[other.spec.id]  # OTP: never restarted, spec dropped
                    continue
            # OTP (restart_multiple_children): every child of the scope that has
            # a spec is started again, also one stopped by terminate_child, a
            # transient one that ended normally, or one that returned ignore.
            other.status = "restarting"

    def _auto_shutdown_rule(self, child: _Child) -> str | None:
        """The rule that stops this supervisor now that ``child`` ended for good, if any."""
        if not child.spec.significant or self._auto_shutdown == "never":
            return None
        if self._auto_shutdown == "any_significant":
            return "any_significant"
        # all_significant: the last significant child still running (or about to
        # be restarted) has just ended.
        return None if self._other_significant_active(child) else "all_significant"

    def _other_significant_active(self, child: _Child) -> bool:
        """True if a significant child other than ``child`` runs or is about to restart."""
        return any(
            c is not child and c.spec.significant and c.status != "stopped"
            for c in self._children.values()
        )

    async def _shut_down_automatically(self) -> None:
        """auto_shutdown: stop every child and end normally (no failure)."""
        self._stopping = True
        self._state = "stopping"
        self._request_stop()
        await self._shutdown_children()
        self._finish()
        reports.supervisor_stopped(self._name, reason="shutdown")

    def _scope(self, child: _Child) -> list[_Child]:
        if self._strategy == "one_for_one":
            return [child]
        children = list(self._children.values())
        if self._strategy == "one_for_all":
            return children
        return children[children.index(child) :]

    async def _restart(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        for n, id in enumerate(ids):
            if self._stopping:
                return
            child = self._children.get(id)
            if child is None or child.status != "restarting" or child.pending is not None:
                continue
            child.restarts += 1
            try:
                started = await self._start_run(child, restarted=True)
            except StartError as err:
                self._restart_failed(id, child, ids[n + 1 :], err)
                return
            if not started and not self._keep_ignored(child.spec):
                # OTP: a restart returning ignore leaves a static child's spec
                # (pid undefined) but removes a temporary or dynamic child.
                self._children.pop(id, None)

    def _restart_failed(self, id: str, child: _Child, later: list[str], err: StartError) -> None:
        """Child ``id`` failed to restart: queue it as a crash; ``later`` ones wait stopped."""
        # A failed restart is one more crash: the strategy runs again for it
        # (and counts it). As OTP's restart_multiple_children, the failed
        # child is "restarting" and the ones after it that could not start
        # yet are "stopped" (pid undefined): the retry's scope includes
        # them, and if the failing child is terminated meanwhile they are
        # left stopped, restartable, never stuck.
        child.status = "restarting"
        for later_id in later:
            other = self._children.get(later_id)
            if other is not None and other.status == "restarting" and other.pending is None:
                other.status = "stopped"
        cause = err.__cause__ if err.__cause__ is not None else err
        self._events.put_nowait(_StartFailed(id, ChildExit("exception", exception=cause)))

    async def _give_up(self, child: _Child, exit: ChildExit) -> None:
        err = RestartIntensityExceeded(
            f"supervisor {self._name!r} gave up: more than {self._max_restarts} restarts "
            f"within {self._max_seconds:g} s; last, child {child.spec.id!r} ended "
            f"({_describe(exit)})"
        )
        err.__cause__ = exit.exception
        self._failure = err
        reports.intensity_exceeded(
            self._name,
            child.spec.id,
            max_restarts=self._max_restarts,
            max_seconds=self._max_seconds,
            history=list(self._restart_times),
        )
        if telemetry.has_listeners("supervisor.intensity_exceeded"):
            telemetry.emit(
                "supervisor.intensity_exceeded",
                {
                    "supervisor": self._name,
                    "child": child.spec.id,
                    "max_restarts": self._max_restarts,
                    "max_seconds": self._max_seconds,
                    "error": err,
                },
            )
        self._stopping = True
        self._state = "stopping"
        self._request_stop()
        child.status = "stopped"
        await self._shutdown_children()
        self._finish()
        reports.supervisor_stopped(self._name, reason="reached_max_restart_intensity")

    async def _give_up_on_defect(self, exc: Exception) -> None:
        err = SupervisorError(f"supervisor {self._name!r} failed: {exc!r}")
        err.__cause__ = exc
        self._failure = err
        self._stopping = True
        self._state = "stopping"
        self._request_stop()
        await self._shutdown_children()
        self._finish()

    def _emit_exit(self, child: _Child, exit: ChildExit, *, restart: bool) -> None:
        if telemetry.has_listeners("supervisor.child_exited"):
            telemetry.emit(
                "supervisor.child_exited",
                {
                    "supervisor": self._name,
                    "child": child.spec.id,
                    "reason": exit.reason,
                    "exception": exit.exception,
                    "exit_code": exit.exit_code,
                    "signal": exit.signal,
                    "restart": restart,
                },
            )


class DynamicSupervisor(Supervisor):
    """A one_for_one supervisor whose children are added at run time.

    With a ``template`` spec, ``start_child(*extra_args)`` starts a child from
    it with ``extra_args`` appended to its ``args``, an id ``"<template id>-<n>"``
    (or ``id=``), and registers it under ``register_as=`` or its own id (the
    template's ``register_as`` is not used: children would share one key).
    Without one, ``start_child(spec)`` takes a full :class:`ChildSpec`. As in
    Elixir's DynamicSupervisor, ``terminate_child`` also deletes the child.

    Raises (``start_child``): ``SupervisorError`` with ``.reason ==
    "max_children"`` past ``max_children``, and what ``Supervisor.start_child``
    raises.

    Example:
        >>> import asyncio
        >>> from foundation.supervision import ChildSpec, DynamicSupervisor
        >>> async def agent(ctx, zone):
        ...     ctx.ready()
        ...     await asyncio.Event().wait()
        >>> async def main():
        ...     async with DynamicSupervisor(ChildSpec("agent", agent)) as sup:
        ...         first = await sup.start_child("eu")
        ...         await sup.start_child("us", id="agent-us")
        ...         return first.id, sup.count_children().active
        >>> asyncio.run(main())
        ('agent-1', 2)
    """

    def __init__(
        self,
        template: ChildSpec | None = None,
        *,
        max_children: int | None = None,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: str | None = None,
        registry: Registry | None = None,
        backoff: Backoff | None = None,
        min_uptime: float | None = None,
    ) -> None:
        if template is not None and not isinstance(template, ChildSpec):
            raise TypeError(f"template must be a ChildSpec, not {template!r}")
        if max_children is not None and (
            isinstance(max_children, bool) or not isinstance(max_children, int) or max_children < 0
        ):
            raise ValueError(f"max_children must be an int >= 0 or None, not {max_children!r}")
        super().__init__(
            (),
            strategy="one_for_one",
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            name=name,
            registry=registry,
            backoff=backoff,
            min_uptime=min_uptime,
        )
        self.template = template
        self._max_children = max_children
        self._serial = itertools.count(1)

    async def start_child(
        self,
        *args: Any,
        id: str | None = None,
        register_as: Hashable | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ChildInfo:
        """Start a child from the template with ``args`` appended (or from the
        one ``ChildSpec`` given when there is no template)."""
        if self.template is None:
            spec = _given_spec(args, id, register_as, metadata)
        else:
            spec = self._spec_from_template(self.template, args, id, register_as, metadata)
        return await super().start_child(spec)

    def _spec_from_template(
        self,
        template: ChildSpec,
        args: tuple[Any, ...],
        id: str | None,
        register_as: Hashable | None,
        metadata: Mapping[str, Any] | None,
    ) -> ChildSpec:
        """start_child: the template with ``args`` appended and the given overrides."""
        return dataclasses.replace(
            template,
            id=f"{template.id}-{next(self._serial)}" if id is None else id,
            args=(*template.args, *args),
            register_as=register_as,
            metadata=template.metadata if metadata is None else metadata,
        )

    def _admit(self, spec: ChildSpec) -> None:
        if self._max_children is not None and len(self._children) >= self._max_children:
            raise _error(
                "max_children",
                spec.id,
                f"supervisor {self._name!r} already has max_children={self._max_children}",
            )

    async def _terminate_child(self, child: _Child) -> ChildExit | None:
        exit = await super()._terminate_child(child)
        self._children.pop(child.spec.id, None)
        return exit

    def _keep_ignored(self, spec: ChildSpec) -> bool:
        return False  # OTP: a dynamic child that returns ignore is not added

    async def restart_child(self, id: str) -> ChildInfo:
        """Not supported: a dynamic child is deleted when terminated.

        Raises:
            SupervisorError: always, ``.reason == "simple_one_for_one"`` (OTP's
                ``{error, simple_one_for_one}``).
        """
        raise _not_dynamic(
            "restart_child",
            id,
            "terminate_child deletes a dynamic child; start a new one with start_child",
        )

    async def delete_child(self, id: str) -> None:
        """Not supported: ``terminate_child`` already deletes a dynamic child.

        Raises:
            SupervisorError: always, ``.reason == "simple_one_for_one"`` (OTP's
                ``{error, simple_one_for_one}``).
        """
        raise _not_dynamic("delete_child", id, "terminate_child already deletes a dynamic child")

    async def _shutdown_children(self) -> list[str]:
        """Stop every running child at once (OTP's ``terminate_dynamic_children``):
        the stop takes about the longest shutdown timeout, not their sum."""
        import asyncio

        children = list(self._children.values())
        for child in children:
            child.pending = None
        running = [c for c in reversed(children) if c.run is not None]
        exits = await asyncio.gather(*(self._terminate(c) for c in running))
        for child in children:
            child.status = "stopped"
        return [
            c.spec.id for c, exit in zip(running, exits, strict=True) if exit.reason == "abandoned"
        ]


def runs_in_tree(root: Supervisor, handle: object) -> bool:
    """Whether ``handle`` (a restarted child's, from the emitting thread) is the
    current run of a child of ``root`` or of a supervisor nested under it."""
    # Race: telemetry calls this in the emitting thread, at any time. Every
    # supervisor of root's tree runs on root's loop, so an event emitted
    # anywhere else is another tree's, answered without reading root's
    # children (which root's loop may be changing). On that loop, no child
    # list changes while this reads it; unrelated supervisors sharing the
    # loop (``async with app:``) are told apart by the handle itself.
    import asyncio  # loaded already: a supervisor emitted the event

    loop: asyncio.AbstractEventLoop | None = getattr(root, "_loop", None)  # set by start()
    try:
        if loop is None or asyncio.get_running_loop() is not loop:
            return False
    except RuntimeError:  # no loop runs in this thread: not a tree's event
        return False
    # Race: the runs, not which_children(): a child still starting (a nested
    # supervisor still registering) has its run but is not shown running yet,
    # while its own children may already restart.
    pending = [root]
    while pending:
        for child in pending.pop()._children.values():
            run = child.run
            if run is None:
                continue
            if run.handle is handle:
                return True
            if isinstance(run.handle, Supervisor):
                pending.append(run.handle)
    return False


def _given_spec(
    args: tuple[Any, ...],
    id: str | None,
    register_as: Hashable | None,
    metadata: Mapping[str, Any] | None,
) -> ChildSpec:
    """DynamicSupervisor.start_child without a template: the one ChildSpec, overridden."""
    if len(args) != 1 or not isinstance(args[0], ChildSpec):
        raise TypeError("without a template, start_child takes exactly one ChildSpec")
    spec: ChildSpec = args[0]
    if id is not None or register_as is not None or metadata is not None:
        spec = dataclasses.replace(
            spec,
            id=spec.id if id is None else id,
            register_as=spec.register_as if register_as is None else register_as,
            metadata=spec.metadata if metadata is None else metadata,
        )
    return spec


def _why_abandoned(children: Mapping[str, _Child], ids: list[str]) -> str:
    """Why the children ``ids`` run on, by kind (the ShutdownError's explanation)."""
    kinds = {children[id].spec.kind for id in ids if id in children}
    why = []
    if "thread" in kinds:
        why.append("a thread cannot be killed: it runs on as a daemon thread")
    if "task" in kinds:
        why.append("a task that swallows its cancellation runs on, unsupervised")
    if "supervisor" in kinds:
        why.append("a nested supervisor could not stop a child of its own")
    return "; ".join(why) or "it did not stop in time"


def _ignored(run: Run) -> bool:
    """True when the run's child called ``ctx.ignore()`` (task and thread kinds)."""
    ctx = getattr(run, "ctx", None)
    return ctx is not None and getattr(ctx, "ignored", False) is True


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a registry write's outcome as retrieved (its waiter, if any, reads it)."""
    if not task.cancelled():
        task.exception()
