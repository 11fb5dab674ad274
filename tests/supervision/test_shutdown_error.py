"""OTP's ``shutdown_error``: a child that does not end cleanly once its
supervisor stops it is reported (one ERROR record), the stop staying a stop.

Real supervisors with real task, thread and argv-process children; records
are caught by a handler on ``foundation.supervision``, telemetry by a listener.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator

import pytest

from foundation.supervision import ChildContext, ChildSpec, Supervisor
from tests._logs import Records, captured
from tests.supervision._support import captured_events, run, until

PY = sys.executable

# Exits 3 on SIGTERM (a failed flush on shutdown); ready once its handler is set.
EXIT_3_ON_SIGTERM = """
import os, signal, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))
os.write(int(os.environ["FOUNDATION_READY_FD"]), b"1")
while True:
    signal.pause()
"""

# Dies by the SIGTERM it is sent: a clean stop.
SERVE = """
import os, signal
os.write(int(os.environ["FOUNDATION_READY_FD"]), b"1")
signal.pause()
"""


class CleanupFailed(Exception):
    """What a child's cleanup raises when stopped."""


@pytest.fixture
def reports() -> Iterator[Records]:
    with captured("foundation.supervision") as kept:
        yield kept


def errors_about(reports: Records, child: str) -> list[logging.LogRecord]:
    return [
        r
        for r in list(reports)
        if r.levelno >= logging.ERROR and getattr(r, "child", None) == child
    ]


def the_shutdown_error(reports: Records, child: str) -> logging.LogRecord:
    """The one ERROR record about ``child``, checked to be its shutdown_error."""
    (record,) = errors_about(reports, child)
    assert record.name == "foundation.supervision.crash"
    assert record.event == "shutdown_error"  # type: ignore[attr-defined]
    assert record.supervisor == "app"  # type: ignore[attr-defined]
    assert f"Child {child} of supervisor app" in record.getMessage()
    return record


async def task_cleanup_raises(ctx: ChildContext) -> None:
    ctx.ready()
    try:
        await asyncio.Event().wait()
    finally:
        raise CleanupFailed("flush on stop failed")


def thread_raises_when_stopped(ctx: ChildContext) -> None:
    ctx.ready()
    ctx.stopping.wait()
    raise CleanupFailed("flush on stop failed")


@run
async def test_a_task_whose_cleanup_raises_on_stop_is_a_shutdown_error(reports: Records) -> None:
    with captured_events() as events:
        sup = Supervisor([ChildSpec("c", task_cleanup_raises)], name="app")
        await sup.start()
        await sup.stop()  # a stop all the same: no error raised
    record = the_shutdown_error(reports, "c")
    assert record.reason == "exception"  # type: ignore[attr-defined]
    assert record.action == "shutdown"  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], CleanupFailed)
    assert "CleanupFailed('flush on stop failed')" in record.getMessage()
    (exited,) = [d for n, d in events if n == "supervisor.child_exited" and d["child"] == "c"]
    assert exited["reason"] == "exception"
    assert isinstance(exited["exception"], CleanupFailed)
    assert exited["restart"] is False


@run
async def test_a_thread_raising_once_asked_to_stop_is_a_shutdown_error(reports: Records) -> None:
    async with Supervisor([ChildSpec("c", thread_raises_when_stopped)], name="app") as sup:
        await sup.terminate_child("c")  # returns: terminated, as asked
        assert [c.status for c in sup.which_children()] == ["stopped"]
    record = the_shutdown_error(reports, "c")
    assert record.kind == "thread"  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], CleanupFailed)


@run
async def test_a_process_exiting_non_zero_on_sigterm_is_a_shutdown_error(reports: Records) -> None:
    spec = ChildSpec("c", [PY, "-c", EXIT_3_ON_SIGTERM], readiness="explicit")
    with captured_events() as events:
        async with Supervisor([spec], name="app"):
            pass
    record = the_shutdown_error(reports, "c")
    assert record.kind == "process"  # type: ignore[attr-defined]
    assert record.reason == "exit"  # type: ignore[attr-defined]
    assert record.exit_code == 3  # type: ignore[attr-defined]
    assert "exit code 3" in record.getMessage()
    (exited,) = [d for n, d in events if n == "supervisor.child_exited" and d["child"] == "c"]
    assert (exited["reason"], exited["exit_code"]) == ("exit", 3)


@run
async def test_a_sibling_failing_its_one_for_all_stop_is_a_shutdown_error(
    reports: Records,
) -> None:
    crash = asyncio.Event()

    async def crasher(ctx: ChildContext) -> None:
        ctx.ready()
        if ctx.attempt == 0:
            await crash.wait()
            raise RuntimeError("a crashed")
        await asyncio.Event().wait()

    specs = [ChildSpec("a", crasher), ChildSpec("b", task_cleanup_raises)]
    async with Supervisor(specs, name="app", strategy="one_for_all") as sup:
        crash.set()
        # The restart decision is unchanged: both run again. (A restart count
        # goes up as its start begins: the status says when it has ended.)
        await until(
            lambda: [(c.restarts, c.status) for c in sup.which_children()] == [(1, "running")] * 2
        )
        record = the_shutdown_error(reports, "b")
        assert record.action == "restart"  # type: ignore[attr-defined]
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], CleanupFailed)
        (crashed,) = errors_about(reports, "a")
        assert crashed.event == "child_crashed"  # type: ignore[attr-defined]
        reports.clear()
    # Stopped again: b's second run's cleanup raises too, one report for it.
    the_shutdown_error(reports, "b")


@run
async def test_a_crash_just_before_the_stop_reaches_the_child_is_reported(
    reports: Records,
) -> None:
    go, crashed = asyncio.Event(), asyncio.Event()

    async def crasher(ctx: ChildContext) -> None:
        ctx.ready()
        await go.wait()
        try:
            raise RuntimeError("c crashed")
        finally:
            crashed.set()

    async def later(ctx: ChildContext) -> None:
        ctx.ready()
        try:
            await asyncio.Event().wait()
        finally:  # stopped first (reverse order): c crashes meanwhile
            go.set()
            await crashed.wait()

    sup = Supervisor([ChildSpec("c", crasher), ChildSpec("later", later)], name="app")
    await sup.start()
    await sup.stop()
    record = the_shutdown_error(reports, "c")
    assert record.reason == "exception"  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert errors_about(reports, "later") == []


@run
async def test_clean_stops_report_no_shutdown_error(reports: Records) -> None:
    async def swallows_cancel(ctx: ChildContext) -> None:
        ctx.ready()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return  # a clean end as well

    def thread(ctx: ChildContext) -> None:
        ctx.ready()
        ctx.stopping.wait()

    def thread_exits(ctx: ChildContext) -> None:
        ctx.ready()
        ctx.stopping.wait()
        sys.exit()  # Python's silent end of a thread: as returning

    async def task(ctx: ChildContext) -> None:
        ctx.ready()
        await asyncio.Event().wait()

    specs = [
        ChildSpec("task", task),
        ChildSpec("returns", swallows_cancel),
        ChildSpec("thread", thread),
        ChildSpec("exits", thread_exits),
        ChildSpec("process", [PY, "-c", SERVE], readiness="explicit"),
    ]
    with captured_events() as events:
        async with Supervisor(specs, name="app"):
            pass
    assert reports.of("shutdown_error") == []
    assert [r for r in list(reports) if r.levelno >= logging.WARNING] == []
    exits = [d["reason"] for n, d in events if n == "supervisor.child_exited"]
    assert exits == ["shutdown"] * 5
