"""What a supervisor tells the world about its children: telemetry events and
the reports of ``_reports`` (started, exited or crashed, failed starts, giving up)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from foundation import telemetry
from foundation.errors import AlreadyRegistered, RestartIntensityExceeded, StartError
from foundation.supervision import _reports as reports
from foundation.supervision._child import _describe

if TYPE_CHECKING:
    from foundation.supervision._child import _Child
    from foundation.supervision._runs import Run
    from foundation.supervision._spec import ChildExit, ChildSpec

__all__: list[str] = []


_TRACEBACK_LOGGED = "_foundation_traceback_logged"


def traceback_logged(exc: BaseException) -> bool:
    """Whether ``exc`` is the StartError of a failed start whose crash report
    (with the traceback) is logged already: the layers above it (a parent
    supervisor, the ``Application``) then say so briefly, not with the same
    traceback again (one failed start, one traceback in the log)."""
    return getattr(exc, _TRACEBACK_LOGGED, False) is True


def start_failure(supervisor: str, spec: ChildSpec, exc: Exception) -> StartError:
    """Report the failed start of ``spec``; the StartError to raise for it."""
    # A nested supervisor's failed start: its failing child's report above
    # carries the traceback; this one restates it at DEBUG.
    nested = traceback_logged(exc)
    reports.start_failed(supervisor, spec.id, str(spec.kind), error=exc, reported=nested)
    err = StartError(
        spec.id,
        f"child {spec.id!r} of supervisor {supervisor!r} failed to start: {reports._safe_str(exc)}",
    )
    if nested or reports.crash_log.isEnabledFor(logging.ERROR):
        setattr(err, _TRACEBACK_LOGGED, True)
    if isinstance(exc, AlreadyRegistered):
        # As {:via, Registry, name}: {error, {already_started, Holder}}.
        err.reason = "already_started"
        err.handle = exc.entry.agent if exc.entry is not None else None
    return err


def naming(supervisor: str, label: str, child: _Child) -> dict[str, Any]:
    """The fields naming ``child`` in every event about it: ``supervisor`` and
    ``child`` (names, as in logs), ``supervisor_label`` (the supervisor's
    ``_label``) and ``template`` (the id of the DynamicSupervisor template the
    child was made from, else None). The last two are what metrics label by:
    they stay the same for every instance of a template, so a service that
    starts children without end keeps a bounded set of series."""
    return {
        "supervisor": supervisor,
        "supervisor_label": label,
        "child": child.spec.id,
        "template": child.template,
    }


def announce_started(
    supervisor: str, child: _Child, run: Run, restarted: bool, *, label: str
) -> None:
    """Emit the started (and restarted) telemetry events and progress report of a run."""
    spec = child.spec
    if telemetry.has_listeners("supervisor.child_started"):
        telemetry.emit(
            "supervisor.child_started",
            {
                **naming(supervisor, label, child),
                "kind": spec.kind,
                "handle": run.handle,
                "attempt": run.attempt,
            },
        )
    reports.child_started(
        supervisor, spec.id, str(spec.kind), restarted=restarted, attempt=run.attempt
    )
    if restarted and telemetry.has_listeners("supervisor.child_restarted"):
        telemetry.emit(
            "supervisor.child_restarted",
            {
                **naming(supervisor, label, child),
                "handle": run.handle,
                "restarts": child.restarts,
            },
        )


def report_exit(supervisor: str, child: _Child, exit: ChildExit, action: str) -> None:
    """Report a child's exit: a crash if abnormal, else a plain exit.

    A nested supervisor that gave up (a ``"shutdown"`` exit carrying its
    ``RestartIntensityExceeded``) is reported as a crash as well: not restarted
    (transient) or ending its parent normally (significant), its subtree's
    failure must still reach the operator's log."""
    spec = child.spec
    kind = str(spec.kind)
    if exit.abnormal or exit.exception is not None:
        reports.child_crashed(supervisor, spec.id, kind, exit, action=action)
    else:
        reports.child_exited(supervisor, spec.id, kind, exit, action=action)


def emit_exit(
    supervisor: str, child: _Child, exit: ChildExit, *, restart: bool, label: str
) -> None:
    """Emit ``supervisor.child_exited`` for ``child``'s ``exit``."""
    if telemetry.has_listeners("supervisor.child_exited"):
        telemetry.emit(
            "supervisor.child_exited",
            {
                **naming(supervisor, label, child),
                "reason": exit.reason,
                "exception": exit.exception,
                "exit_code": exit.exit_code,
                "signal": exit.signal,
                "restart": restart,
            },
        )


def intensity_error(
    supervisor: str, child: _Child, exit: ChildExit, max_restarts: int, max_seconds: float
) -> RestartIntensityExceeded:
    """The error of a supervisor that gives up after ``child``'s ``exit``."""
    err = RestartIntensityExceeded(
        f"supervisor {supervisor!r} gave up: more than {max_restarts} restarts "
        f"within {max_seconds:g} s; last, child {child.spec.id!r} ended "
        f"({_describe(exit)})"
    )
    err.__cause__ = exit.exception
    return err


def announce_intensity_exceeded(
    supervisor: str,
    child: _Child,
    err: RestartIntensityExceeded,
    *,
    max_restarts: int,
    max_seconds: float,
    history: Iterable[tuple[float, str]],
    label: str,
) -> None:
    """Report and emit that the supervisor gives up (``err``), with its restart ``history``."""
    reports.intensity_exceeded(
        supervisor,
        child.spec.id,
        max_restarts=max_restarts,
        max_seconds=max_seconds,
        history=list(history),
    )
    if telemetry.has_listeners("supervisor.intensity_exceeded"):
        telemetry.emit(
            "supervisor.intensity_exceeded",
            {
                **naming(supervisor, label, child),
                "max_restarts": max_restarts,
                "max_seconds": max_seconds,
                "error": err,
            },
        )
