"""What is reported when a child's *start* fails or is ignored and its run is
then stopped, against OTP: a failed start is one ``start_error`` report
(``start_failed``), never a ``shutdown_error`` as well; a run the supervisor
stops (its own stop, ``start()`` cancelled, a child that ignored its start and
goes on) that does not end cleanly is one ERROR ``shutdown_error``; a clean
end, nothing. A child that never started emits no ``supervisor.child_exited``
(it emitted no ``child_started``).

Real supervisors with real task, thread and argv-process children; records
are caught by a handler on ``foundation.supervision``, telemetry by a listener.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

import pytest

from foundation.errors import StartError
from foundation.registry import MemoryRegistry
from foundation.supervision import ChildContext, ChildSpec, Supervisor
from tests._logs import Records, captured
from tests.supervision._support import captured_events, run

PY = sys.executable

# Exits 3 on SIGTERM (a failed flush on shutdown); never ready. Its ready_timeout
# leaves it ample time to set its handler first (a start under load).
NEVER_READY_EXIT_3_ON_SIGTERM = """
import signal, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))
while True:
    signal.pause()
"""

# Exits 3 before it is ready: a failed start.
EXITS_3_AT_ONCE = "import sys; sys.exit(3)"


class CleanupFailed(Exception):
    """What a child's cleanup raises when stopped."""


class StartFailed(Exception):
    """What a child raises before it is ready."""


@pytest.fixture
def reports() -> Iterator[Records]:
    with captured("foundation.supervision") as kept:
        yield kept


def errors(reports: Records) -> list[logging.LogRecord]:
    return [r for r in list(reports) if r.levelno >= logging.ERROR]


def exits(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [d for n, d in events if n == "supervisor.child_exited"]


def the_only_error(reports: Records, event: str) -> logging.LogRecord:
    """The one ERROR record, checked to be an ``event`` report about child c."""
    (record,) = errors(reports)
    assert record.name == "foundation.supervision.crash"
    assert (record.event, record.child, record.supervisor) == (event, "c", "app")  # type: ignore[attr-defined]
    return record


async def raises_before_ready(ctx: ChildContext) -> None:
    raise StartFailed("cannot connect")


def thread_raises_before_ready(ctx: ChildContext) -> None:
    raise StartFailed("cannot connect")


async def ignores(ctx: ChildContext) -> None:
    ctx.ignore()


async def ignores_then_crashes(ctx: ChildContext) -> None:
    ctx.ignore()
    raise StartFailed("crashed after ignore()")


async def ignores_then_cleanup_raises(ctx: ChildContext) -> None:
    ctx.ignore()
    try:
        await asyncio.Event().wait()  # goes on after ignore(): the supervisor stops it
    finally:
        raise CleanupFailed("flush on stop failed")


def never_ready_cleanup_raises(started: asyncio.Event) -> Any:
    async def child(ctx: ChildContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            raise CleanupFailed("flush on stop failed")

    return child


def never_ready(started: asyncio.Event) -> Any:
    async def child(ctx: ChildContext) -> None:
        started.set()
        await asyncio.Event().wait()

    return child


async def task_cleanup_raises(ctx: ChildContext) -> None:
    ctx.ready()
    try:
        await asyncio.Event().wait()
    finally:
        raise CleanupFailed("flush on stop failed")


def notes(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


# ---------------------------------------------------------------- a start that fails on its own
@pytest.mark.parametrize(
    "spec",
    [
        ChildSpec("c", raises_before_ready),
        ChildSpec("c", thread_raises_before_ready, kind="thread"),
        ChildSpec("c", [PY, "-c", EXITS_3_AT_ONCE], readiness="explicit"),
    ],
    ids=["task", "thread", "process"],
)
@run
async def test_a_start_failing_by_its_own_end_is_one_start_report(
    reports: Records, spec: ChildSpec
) -> None:
    with captured_events() as events:
        sup = Supervisor([spec], name="app")
        with pytest.raises(StartError):
            await sup.start()
    record = the_only_error(reports, "start_failed")
    assert record.reason == "start_error"  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert notes(record.exc_info[1]) == ""  # its own end is the failure: said once
    assert reports.of("shutdown_error") == []
    assert exits(events) == []  # never started: no child_exited


# ---------------------------------------------------------------- ignore
@run
async def test_an_ignored_start_reports_no_error(reports: Records) -> None:
    with captured_events() as events:
        async with Supervisor([ChildSpec("c", ignores)], name="app") as sup:
            assert sup.which_child("c").status == "stopped"
    assert errors(reports) == []
    assert len(reports.of("child_ignored", "c")) == 1
    assert exits(events) == []


@pytest.mark.parametrize(
    ("start", "error"),
    [(ignores_then_crashes, StartFailed), (ignores_then_cleanup_raises, CleanupFailed)],
    ids=["crashes", "cleanup-raises"],
)
@run
async def test_an_ignored_run_not_ending_cleanly_is_one_shutdown_error(
    reports: Records, start: Any, error: type[Exception]
) -> None:
    with captured_events() as events:
        async with Supervisor([ChildSpec("c", start)], name="app") as sup:
            assert sup.which_child("c").status == "stopped"
    record = the_only_error(reports, "shutdown_error")
    assert record.action == "ignore"  # type: ignore[attr-defined]
    assert record.reason == "exception"  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], error)
    assert len(reports.of("child_ignored", "c")) == 1  # still an ignored start
    assert exits(events) == []


# ---------------------------------------------------------------- stopped while starting
@run
async def test_a_child_stopped_before_ready_by_the_stop_is_one_shutdown_error(
    reports: Records,
) -> None:
    started = asyncio.Event()
    sup = Supervisor([], name="app")
    await sup.start()
    with captured_events() as events:
        adding = asyncio.create_task(
            sup.start_child(ChildSpec("c", never_ready_cleanup_raises(started)))
        )
        await started.wait()
        await sup.stop()
        with pytest.raises(StartError):  # cut short by the stop: not a failed start
            await adding
    record = the_only_error(reports, "shutdown_error")
    assert record.action == "shutdown"  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], CleanupFailed)
    assert reports.of("start_failed") == []
    assert exits(events) == []


@run
async def test_a_child_stopped_before_ready_when_start_is_cancelled_is_one_shutdown_error(
    reports: Records,
) -> None:
    started = asyncio.Event()
    sup = Supervisor([ChildSpec("c", never_ready_cleanup_raises(started))], name="app")
    starting = asyncio.create_task(sup.start())
    await started.wait()
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    record = the_only_error(reports, "shutdown_error")
    assert record.action == "shutdown"  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], CleanupFailed)
    assert reports.of("start_failed") == []


@run
async def test_a_child_stopped_cleanly_before_ready_reports_no_error(reports: Records) -> None:
    started = asyncio.Event()
    sup = Supervisor([], name="app")
    await sup.start()
    adding = asyncio.create_task(sup.start_child(ChildSpec("c", never_ready(started))))
    await started.wait()
    await sup.stop()
    with pytest.raises(StartError):
        await adding
    assert errors(reports) == []
    assert [r for r in list(reports) if r.levelno >= logging.WARNING] == []


# ---------------------------------------------------------------- start timed out
@pytest.mark.parametrize("kind", ["task", "process"])
@run
async def test_a_start_timing_out_whose_stop_fails_is_one_start_report_saying_so(
    reports: Records, kind: str
) -> None:
    started = asyncio.Event()
    if kind == "task":
        spec = ChildSpec("c", never_ready_cleanup_raises(started), ready_timeout=0.2)
        said = "CleanupFailed('flush on stop failed')"
    else:
        started.set()
        spec = ChildSpec(
            "c",
            [PY, "-c", NEVER_READY_EXIT_3_ON_SIGTERM],
            readiness="explicit",
            ready_timeout=3.0,
        )
        said = "exit code 3"
    with captured_events() as events:
        sup = Supervisor([spec], name="app")
        with pytest.raises(StartError) as info:
            await sup.start()
    assert started.is_set()
    record = the_only_error(reports, "start_failed")
    assert record.exc_info is not None
    failure = record.exc_info[1]
    assert isinstance(failure, TimeoutError)
    assert info.value.__cause__ is failure
    assert "did not end cleanly" in notes(failure)
    assert said in notes(failure)
    assert reports.of("shutdown_error") == []
    assert exits(events) == []


@run
async def test_a_start_timing_out_whose_stop_is_clean_is_one_plain_start_report(
    reports: Records,
) -> None:
    started = asyncio.Event()
    spec = ChildSpec("c", never_ready(started), ready_timeout=0.2)
    sup = Supervisor([spec], name="app")
    with pytest.raises(StartError):
        await sup.start()
    record = the_only_error(reports, "start_failed")
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], TimeoutError)
    assert notes(record.exc_info[1]) == ""


# ---------------------------------------------------------------- registration refused
@run
async def test_a_refused_registration_whose_stop_fails_is_one_start_report_saying_so(
    reports: Records,
) -> None:
    with MemoryRegistry() as registry:
        holder = Supervisor(
            [ChildSpec("h", _serve, register_as="svc")],
            name="holder",
            registry=registry,
        )
        await holder.start()
        try:
            sup = Supervisor(
                [ChildSpec("c", task_cleanup_raises, register_as="svc")],
                name="app",
                registry=registry,
            )
            with pytest.raises(StartError) as info:
                await sup.start()
            assert info.value.reason == "already_started"
        finally:
            await holder.stop()
    record = the_only_error(reports, "start_failed")
    assert record.exc_info is not None
    assert "CleanupFailed('flush on stop failed')" in notes(record.exc_info[1])
    assert reports.of("shutdown_error") == []


def refusing_registry(refusal: Exception) -> MemoryRegistry:
    """A registry refusing every registration with one and the same error
    object (one that keeps the error of its last failure and raises it again)."""

    class Refusing(MemoryRegistry):
        def register(
            self,
            key: Hashable,
            agent: Any,
            metadata: Mapping[str, Any] | None = None,
            *,
            replace: bool = False,
        ) -> None:
            raise refusal

    return Refusing()


@run
async def test_the_same_error_failing_two_starts_says_only_its_last_stop(
    reports: Records,
) -> None:
    refusal = PermissionError("registrations are closed")
    with refusing_registry(refusal) as registry:
        for _ in range(2):
            sup = Supervisor([ChildSpec("c", task_cleanup_raises)], name="app", registry=registry)
            with pytest.raises(StartError):
                await sup.start()
    failed = reports.of("start_failed")
    assert len(failed) == 2
    assert all(r.exc_info is not None and r.exc_info[1] is refusal for r in failed)
    assert notes(refusal).count("did not end cleanly") == 1  # add_note accumulates
    assert "CleanupFailed('flush on stop failed')" in notes(refusal)
    assert reports.of("shutdown_error") == []


async def _serve(ctx: ChildContext) -> None:
    ctx.ready()
    await asyncio.Event().wait()
