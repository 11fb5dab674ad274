"""Crash, progress and supervisor reports, written through stdlib ``logging``.

Like OTP's (and Elixir's ``Logger``), a supervisor reports every event it
handles, with no configuration: one log record per event, a one-line header
(``Child w of supervisor app (task) crashed: ValueError('boom'); action:
restart``) and, for a crash, the traceback (``exc_info``). Crash reports are
ERROR, so with logging unconfigured Python's last-resort handler prints them
(with the traceback) to stderr; progress reports are INFO and stay quiet until
logging is configured to show them.

========================================  =======  ==========================================
logger                                    level    events
========================================  =======  ==========================================
``foundation.supervision.crash``          ERROR    a child crashed; a child failed to start;
                                                   a nested supervisor gave up; a child
                                                   ended otherwise than cleanly when
                                                   stopped (``shutdown_error``)
                                          DEBUG    a nested supervisor failed to start (its
                                                   child's ERROR report has the traceback)
``foundation.supervision.progress``       INFO     a child started or restarted, exited
                                                   normally or was shut down, was ignored;
                                                   a supervisor started
``foundation.supervision.supervisor``     WARNING  shutdown timeouts, late stops (a
                                                   blocked loop), kills, abandoned
                                                   threads, automatic shutdown; an
                                                   ``async with`` exit's stop cut short
                                                   by a second cancellation, a stop cut
                                                   short by the loop's end or, in a
                                                   ``run_in_thread()`` handle, a Ctrl-C;
                                          ERROR    restart intensity exceeded, a supervisor
                                                   stopped abnormally (INFO when normal);
                                          INFO     a cancellation met while an ``async
                                                   with`` exit stops (the stop goes on)
========================================  =======  ==========================================

Every record carries these ``extra=`` fields: ``event`` (the function name,
e.g. ``"child_crashed"``), ``supervisor`` (its name), ``child`` (the child id,
or ``None``), ``kind`` (``"task"``, ``"thread"``, ``"process"``,
``"supervisor"``, or ``None``) and ``reason`` (a short str), plus the
event-specific fields each function lists.

Silence them with ordinary logging configuration, e.g.
``logging.getLogger("foundation.supervision").setLevel(logging.CRITICAL)``,
or route them with handlers and ``propagate``. Every function checks
``isEnabledFor`` first (a disabled report costs one call) and never raises: a
failing handler or filter is not the supervisor's problem.

Example:
    >>> import logging
    >>> from foundation.supervision import ChildExit
    >>> from foundation.supervision import _reports as reports
    >>> records = []
    >>> class Keep(logging.Handler):
    ...     def emit(self, record):
    ...         records.append(record)
    >>> log = logging.getLogger("foundation.supervision")
    >>> keep = Keep()
    >>> log.addHandler(keep)
    >>> reports.child_crashed("app", "w", "task", ChildExit("exception", ValueError("boom")),
    ...                       action="restart")
    >>> log.removeHandler(keep)
    >>> r = records[0]
    >>> r.name, r.levelname
    ('foundation.supervision.crash', 'ERROR')
    >>> r.getMessage()
    "Child w of supervisor app (task) crashed: ValueError('boom'); action: restart"
    >>> r.supervisor, r.child, r.kind, r.reason, r.action, r.exc_info[1]
    ('app', 'w', 'task', 'exception', 'restart', ValueError('boom'))
"""

from __future__ import annotations

import contextlib
import logging
import signal as _signal
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from foundation.errors import escape_controls

if TYPE_CHECKING:
    from foundation.supervision._spec import ChildExit

__all__ = [
    "auto_shutdown",
    "child_crashed",
    "child_exited",
    "child_ignored",
    "child_killed",
    "child_started",
    "intensity_exceeded",
    "shutdown_error",
    "shutdown_late",
    "shutdown_timeout",
    "start_failed",
    "supervisor_started",
    "supervisor_stop_cancelled",
    "supervisor_stop_cut_short",
    "supervisor_stopped",
    "thread_abandoned",
]

crash_log = logging.getLogger("foundation.supervision.crash")
progress_log = logging.getLogger("foundation.supervision.progress")
supervisor_log = logging.getLogger("foundation.supervision.supervisor")

_MAX_REPR = 300  # an exception's repr in a header is cut to this many characters
_MAX_HISTORY = 20  # restarts listed in an intensity report's message (all are in ``extra``)


def _safe_repr(obj: object) -> str:
    """``repr(obj)`` on one line of at most ``_MAX_REPR`` characters, never raising:
    a user's ``__repr__`` may raise, return a non-str, or return a newline or
    escape sequence that would forge a log line or drive a terminal."""
    try:
        text = escape_controls(repr(obj))
    except Exception:  # a broken __repr__ must not lose the report
        text = f"<{type(obj).__name__} object (repr failed)>"
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return text


def _safe_str(obj: object) -> str:
    """``str(obj)`` as ``_safe_repr`` bounds and escapes ``repr``: for an
    exception's text in a message (a ``StartError``'s)."""
    try:
        text = escape_controls(str(obj))
    except Exception:  # a broken __str__ must not break the start's error
        text = f"<{type(obj).__name__} object (str failed)>"
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return text


def _signal_name(signum: int) -> str:
    try:
        return f"{_signal.Signals(signum).name} ({signum})"
    except ValueError:
        return f"signal {signum}"


def _emit(
    logger: logging.Logger,
    level: int,
    event: str,
    msg: str,
    args: tuple[Any, ...],
    *,
    fields: Mapping[str, Any],
    exc: BaseException | None = None,
) -> None:
    """Log one record; never raise (a broken filter or handler is reported to stderr)."""
    extra = {"event": event, **fields}
    try:
        logger.log(level, msg, *args, exc_info=exc, extra=extra, stacklevel=3)
    except Exception as log_exc:  # a raising filter: the supervisor carries on
        with contextlib.suppress(Exception):  # stderr closed: nothing left to report to
            print(
                f"foundation.supervision: could not log a {event} report: {_safe_repr(log_exc)}",
                file=sys.stderr,
            )


def _exit_text(exit: ChildExit) -> str:
    """How a run ended, as the tail of a report header."""
    reason = exit.reason
    if reason == "exception":
        return f"crashed: {_safe_repr(exit.exception)}" if exit.exception is not None else "crashed"
    if reason == "exit":
        return _exit_code_text(exit.exit_code)
    if reason == "killed":
        signum = _exit_signal(exit)
        return f"was killed by {_signal_name(signum)}" if signum is not None else "was killed"
    if reason == "shutdown" and exit.exception is not None:  # a nested supervisor gave up
        return f"shut down: {_safe_repr(exit.exception)}"
    return _PLAIN_EXIT_TEXTS.get(reason, f"exited: {reason}")  # the last: a reason added later


def _exit_code_text(code: int | None) -> str:
    """A process's ``"exit"``: its code, or (None) that its status is lost."""
    if code is None:
        # Its status could not be read: the child was reaped by other code
        # (SIGCHLD ignored, a waitpid(-1) elsewhere). Abnormal: see _ProcessRun._exit_of.
        return "ended, exit status unknown: reaped by another waiter"
    return f"crashed: exit code {code}"


#: _exit_text for the reasons that carry no detail.
_PLAIN_EXIT_TEXTS = {
    "cancelled": "was cancelled",
    "abandoned": "was abandoned (still running after its shutdown timeout)",
    "shutdown": "was shut down",
    "normal": "exited normally",
}


def _exit_signal(exit: ChildExit) -> int | None:
    """The signal that ended the run, if any (also read from a negative exit code)."""
    signum = exit.signal
    if signum is None and exit.exit_code is not None and exit.exit_code < 0:
        signum = -exit.exit_code  # Popen's convention: killed by that signal
    return signum


#: The header of a child's exit report (child_crashed, child_exited).
_EXIT_MSG = "Child %s of supervisor %s (%s) %s; action: %s"


def _exit_report(
    supervisor: str, child: str, kind: str, exit: ChildExit, action: str
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The ``_EXIT_MSG`` arguments and the extra fields of a child's exit report.
    (Built here, logged by the report function itself: ``_emit``'s stacklevel
    names the report function's caller.)"""
    fields = {
        "supervisor": supervisor,
        "child": child,
        "kind": kind,
        "action": action,
        "reason": exit.reason,
        "exit_code": exit.exit_code,
        "signal": _exit_signal(exit),
    }
    return (child, supervisor, kind, _exit_text(exit), action), fields


def child_started(supervisor: str, child: str, kind: str, *, restarted: bool, attempt: int) -> None:
    """Progress report (INFO): ``child`` is running (and ready).

    ``restarted`` is True for a restart, ``attempt`` its consecutive restart
    number (0 for a first start). Extra fields: ``restarted``, ``attempt``;
    ``reason`` is ``"restarted"`` or ``"started"``.

    Example:
        >>> import logging
        >>> log = logging.getLogger("foundation.supervision.progress")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep, level = Keep(), log.level
        >>> log.addHandler(keep); log.setLevel(logging.INFO)
        >>> child_started("app", "w", "thread", restarted=True, attempt=2)
        >>> log.removeHandler(keep); log.setLevel(level)
        >>> records[0].levelname, records[0].getMessage(), records[0].attempt
        ('INFO', 'Child w of supervisor app (thread) restarted (attempt 2)', 2)
    """
    if not progress_log.isEnabledFor(logging.INFO):
        return
    if restarted:
        msg = "Child %s of supervisor %s (%s) restarted (attempt %d)"
        args: tuple[Any, ...] = (child, supervisor, kind, attempt)
    else:
        msg, args = "Child %s of supervisor %s (%s) started", (child, supervisor, kind)
    fields = {
        "supervisor": supervisor,
        "child": child,
        "kind": kind,
        "reason": "restarted" if restarted else "started",
        "restarted": restarted,
        "attempt": attempt,
    }
    _emit(progress_log, logging.INFO, "child_started", msg, args, fields=fields)


def child_crashed(supervisor: str, child: str, kind: str, exit: ChildExit, *, action: str) -> None:
    """Crash report (ERROR): ``child`` ended abnormally, or is a nested
    supervisor that gave up (its ``"shutdown"`` exit carries the
    ``RestartIntensityExceeded``); ``action`` is what the supervisor does
    about it (``"restart"``, ``"restart_all"``, ``"no_restart (temporary)"``, ...).

    The record carries the traceback of ``exit.exception`` (``exc_info``) when
    there is one; a process child's exit code or signal is in the header.
    Extra fields: ``reason`` (``exit.reason``), ``action``, ``exit_code``,
    ``signal``.

    Example:
        >>> import logging
        >>> from foundation.supervision import ChildExit
        >>> log = logging.getLogger("foundation.supervision.crash")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep = Keep()
        >>> log.addHandler(keep)
        >>> child_crashed("app", "p", "process", ChildExit("killed", signal=9), action="restart")
        >>> log.removeHandler(keep)
        >>> records[0].getMessage(), records[0].signal
        ('Child p of supervisor app (process) was killed by SIGKILL (9); action: restart', 9)
    """
    if not crash_log.isEnabledFor(logging.ERROR):
        return
    args, fields = _exit_report(supervisor, child, kind, exit, action)
    _emit(
        crash_log,
        logging.ERROR,
        "child_crashed",
        _EXIT_MSG,
        args,
        fields=fields,
        exc=exit.exception,
    )


def child_exited(supervisor: str, child: str, kind: str, exit: ChildExit, *, action: str) -> None:
    """Progress report (INFO): ``child`` ended normally or was shut down.

    Extra fields as :func:`child_crashed` (no traceback).

    Example:
        >>> import logging
        >>> from foundation.supervision import ChildExit
        >>> log = logging.getLogger("foundation.supervision.progress")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep, level = Keep(), log.level
        >>> log.addHandler(keep); log.setLevel(logging.INFO)
        >>> child_exited("app", "w", "task", ChildExit("normal"),
        ...              action="no_restart (transient, normal exit)")
        >>> log.removeHandler(keep); log.setLevel(level)
        >>> records[0].getMessage()  # doctest: +NORMALIZE_WHITESPACE
        'Child w of supervisor app (task) exited normally;
         action: no_restart (transient, normal exit)'
    """
    if not progress_log.isEnabledFor(logging.INFO):
        return
    args, fields = _exit_report(supervisor, child, kind, exit, action)
    _emit(progress_log, logging.INFO, "child_exited", _EXIT_MSG, args, fields=fields)


def shutdown_error(supervisor: str, child: str, kind: str, exit: ChildExit, *, action: str) -> None:
    """Crash report (ERROR), OTP's ``shutdown_error``: ``child``, being stopped
    by its supervisor (its stop, ``terminate_child``, a strategy's restart, a
    failed start's rollback, a start cut short by the supervisor's stop or by
    ``start()`` cancelled, a child going on after ``ctx.ignore()``), did not
    end cleanly: its cleanup raised, a process exited with a non-zero code
    instead of its SIGTERM, or it had crashed already, just before the stop
    reached it. The stop goes on as a stop; ``action`` says what follows
    (``"shutdown"``, ``"restart"`` for a strategy's restart scope,
    ``"ignore"`` for a child that ignored its start). A child whose own start
    failed is no ``shutdown_error``: see :func:`start_failed`.

    The record carries the traceback of ``exit.exception`` (``exc_info``) when
    there is one. Extra fields as :func:`child_crashed`: ``reason``
    (``exit.reason``), ``action``, ``exit_code``, ``signal``.

    Example:
        >>> import logging
        >>> from foundation.supervision import ChildExit
        >>> log = logging.getLogger("foundation.supervision.crash")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep = Keep()
        >>> log.addHandler(keep)
        >>> shutdown_error("app", "p", "process", ChildExit("exit", exit_code=3), action="shutdown")
        >>> log.removeHandler(keep)
        >>> records[0].levelname, records[0].event, records[0].exit_code
        ('ERROR', 'shutdown_error', 3)
        >>> records[0].getMessage()  # doctest: +NORMALIZE_WHITESPACE
        'Child p of supervisor app (process) crashed: exit code 3 while being shut down
         (shutdown_error); action: shutdown'
    """
    if not crash_log.isEnabledFor(logging.ERROR):
        return
    args, fields = _exit_report(supervisor, child, kind, exit, action)
    _emit(
        crash_log,
        logging.ERROR,
        "shutdown_error",
        "Child %s of supervisor %s (%s) %s while being shut down (shutdown_error); action: %s",
        args,
        fields=fields,
        exc=exit.exception,
    )


def child_ignored(supervisor: str, child: str, kind: str) -> None:
    """Progress report (INFO): ``child``'s start returned *ignore*; its spec is
    kept but nothing runs. ``reason`` is ``"ignore"``.

    Example:
        >>> import logging
        >>> log = logging.getLogger("foundation.supervision.progress")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep, level = Keep(), log.level
        >>> log.addHandler(keep); log.setLevel(logging.INFO)
        >>> child_ignored("app", "w", "task")
        >>> log.removeHandler(keep); log.setLevel(level)
        >>> records[0].getMessage()
        'Child w of supervisor app (task) ignored its start; not running'
    """
    if not progress_log.isEnabledFor(logging.INFO):
        return
    fields = {"supervisor": supervisor, "child": child, "kind": kind, "reason": "ignore"}
    _emit(
        progress_log,
        logging.INFO,
        "child_ignored",
        "Child %s of supervisor %s (%s) ignored its start; not running",
        (child, supervisor, kind),
        fields=fields,
    )


def intensity_exceeded(
    supervisor: str,
    child: str | None,
    *,
    max_restarts: int,
    max_seconds: float,
    history: Sequence[tuple[float, str]],
) -> None:
    """Supervisor report (ERROR): more than ``max_restarts`` restarts within
    ``max_seconds``; the supervisor gives up and shuts down.

    ``child`` is the child whose exit tipped it over (``None`` if unknown),
    ``history`` the ``(time, child id)`` pairs of the restarts counted, listed
    in the message with times relative to the first. Extra fields:
    ``max_restarts``, ``max_seconds``, ``history`` (a list of the pairs),
    ``action`` (``"shutdown"``); ``reason`` is ``"reached_max_restart_intensity"``.

    Example:
        >>> import logging
        >>> log = logging.getLogger("foundation.supervision.supervisor")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep = Keep()
        >>> log.addHandler(keep)
        >>> intensity_exceeded("app", "w", max_restarts=2, max_seconds=5,
        ...                    history=[(10.0, "w"), (10.25, "v"), (10.5, "w")])
        >>> log.removeHandler(keep)
        >>> print(records[0].getMessage())  # doctest: +NORMALIZE_WHITESPACE
        Supervisor app reached maximum restart intensity (more than 2 restarts in 5s),
        last exit: child w; action: shutdown;
        restarts: w at +0.000s, v at +0.250s, w at +0.500s
        >>> records[0].history
        [(10.0, 'w'), (10.25, 'v'), (10.5, 'w')]
    """
    if not supervisor_log.isEnabledFor(logging.ERROR):
        return
    try:
        pairs = [(float(t), str(c)) for t, c in history]
    except Exception:  # a malformed history must not lose the report
        pairs = []
    origin = pairs[0][0] if pairs else 0.0
    shown = ", ".join(f"{c} at +{t - origin:.3f}s" for t, c in pairs[:_MAX_HISTORY])
    if len(pairs) > _MAX_HISTORY:
        shown += f", ... ({len(pairs) - _MAX_HISTORY} more)"
    last = f"child {child}" if child is not None else "unknown child"
    fields = {
        "supervisor": supervisor,
        "child": child,
        "kind": None,
        "reason": "reached_max_restart_intensity",
        "action": "shutdown",
        "max_restarts": max_restarts,
        "max_seconds": max_seconds,
        "history": pairs,
    }
    _emit(
        supervisor_log,
        logging.ERROR,
        "intensity_exceeded",
        "Supervisor %s reached maximum restart intensity (more than %d restarts in %gs), "
        "last exit: %s; action: shutdown; restarts: %s",
        (supervisor, max_restarts, max_seconds, last, shown or "none"),
        fields=fields,
    )


def shutdown_timeout(
    supervisor: str, child: str, kind: str, *, timeout: float, action: str
) -> None:
    """Supervisor report (WARNING): ``child`` did not stop within its shutdown
    ``timeout``; ``action`` says what followed (``"killed"``: a process;
    ``"cancelled again"``: a task, which then ended; ``"abandoned task"``: a
    task that swallows its cancellations). Extra fields: ``timeout``,
    ``action``; ``reason`` is ``"shutdown_timeout"``.

    Example:
        >>> import logging
        >>> log = logging.getLogger("foundation.supervision.supervisor")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep = Keep()
        >>> log.addHandler(keep)
        >>> shutdown_timeout("app", "p", "process", timeout=5.0, action="killed")
        >>> log.removeHandler(keep)
        >>> records[0].levelname, records[0].getMessage()  # doctest: +NORMALIZE_WHITESPACE
        ('WARNING', 'Child p of supervisor app (process) did not stop within its
          shutdown timeout of 5s; action: killed')
    """
    if not supervisor_log.isEnabledFor(logging.WARNING):
        return
    fields = {
        "supervisor": supervisor,
        "child": child,
        "kind": kind,
        "reason": "shutdown_timeout",
        "action": action,
        "timeout": timeout,
    }
    _emit(
        supervisor_log,
        logging.WARNING,
        "shutdown_timeout",
        "Child %s of supervisor %s (%s) did not stop within its shutdown timeout of %gs; "
        "action: %s",
        (child, supervisor, kind, timeout, action),
        fields=fields,
    )


def shutdown_late(supervisor: str, child: str, kind: str, *, timeout: float, took: float) -> None:
    """Supervisor report (WARNING): ``child`` stopped, but ``took`` seconds after
    it was asked to, past its shutdown ``timeout``: it blocked the event loop
    (a blocking call in a coroutine), so the timeout could not fire in time.
    Extra fields: ``timeout``, ``took``; ``reason`` is ``"shutdown_late"``.

    Example:
        >>> import logging
        >>> log = logging.getLogger("foundation.supervision.supervisor")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep = Keep()
        >>> log.addHandler(keep)
        >>> shutdown_late("app", "t", "task", timeout=0.5, took=3.0)
        >>> log.removeHandler(keep)
        >>> records[0].levelname, records[0].getMessage()  # doctest: +NORMALIZE_WHITESPACE
        ('WARNING', 'Child t of supervisor app (task) stopped 3s after it was asked to, past
          its shutdown timeout of 0.5s: it blocked the event loop (a blocking call in a
          coroutine?)')
    """
    if not supervisor_log.isEnabledFor(logging.WARNING):
        return
    fields = {
        "supervisor": supervisor,
        "child": child,
        "kind": kind,
        "reason": "shutdown_late",
        "timeout": timeout,
        "took": took,
    }
    _emit(
        supervisor_log,
        logging.WARNING,
        "shutdown_late",
        "Child %s of supervisor %s (%s) stopped %.3gs after it was asked to, past its "
        "shutdown timeout of %gs: it blocked the event loop (a blocking call in a coroutine?)",
        (child, supervisor, kind, took, timeout),
        fields=fields,
    )


def child_killed(supervisor: str, child: str, kind: str, *, brutal: bool) -> None:
    """Supervisor report (WARNING): the supervisor killed ``child``: at once
    (``brutal``: its spec asks for ``brutal_kill``) or after its shutdown
    timeout. Extra field: ``brutal``; ``reason`` is ``"brutal_kill"`` or
    ``"killed"``.

    Example:
        >>> import logging
        >>> log = logging.getLogger("foundation.supervision.supervisor")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep = Keep()
        >>> log.addHandler(keep)
        >>> child_killed("app", "p", "process", brutal=True)
        >>> log.removeHandler(keep)
        >>> records[0].getMessage()
        'Child p of supervisor app (process) killed (brutal_kill)'
    """
    if not supervisor_log.isEnabledFor(logging.WARNING):
        return
    how = "brutal_kill" if brutal else "after its shutdown timeout"
    fields = {
        "supervisor": supervisor,
        "child": child,
        "kind": kind,
        "reason": "brutal_kill" if brutal else "killed",
        "brutal": brutal,
    }
    _emit(
        supervisor_log,
        logging.WARNING,
        "child_killed",
        "Child %s of supervisor %s (%s) killed (%s)",
        (child, supervisor, kind, how),
        fields=fields,
    )


def thread_abandoned(
    supervisor: str, child: str, *, thread_name: str, still_running: int = 1
) -> None:
    """Supervisor report (WARNING): thread child ``child`` (thread
    ``thread_name``) is still running after its shutdown timeout; a thread
    cannot be killed, so it is left running (a daemon thread) and forgotten.
    ``still_running``: that child's abandoned runs (of supervisors of this
    name, this one included) still running; from 2 the message says so (a
    restart loop leaking one thread per restart). Extra fields:
    ``thread_name``, ``still_running``; ``kind`` is ``"thread"``, ``reason``
    ``"abandoned"``.

    Example:
        >>> import logging
        >>> log = logging.getLogger("foundation.supervision.supervisor")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep = Keep()
        >>> log.addHandler(keep)
        >>> thread_abandoned("app", "t", thread_name="app/t")
        >>> log.removeHandler(keep)
        >>> records[0].getMessage()  # doctest: +NORMALIZE_WHITESPACE
        'Child t of supervisor app (thread) abandoned: thread app/t
         still running after its shutdown timeout'
    """
    if not supervisor_log.isEnabledFor(logging.WARNING):
        return
    fields = {
        "supervisor": supervisor,
        "child": child,
        "kind": "thread",
        "reason": "abandoned",
        "thread_name": thread_name,
        "still_running": still_running,
    }
    leak = ""
    if still_running > 1:
        leak = f"; {still_running} abandoned runs of child {child} are still running"
    _emit(
        supervisor_log,
        logging.WARNING,
        "thread_abandoned",
        "Child %s of supervisor %s (thread) abandoned: thread %s "
        "still running after its shutdown timeout%s",
        (child, supervisor, thread_name, leak),
        fields=fields,
    )


def supervisor_started(supervisor: str, *, strategy: str, children: int) -> None:
    """Progress report (INFO): ``supervisor`` started its ``children``.
    Extra fields: ``strategy``, ``children``; ``child`` and ``kind`` are
    ``None``, ``reason`` is ``"started"``.

    Example:
        >>> import logging
        >>> log = logging.getLogger("foundation.supervision.progress")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep, level = Keep(), log.level
        >>> log.addHandler(keep); log.setLevel(logging.INFO)
        >>> supervisor_started("app", strategy="one_for_one", children=3)
        >>> log.removeHandler(keep); log.setLevel(level)
        >>> records[0].getMessage()
        'Supervisor app started (one_for_one, 3 children)'
    """
    if not progress_log.isEnabledFor(logging.INFO):
        return
    fields = {
        "supervisor": supervisor,
        "child": None,
        "kind": None,
        "reason": "started",
        "strategy": strategy,
        "children": children,
    }
    _emit(
        progress_log,
        logging.INFO,
        "supervisor_started",
        "Supervisor %s started (%s, %d children)",
        (supervisor, strategy, children),
        fields=fields,
    )


def supervisor_stopped(supervisor: str, *, reason: str) -> None:
    """Supervisor report: ``supervisor`` stopped; INFO for ``reason``
    ``"normal"`` or ``"shutdown"``, ERROR otherwise (e.g.
    ``"reached_max_restart_intensity"``).

    Example:
        >>> import logging
        >>> log = logging.getLogger("foundation.supervision.supervisor")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep = Keep()
        >>> log.addHandler(keep)
        >>> supervisor_stopped("app", reason="reached_max_restart_intensity")
        >>> log.removeHandler(keep)
        >>> records[0].levelname, records[0].getMessage()
        ('ERROR', 'Supervisor app stopped: reached_max_restart_intensity')
    """
    level = logging.INFO if reason in ("normal", "shutdown") else logging.ERROR
    if not supervisor_log.isEnabledFor(level):
        return
    fields = {"supervisor": supervisor, "child": None, "kind": None, "reason": reason}
    _emit(
        supervisor_log,
        level,
        "supervisor_stopped",
        "Supervisor %s stopped: %s",
        (supervisor, reason),
        fields=fields,
    )


def supervisor_stop_cancelled(supervisor: str) -> None:
    """Supervisor report (INFO): a cancellation (a Ctrl-C under ``asyncio.run``,
    an ``asyncio.timeout()``) met ``async with supervisor``'s exit while it
    stopped the children: the stop under way goes on to its end, then the
    cancellation. ``child`` and ``kind`` are ``None``, ``reason`` is
    ``"cancelled"``.

    Example:
        >>> import logging
        >>> log = logging.getLogger("foundation.supervision.supervisor")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep, level = Keep(), log.level
        >>> log.addHandler(keep); log.setLevel(logging.INFO)
        >>> supervisor_stop_cancelled("app")
        >>> log.removeHandler(keep); log.setLevel(level)
        >>> records[0].levelname, records[0].getMessage()  # doctest: +NORMALIZE_WHITESPACE
        ('INFO', 'Supervisor app: stop cancelled; it completes first,
          then the cancellation goes on')
    """
    if not supervisor_log.isEnabledFor(logging.INFO):
        return
    fields = {"supervisor": supervisor, "child": None, "kind": None, "reason": "cancelled"}
    _emit(
        supervisor_log,
        logging.INFO,
        "supervisor_stop_cancelled",
        "Supervisor %s: stop cancelled; it completes first, then the cancellation goes on",
        (supervisor,),
        fields=fields,
    )


def supervisor_stop_cut_short(supervisor: str, *, children: Sequence[str]) -> None:
    """Supervisor report (WARNING): a second cancellation ended the wait of
    ``async with supervisor``'s exit for its stop (or the loop's end cancelled
    the stop itself, that of a direct ``await supervisor.stop()`` too, whose
    task reports it); ``children`` (paths: ``"workers/stuck"`` inside a nested
    supervisor) are still running. Extra field: ``children`` (a list);
    ``child`` and ``kind`` are ``None``, ``reason`` is ``"cancelled"``.

    Example:
        >>> import logging
        >>> log = logging.getLogger("foundation.supervision.supervisor")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep = Keep()
        >>> log.addHandler(keep)
        >>> supervisor_stop_cut_short("app", children=["db", "workers/stuck"])
        >>> log.removeHandler(keep)
        >>> records[0].levelname, records[0].getMessage()  # doctest: +NORMALIZE_WHITESPACE
        ('WARNING', 'Supervisor app: stop cancelled before its end;
          still running: db, workers/stuck')
        >>> records[0].children
        ['db', 'workers/stuck']
    """
    if not supervisor_log.isEnabledFor(logging.WARNING):
        return
    left = [str(path) for path in children]
    fields = {
        "supervisor": supervisor,
        "child": None,
        "kind": None,
        "reason": "cancelled",
        "children": left,
    }
    _emit(
        supervisor_log,
        logging.WARNING,
        "supervisor_stop_cut_short",
        "Supervisor %s: stop cancelled before its end; still running: %s",
        (supervisor, ", ".join(left) or "none"),
        fields=fields,
    )


def auto_shutdown(supervisor: str, child: str, *, rule: str) -> None:
    """Supervisor report (WARNING): significant child ``child`` ended and the
    ``auto_shutdown`` ``rule`` (``"any_significant"``, ``"all_significant"``)
    shuts the supervisor down. Extra fields: ``rule``, ``action``
    (``"shutdown"``); ``reason`` is ``"auto_shutdown"``.

    Example:
        >>> import logging
        >>> log = logging.getLogger("foundation.supervision.supervisor")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep = Keep()
        >>> log.addHandler(keep)
        >>> auto_shutdown("app", "w", rule="any_significant")
        >>> log.removeHandler(keep)
        >>> records[0].getMessage()
        'Supervisor app shutting down: significant child w ended (auto_shutdown any_significant)'
    """
    if not supervisor_log.isEnabledFor(logging.WARNING):
        return
    fields = {
        "supervisor": supervisor,
        "child": child,
        "kind": None,
        "reason": "auto_shutdown",
        "action": "shutdown",
        "rule": rule,
    }
    _emit(
        supervisor_log,
        logging.WARNING,
        "auto_shutdown",
        "Supervisor %s shutting down: significant child %s ended (auto_shutdown %s)",
        (supervisor, child, rule),
        fields=fields,
    )


def start_failed(
    supervisor: str, child: str, kind: str, *, error: BaseException, reported: bool = False
) -> None:
    """Crash report (ERROR): ``child`` failed to start (raised, ended or timed
    out before it was ready), with ``error``'s traceback. Extra field:
    ``error`` (its repr); ``reason`` is ``"start_error"``. It is the one
    report of a failed start (OTP's ``start_error``, never a
    ``shutdown_error`` as well): when its run, then stopped, did not end
    cleanly either (a cleanup raising after a ready timeout), a note on
    ``error`` says so, with that traceback, at the end of the record's.

    ``reported``: ``child`` is a nested supervisor whose own failing child's
    crash report, logged just before, carries the traceback; this one is then
    a DEBUG record without it (one failed start, one ERROR traceback).

    Example:
        >>> import logging
        >>> log = logging.getLogger("foundation.supervision.crash")
        >>> records = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> keep = Keep()
        >>> log.addHandler(keep)
        >>> start_failed("app", "w", "task", error=TimeoutError("not ready within 5s"))
        >>> log.removeHandler(keep)
        >>> records[0].getMessage()
        "Child w of supervisor app (task) failed to start: TimeoutError('not ready within 5s')"
    """
    level = logging.DEBUG if reported else logging.ERROR
    if not crash_log.isEnabledFor(level):
        return
    text = _safe_repr(error)
    fields = {
        "supervisor": supervisor,
        "child": child,
        "kind": kind,
        "reason": "start_error",
        "error": text,
    }
    _emit(
        crash_log,
        level,
        "start_failed",
        "Child %s of supervisor %s (%s) failed to start: %s"
        + (" (its child's crash report above has the traceback)" if reported else ""),
        (child, supervisor, kind, text),
        fields=fields,
        exc=None if reported else error,
    )
