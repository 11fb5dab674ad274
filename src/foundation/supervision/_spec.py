"""Child specifications and the records a supervisor reports."""

from __future__ import annotations

import functools
import inspect
import unicodedata
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from foundation.errors import InvalidConfig, bounded_repr
from foundation.registry._validation import freeze_metadata

if TYPE_CHECKING:
    from foundation.supervision._supervisor import Supervisor

__all__ = [
    "MAX_NAME_CHARS",
    "AutoShutdown",
    "Backoff",
    "ChildCounts",
    "ChildExit",
    "ChildInfo",
    "ChildKind",
    "ChildSpec",
    "ChildStatus",
    "ExitReason",
    "Readiness",
    "RestartType",
    "Strategy",
    "check_childspecs",
    "check_name",
]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
RestartType = Literal["permanent", "transient", "temporary"]
ChildKind = Literal["task", "thread", "process", "supervisor"]
Readiness = Literal["explicit", "spawned"]
AutoShutdown = Literal["never", "any_significant", "all_significant"]
ChildStatus = Literal["running", "restarting", "stopped", "abandoned"]
ExitReason = Literal["normal", "exception", "cancelled", "exit", "killed", "shutdown", "abandoned"]

_STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
_RESTARTS = ("permanent", "transient", "temporary")
_KINDS = ("task", "thread", "process", "supervisor")
_READINESS = ("explicit", "spawned")
_AUTO_SHUTDOWN = ("never", "any_significant", "all_significant")

MAX_NAME_CHARS = 200
"""Longest child id or supervisor name accepted (a template's id: 20 fewer)."""

# Bidirectional embeddings, overrides, isolates and marks: they reorder what a
# terminal shows (U+202E makes "exe.txt" read "txt.exe").
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_REFUSED_CATEGORIES = frozenset(("Cc", "Cs", "Zl", "Zp"))


def check_name(what: str, text: object, *, limit: int = MAX_NAME_CHARS) -> None:
    """``InvalidConfig`` unless ``text`` is a non-empty str of at most ``limit``
    characters with no control character (C0, C1), line or paragraph separator,
    bidirectional control or lone surrogate: a child id or supervisor name goes
    as it is into log lines, metric labels, JSON and terminals.

    >>> check_name("child id", "worker-1 (ünïcode ✓)")
    >>> check_name("child id", "a\\nERROR forged")
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidConfig: child id must have no control character, line \
separator, bidirectional control or lone surrogate, got '\\n' in 'a\\nERROR forged'
    """
    if not isinstance(text, str) or not text:
        raise InvalidConfig(f"{what} must be a non-empty str, not {bounded_repr(text)}")
    if len(text) > limit:
        raise InvalidConfig(f"{what} must be at most {limit} characters, not {len(text)}")
    if text.isprintable():  # the common case: nothing below can be in it
        return
    for char in text:
        if char in _BIDI or unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise InvalidConfig(
                f"{what} must have no control character, line separator, bidirectional "
                f"control or lone surrogate, got {char!r} in {bounded_repr(text)}"
            )


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start, restart and stop one child.

    ``start`` and ``kind`` (guessed when omitted):

    - ``"task"``: an ``async def`` function, run as an asyncio task as
      ``start(ctx, *args, **kwargs)``; ``ctx`` is a :class:`ChildContext`.
    - ``"thread"``: a plain function (the default for a non-async callable), run
      in a daemon thread as ``start(ctx, *args, **kwargs)``.
    - ``"process"``: an argv sequence (``["python", "-m", "app"]``; ``args`` are
      appended, ``kwargs`` go to :class:`subprocess.Popen`), or a picklable
      function run in a ``multiprocessing`` "spawn" process as
      ``start(ctx, *args, **kwargs)`` with a :class:`ProcessContext`.
    - ``"supervisor"``: a :class:`Supervisor`, or a zero-argument factory
      returning one (a fresh tree per restart).

    Readiness (the start handshake): with ``readiness="explicit"`` the child is
    started only once it calls ``ctx.ready()`` (an argv process writes a byte
    to the file descriptor named by ``$FOUNDATION_READY_FD``, see
    :func:`notify_ready`); with ``"spawned"`` it is ready as soon as it exists.
    The default is ``"explicit"`` for every child given a context (tasks,
    threads, multiprocessing targets) and ``"spawned"`` for argv processes. A
    nested supervisor is ready when its own children are. A child that ends,
    or is not ready within ``ready_timeout`` seconds (``None``: no limit), has
    failed to start.

    A task or thread child that decides not to run calls ``ctx.ignore()``
    instead of ``ctx.ready()`` and returns (OTP's ``ignore``): see
    :meth:`ChildContext.ignore`.

    ``restart``: ``"permanent"`` children are always restarted, ``"transient"``
    ones only after an abnormal exit, ``"temporary"`` ones never (their spec is
    dropped when they end). ``shutdown_timeout`` (seconds, ``None`` waits for
    ever) bounds an orderly stop before the child is killed where its kind
    allows it; ``0`` is OTP's ``brutal_kill`` (no orderly stop: a process gets
    SIGKILL, a task is cancelled and not waited for, a thread is abandoned at
    once). A stopped process has been reaped; a stopped thread's function has
    returned, and its thread ends right after, once the death listeners that
    run on it (``spawn_thread`` tells monitors from the dying thread) and its
    thread-locals' destructors are done: a stop does not wait for those, as
    they may wait for the supervisor. Its end is recorded before its
    supervisor learns of the exit, though: once a thread child has crashed,
    returned or stopped, its thread is dead for ``liveness.is_alive()`` and
    for every registry (``Thread.is_alive()`` itself turns False as the thread
    ends), so a restarted run registering itself under the key the last one
    held takes it (reason ``"down"``), never ``AlreadyRegistered``; a registry
    whose death listener has not run yet finds the holder dead. A crashed
    thread child's monitors hear ``Down("exception")`` with its exception.
    With a registry, the child's live handle is registered under
    ``register_as`` (default: ``id``) with ``metadata`` on every (re)start; a
    name held by a live agent outside the supervisor is refused.

    ``significant`` (transient and temporary children only): with the
    supervisor's ``auto_shutdown``, this child's own exit (not one the
    supervisor caused) may stop the whole supervisor; see :class:`Supervisor`.

    ``args`` is a tuple or list; ``metadata`` must be JSON-compatible (the
    registry's rule), checked here rather than at the first start.

    Raises:
        InvalidConfig: an id that is not a non-empty str of at most 200
            characters free of control characters (C0, C1), line separators,
            bidirectional controls and lone surrogates (a ``ValueError``).
        ValueError: an unknown restart, kind or readiness, a
            negative timeout (or a ``ready_timeout`` of 0, or one past the
            float range), or ``significant`` on a permanent child.
        TypeError: a ``start`` that does not fit its kind (a plain ``def``
            function as a ``"task"``: it would block the event loop); a
            timeout that is not a number; ``args`` that are
            not a tuple or list (a str usually means a missing comma:
            ``args=("events",)``); ``kwargs`` that are not a mapping.
        InvalidMetadata: metadata that is not JSON-compatible.

    Example:
        >>> from foundation.supervision import ChildSpec
        >>> async def worker(ctx):
        ...     ctx.ready()
        >>> ChildSpec("w", worker).kind
        'task'
        >>> ChildSpec("p", ["sleep", "60"], restart="transient").kind
        'process'
    """

    id: str
    start: Callable[..., Any] | Sequence[str] | Supervisor
    kind: ChildKind | None = None
    restart: RestartType = "permanent"
    shutdown_timeout: float | None = 5.0
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    register_as: Hashable | None = None
    metadata: Mapping[str, Any] | None = None
    readiness: Readiness | None = None
    ready_timeout: float | None = 5.0
    significant: bool = False

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_timeouts()
        self._check_significant()
        self._check_call_args()
        kind = self.kind if self.kind is not None else _guess_kind(self.start)
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, not {kind!r}")
        _check_start(self.id, kind, self.start)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        if self.metadata is not None:
            # The registry's own rule and frozen shape (InvalidMetadata otherwise).
            object.__setattr__(self, "metadata", freeze_metadata(self.metadata))

    def _check_choices(self) -> None:
        """Raise unless the id is a fitting name and restart, readiness are known values."""
        check_name("a child id", self.id)
        if self.restart not in _RESTARTS:
            raise ValueError(f"restart must be one of {_RESTARTS}, not {self.restart!r}")
        if self.readiness is not None and self.readiness not in _READINESS:
            raise ValueError(f"readiness must be one of {_READINESS}, not {self.readiness!r}")

    def _check_significant(self) -> None:
        """Raise unless significant is a bool, and False on a permanent child."""
        if not isinstance(self.significant, bool):
            raise TypeError(f"significant must be a bool, not {self.significant!r}")
        if self.significant and self.restart == "permanent":
            # OTP: {bad_combination, [{restart, permanent}, {significant, true}]}
            raise ValueError(
                f"child {self.id!r}: a significant child must be transient or temporary, "
                "not permanent"
            )

    def _check_call_args(self) -> None:
        """Raise unless args is a tuple or list and kwargs a mapping."""
        args: object = self.args  # typed as a tuple; checked as whatever was passed
        if isinstance(args, (str, bytes)):
            shown = bounded_repr(args)  # the caller's text: bounded
            raise TypeError(
                f"child {self.id!r}: args must be a tuple or list, not a "
                f"{type(args).__name__} ({shown}); a missing comma? write args=({shown},)"
            )
        if not isinstance(args, (tuple, list)):
            raise TypeError(
                f"child {self.id!r}: args must be a tuple or list, not {type(args).__name__}"
            )
        if not isinstance(self.kwargs, Mapping):
            raise TypeError(
                f"child {self.id!r}: kwargs must be a mapping, not {type(self.kwargs).__name__}"
            )

    def _check_timeouts(self) -> None:
        """Raise unless shutdown_timeout and ready_timeout are None or fitting numbers."""
        for name in ("shutdown_timeout", "ready_timeout"):
            if getattr(self, name) is not None:
                _check_number(f"child {self.id!r}: {name}", getattr(self, name))
        if self.shutdown_timeout is not None and not self.shutdown_timeout >= 0:
            raise ValueError(
                f"shutdown_timeout must be >= 0 (0: brutal_kill) or None, "
                f"not {self.shutdown_timeout!r}"
            )
        if self.ready_timeout is not None and not self.ready_timeout > 0:
            raise ValueError(f"ready_timeout must be positive or None, not {self.ready_timeout!r}")

    @property
    def key(self) -> Hashable:
        """The registry key: ``register_as``, else ``id``."""
        return self.id if self.register_as is None else self.register_as

    @property
    def explicit_ready(self) -> bool:
        """True when a start waits for the child's own ready signal."""
        if self.kind == "supervisor":
            return False
        if self.readiness is not None:
            return self.readiness == "explicit"
        return not (self.kind == "process" and _is_argv(self.start))


def _is_argv(start: object) -> bool:
    return isinstance(start, (list, tuple)) and all(isinstance(a, str) for a in start)


def _guess_kind(start: object) -> ChildKind:
    from foundation.supervision._supervisor import Supervisor

    if isinstance(start, Supervisor):
        return "supervisor"
    if _is_argv(start):
        return "process"
    if inspect.iscoroutinefunction(start):
        return "task"
    if callable(start):
        return "thread"
    raise TypeError(f"cannot tell how to start {start!r}: pass kind=")


def _check_number(what: str, value: object) -> None:
    """A number of seconds (or a factor): an int or float that fits a float.

    Checked at the call: a str compares with nothing, and an int past the
    float range (``10**400``) would fail only at the first timer built on it.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    try:
        float(value)
    except OverflowError:
        raise ValueError(f"{what} is too large for a float: {bounded_repr(value)}") from None


def _plain_function(start: object) -> bool:
    """True for a ``def`` function (or method, or a partial of one) that is not
    ``async def``: called as a task child it would run on the event loop itself."""
    while isinstance(start, functools.partial):
        start = start.func
    if inspect.ismethod(start):
        start = start.__func__
    return (
        inspect.isfunction(start)
        and start.__name__ != "<lambda>"  # a lambda may return a coroutine: allowed
        and not inspect.iscoroutinefunction(start)
        and not inspect.isasyncgenfunction(start)
    )


def _check_start(child: str, kind: str, start: object) -> None:
    if kind == "task" and _plain_function(start):
        raise TypeError(
            f"child {child!r}: a task child is an async def function, not {start!r} "
            "(a plain function would run on the event loop and block it); "
            "use async def, or kind='thread'"
        )
    if kind == "thread" and inspect.iscoroutinefunction(start):
        raise TypeError(
            f"child {child!r}: {start!r} is an async def function: a thread would only "
            "create its coroutine; use kind='task'"
        )
    if not _fits_kind(kind, start):
        raise TypeError(f"child {child!r}: {start!r} cannot be started as a {kind}")


def _fits_kind(kind: str, start: object) -> bool:
    """True if ``start`` is the kind of thing a child of ``kind`` is started from."""
    from foundation.supervision._supervisor import Supervisor

    if kind == "process":
        return (_is_argv(start) and len(start) > 0) or callable(start)  # type: ignore[arg-type]
    if kind == "supervisor":
        return isinstance(start, Supervisor) or callable(start)
    # task, thread
    return callable(start) and not isinstance(start, Supervisor)


def check_childspecs(specs: Iterable[object], auto_shutdown: AutoShutdown = "never") -> str | None:
    """``None`` if ``specs`` can be one supervisor's children, else why not.

    OTP's ``supervisor:check_childspecs/2`` (``ok`` or ``{error, Reason}``).
    Each item is a :class:`ChildSpec` or a mapping of ``ChildSpec`` arguments
    (validated by building it); the list is refused for duplicate ids,
    duplicate registry keys (``register_as``, else the id), and significant
    children under ``auto_shutdown="never"``. Anything but an iterable of
    specs (one ``ChildSpec``, a mapping, a str) is refused too, as OTP's
    ``{badarg, _}``.

    Example:
        >>> from foundation.supervision import ChildSpec, check_childspecs
        >>> def work(ctx): ...
        >>> check_childspecs([ChildSpec("a", work), {"id": "b", "start": work}]) is None
        True
        >>> check_childspecs([ChildSpec("a", work), ChildSpec("a", work)])
        "duplicate child id 'a'"
        >>> check_childspecs(ChildSpec("a", work))
        'specs must be a list of child specs, not ChildSpec'
        >>> print(check_childspecs([{"id": "x", "start": work, "args": ("oops")}]))
        ... # doctest: +ELLIPSIS
        child 'x': args must be a tuple or list, not a str ('oops'); a missing comma? ...
    """
    if isinstance(specs, (ChildSpec, Mapping, str, bytes)) or not isinstance(specs, Iterable):
        # OTP: {error, {badarg, Specs}} for anything but a list.
        return f"specs must be a list of child specs, not {type(specs).__name__}"
    built: list[ChildSpec] = []
    for item in specs:
        if isinstance(item, ChildSpec):
            built.append(item)
        elif isinstance(item, Mapping):
            try:
                built.append(ChildSpec(**item))
            except (TypeError, ValueError) as exc:  # InvalidMetadata is a ValueError
                return str(exc)
        else:
            return f"not a ChildSpec: {item!r}"
    return _check_specs(built, auto_shutdown)


def _check_specs(specs: Sequence[object], auto_shutdown: str) -> str | None:
    """Why ``specs`` cannot be one supervisor's children (``None``: they can)."""
    if auto_shutdown not in _AUTO_SHUTDOWN:
        return f"auto_shutdown must be one of {_AUTO_SHUTDOWN}, not {auto_shutdown!r}"
    ids: set[str] = set()
    keys: set[Hashable] = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            return f"not a ChildSpec: {spec!r}"
        if spec.id in ids:
            return f"duplicate child id {spec.id!r}"
        ids.add(spec.id)
        try:
            duplicate = spec.key in keys
        except TypeError:
            return f"child {spec.id!r}: register_as {spec.key!r} is not hashable"
        if duplicate:
            return f"duplicate register_as {spec.key!r} (child {spec.id!r})"
        keys.add(spec.key)
        if spec.significant and auto_shutdown == "never":
            # OTP refuses significant children when auto_shutdown is never.
            return f"child {spec.id!r} is significant, but auto_shutdown is 'never'"
    return None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential restart delay, capped: the n-th consecutive restart of a
    child waits ``min(initial * factor ** (n - 1), max_delay)`` seconds.

    A child's count of consecutive restarts resets once it has run for the
    supervisor's ``min_uptime``. Every delayed restart still counts against
    the restart intensity, at the moment it is decided.

    Example:
        >>> from foundation.supervision import Backoff
        >>> b = Backoff(initial=0.1, factor=2.0, max_delay=0.3)
        >>> [b.delay(n) for n in (1, 2, 3, 4)]
        [0.1, 0.2, 0.3, 0.3]
    """

    initial: float = 0.1
    factor: float = 2.0
    max_delay: float = 5.0

    def __post_init__(self) -> None:
        for name in ("initial", "factor", "max_delay"):
            _check_number(f"Backoff {name}", getattr(self, name))
        if not (self.initial >= 0 and self.factor >= 1 and self.max_delay >= 0):
            raise ValueError("Backoff needs initial >= 0, factor >= 1 and max_delay >= 0")

    def delay(self, attempt: int) -> float:
        """The delay before consecutive restart number ``attempt`` (1-based)."""
        if attempt <= 0:
            return 0.0
        try:
            delay = self.initial * self.factor ** (attempt - 1)
        except OverflowError:  # factor ** n past the float range: the cap holds
            return float(self.max_delay)
        return float(min(self.max_delay, delay))


@dataclass(frozen=True, slots=True)
class ChildExit:
    """How a child run ended.

    ``reason``: ``"normal"`` (returned, or exit code 0), ``"exception"``
    (``exception`` says which; also a failed start), ``"cancelled"`` (a task
    cancelled by someone else), ``"exit"`` (a process with a non-zero
    ``exit_code``), ``"killed"`` (a process ended by ``signal``, or killed by
    the supervisor after its shutdown timeout), ``"shutdown"`` (stopped by its
    supervisor in time; also a nested supervisor that gave up, as OTP's
    ``shutdown``, its ``RestartIntensityExceeded`` as ``exception``) or
    ``"abandoned"`` (a thread, or a task ignoring cancellation, still
    running after its shutdown timeout).

    Example:
        >>> from foundation.supervision import ChildExit
        >>> ChildExit("exit", exit_code=3).abnormal
        True
    """

    reason: ExitReason
    exception: BaseException | None = None
    exit_code: int | None = None
    signal: int | None = None

    @property
    def abnormal(self) -> bool:
        """True for every reason but ``"normal"`` and ``"shutdown"``."""
        return self.reason not in ("normal", "shutdown")


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One row of ``which_children()``.

    ``handle`` is the live run (``asyncio.Task``, ``threading.Thread``,
    ``subprocess.Popen``, ``multiprocessing.Process`` or the nested
    ``Supervisor``), ``None`` unless running. ``status`` is ``"running"``,
    ``"restarting"``, ``"stopped"``, or ``"abandoned"``: stopped, but its last
    run (a thread, or a task ignoring cancellation) did not stop within its
    shutdown timeout and still runs, unsupervised; ``handle`` is then that
    thread (or task), and the row turns ``"stopped"`` once it ends. An
    abandoned child is stopped for the management calls (``restart_child``,
    ``delete_child``). ``restarts`` counts the restarts
    of this child since its supervisor started. ``registered`` is True while
    the running child's handle is registered in the supervisor's registry;
    False without a registry, when not running, and in degraded mode (the
    registry backend is unavailable and the registration is being retried).
    """

    id: str
    kind: ChildKind
    restart: RestartType
    status: ChildStatus
    handle: Any
    restarts: int
    registered: bool = False


@dataclass(frozen=True, slots=True)
class ChildCounts:
    """``count_children()``: specs held, children running, and how many are
    supervisors or workers (every other kind)."""

    specs: int
    active: int
    supervisors: int
    workers: int
