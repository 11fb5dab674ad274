"""Crash, progress and supervisor reports through stdlib logging; the same for Application.

Real supervisors with real task, thread and process children; the records are
caught by a handler on ``foundation.supervision`` (or read from the stderr of
a plain interpreter, where nothing configured logging).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foundation import Application
from foundation.application import AppConfig
from foundation.errors import RestartIntensityExceeded, ShutdownError, StartError
from foundation.supervision import ChildContext, ChildSpec, Supervisor
from tests._logs import Records, captured
from tests.supervision import _report_targets
from tests.supervision._support import run, until, wait_until

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]

SERVE = """
import os, signal
os.write(int(os.environ["FOUNDATION_READY_FD"]), b"1")
signal.pause()
"""

STUBBORN = """
import os, signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.write(int(os.environ["FOUNDATION_READY_FD"]), b"1")
while True:
    signal.pause()
"""


@pytest.fixture
def reports() -> Iterator[Records]:
    """Every record under ``foundation.supervision``, with INFO and DEBUG enabled."""
    with captured("foundation.supervision") as kept:
        yield kept


@pytest.fixture
def app_reports() -> Iterator[Records]:
    """Every record of ``foundation.application`` and ``foundation.supervision``."""
    with captured("foundation.application", "foundation.supervision") as kept:
        yield kept


def fields(record: logging.LogRecord) -> tuple[Any, ...]:
    return tuple(getattr(record, f) for f in ("supervisor", "child", "kind", "reason"))


def traceback_of(record: logging.LogRecord) -> str:
    return logging.Formatter().format(record)


async def crash_once_task(ctx: ChildContext) -> None:
    ctx.ready()
    if ctx.attempt == 0:
        raise ValueError("boom")
    await asyncio.Event().wait()


def crash_once_thread(ctx: ChildContext) -> None:
    ctx.ready()
    if ctx.attempt == 0:
        raise ValueError("thread boom")
    ctx.stopping.wait()


async def always_crash(ctx: ChildContext) -> None:
    ctx.ready()
    raise ValueError("again")


# ---------------------------------------------------------------------- crash reports


@run
async def test_task_child_crash_is_one_error_record_with_traceback_and_action(
    reports: Records,
) -> None:
    async with Supervisor([ChildSpec("w", crash_once_task)], name="app") as sup:
        await until(lambda: len(reports.of("child_started", "w")) == 2)
        assert sup.which_children()[0].restarts == 1
    [crash] = reports.of("child_crashed")
    assert crash.name == "foundation.supervision.crash"
    assert crash.levelno == logging.ERROR
    assert crash.getMessage() == (
        "Child w of supervisor app (task) crashed: ValueError('boom'); action: restart"
    )
    assert fields(crash) == ("app", "w", "task", "exception")
    assert crash.action == "restart"  # type: ignore[attr-defined]
    assert crash.exc_info is not None
    assert isinstance(crash.exc_info[1], ValueError)
    text = traceback_of(crash)
    assert 'raise ValueError("boom")' in text
    assert "ValueError: boom" in text
    first, again = reports.of("child_started", "w")
    assert first.name == "foundation.supervision.progress"
    assert first.levelno == logging.INFO
    assert (first.restarted, again.restarted, again.attempt) == (False, True, 1)  # type: ignore[attr-defined]
    assert again.getMessage() == "Child w of supervisor app (task) restarted (attempt 1)"


@run
async def test_thread_child_crash_is_one_error_record_with_traceback_and_action(
    reports: Records,
) -> None:
    async with Supervisor([ChildSpec("t", crash_once_thread)], name="app") as sup:
        await until(lambda: len(reports.of("child_started", "t")) == 2)
        assert sup.which_children()[0].restarts == 1
    [crash] = reports.of("child_crashed")
    assert crash.getMessage() == (
        "Child t of supervisor app (thread) crashed: ValueError('thread boom'); action: restart"
    )
    assert fields(crash) == ("app", "t", "thread", "exception")
    assert 'raise ValueError("thread boom")' in traceback_of(crash)


@run
async def test_process_child_crash_reports_its_exit_code(reports: Records) -> None:
    spec = ChildSpec(
        "p", _report_targets.crash_with_value_error, kind="process", restart="temporary"
    )
    async with Supervisor([spec], name="app"):
        await until(lambda: bool(reports.of("child_crashed", "p")), timeout=30)
    [crash] = reports.of("child_crashed")
    assert crash.getMessage() == (
        "Child p of supervisor app (process) crashed: exit code 1; action: no_restart (temporary)"
    )
    assert fields(crash) == ("app", "p", "process", "exit")
    assert crash.exit_code == 1  # type: ignore[attr-defined]
    assert crash.levelno == logging.ERROR


@run
async def test_process_child_killed_by_a_signal_reports_the_signal(reports: Records) -> None:
    spec = ChildSpec("p", _report_targets.kill_self, kind="process", restart="temporary")
    async with Supervisor([spec], name="app"):
        await until(lambda: bool(reports.of("child_crashed", "p")), timeout=30)
    [crash] = reports.of("child_crashed")
    assert "Child p of supervisor app (process) was killed by SIGKILL (9)" in crash.getMessage()
    assert fields(crash) == ("app", "p", "process", "killed")
    assert crash.signal == signal.SIGKILL  # type: ignore[attr-defined]


@run
async def test_a_failed_start_is_a_crash_report_with_the_traceback(reports: Records) -> None:
    async def refuse(ctx: ChildContext) -> None:
        raise ValueError("cannot start")

    with pytest.raises(StartError):
        await Supervisor([ChildSpec("w", refuse)], name="app").start()
    [failed] = reports.of("start_failed")
    assert failed.name == "foundation.supervision.crash"
    assert failed.levelno == logging.ERROR
    assert fields(failed)[:3] == ("app", "w", "task")
    assert "ValueError: cannot start" in traceback_of(failed)


# ---------------------------------------------------------------------- supervisor reports


@run
async def test_intensity_exceeded_is_one_error_record_with_the_restart_history(
    reports: Records,
) -> None:
    sup = Supervisor([ChildSpec("w", always_crash)], name="app", max_restarts=2, max_seconds=60)
    await sup.start()
    with pytest.raises(RestartIntensityExceeded):
        await sup.wait()
    [report] = reports.of("intensity_exceeded")
    assert report.name == "foundation.supervision.supervisor"
    assert report.levelno == logging.ERROR
    assert (report.supervisor, report.child) == ("app", "w")  # type: ignore[attr-defined]
    assert (report.max_restarts, report.max_seconds) == (2, 60)  # type: ignore[attr-defined]
    history = report.history  # type: ignore[attr-defined]
    assert [c for _, c in history] == ["w", "w", "w"]
    assert [t for t, _ in history] == sorted(t for t, _ in history)
    assert "more than 2 restarts in 60s" in report.getMessage()
    crashes = reports.of("child_crashed", "w")
    assert len(crashes) == 3  # every crash once, the last one included
    assert [getattr(c, "action", None) for c in crashes[:2]] == ["restart", "restart"]
    assert len(reports.of("child_started", "w")) == 3
    stopped = reports.of("supervisor_stopped")
    assert len(stopped) == 1
    assert stopped[0].levelno == logging.ERROR


@run
async def test_shutdown_timeout_is_reported_once_then_the_kill(reports: Records) -> None:
    spec = ChildSpec("p", [PY, "-c", STUBBORN], readiness="explicit", shutdown_timeout=0.3)
    async with Supervisor([spec], name="app") as sup:
        proc = sup.which_children()[0].handle
    assert proc.returncode == -signal.SIGKILL
    [timeout] = reports.of("shutdown_timeout", "p")
    assert timeout.levelno == logging.WARNING
    assert fields(timeout) == ("app", "p", "process", "shutdown_timeout")
    assert (timeout.timeout, timeout.action) == (0.3, "killed")  # type: ignore[attr-defined]
    assert reports.of("child_crashed") == []  # a stop is not a crash


@run
async def test_brutal_kill_is_reported_as_a_kill(reports: Records) -> None:
    spec = ChildSpec("p", [PY, "-c", SERVE], readiness="explicit", shutdown_timeout=0)
    async with Supervisor([spec], name="app") as sup:
        proc = sup.which_children()[0].handle
    assert proc.returncode == -signal.SIGKILL
    [killed] = reports.of("child_killed", "p")
    assert killed.levelno == logging.WARNING
    assert killed.brutal is True  # type: ignore[attr-defined]
    assert fields(killed) == ("app", "p", "process", "brutal_kill")


@run
async def test_abandoned_thread_is_reported_once_with_its_thread_name(reports: Records) -> None:
    release = threading.Event()

    def deaf(ctx: ChildContext) -> None:
        ctx.ready()
        release.wait(30)

    try:
        sup = Supervisor([ChildSpec("t", deaf, shutdown_timeout=0.2)], name="app")
        await sup.start()
        thread = sup.which_children()[0].handle
        with pytest.raises(ShutdownError):
            await sup.stop()
    finally:
        release.set()
    [abandoned] = reports.of("thread_abandoned", "t")
    assert abandoned.levelno == logging.WARNING
    assert abandoned.thread_name == thread.name  # type: ignore[attr-defined]
    assert fields(abandoned) == ("app", "t", "thread", "abandoned")
    # One event, one record: the abandonment is the shutdown timeout's outcome.
    warnings = [r for r in reports if r.levelno >= logging.WARNING and r.child == "t"]  # type: ignore[attr-defined]
    assert warnings == [abandoned]


@run
async def test_task_swallowing_cancellation_is_reported_as_a_shutdown_timeout(
    reports: Records,
) -> None:
    release = asyncio.Event()

    async def stubborn(ctx: ChildContext) -> None:
        ctx.ready()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    sup = Supervisor([ChildSpec("s", stubborn, shutdown_timeout=0.05)], name="app")
    await sup.start()
    task = sup.which_children()[0].handle
    with pytest.raises(ShutdownError):
        await sup.stop()
    release.set()
    await task
    [timeout] = reports.of("shutdown_timeout", "s")
    assert timeout.levelno == logging.WARNING
    assert fields(timeout) == ("app", "s", "task", "shutdown_timeout")
    assert (timeout.timeout, timeout.action) == (0.05, "abandoned task")  # type: ignore[attr-defined]
    assert reports.of("child_crashed") == []


@run
async def test_progress_reports_for_a_normal_start_and_stop(reports: Records) -> None:
    async def serve(ctx: ChildContext) -> None:
        ctx.ready()
        await asyncio.Event().wait()

    async with Supervisor([ChildSpec("a", serve), ChildSpec("b", serve)], name="app"):
        pass
    assert [r.child for r in reports.of("child_started")] == ["a", "b"]  # type: ignore[attr-defined]
    [started] = reports.of("supervisor_started")
    assert (started.strategy, started.children) == ("one_for_one", 2)  # type: ignore[attr-defined]
    [stopped] = reports.of("supervisor_stopped")
    assert stopped.levelno == logging.INFO
    assert reports.of("child_crashed") == []
    assert all(r.levelno < logging.WARNING for r in reports)


# ---------------------------------------------------------------------- silencing


@run
async def test_reports_are_silenced_by_the_logger_level() -> None:
    with captured("foundation.supervision") as capture:  # (the level restored at the end)
        logging.getLogger("foundation.supervision").setLevel(logging.CRITICAL)
        async with Supervisor([ChildSpec("w", crash_once_task)], name="app") as sup:
            await until(lambda: sup.which_children()[0].restarts == 1)
            await until(lambda: sup.which_children()[0].status == "running")
    assert capture == []


@run
async def test_reports_stay_off_the_root_logger_without_propagation() -> None:
    logger = logging.getLogger("foundation.supervision")
    with captured("foundation.supervision") as mine, captured("root") as root:
        logger.propagate = False
        try:
            async with Supervisor([ChildSpec("w", crash_once_task)], name="app") as sup:
                await until(lambda: sup.which_children()[0].restarts == 1)
        finally:
            logger.propagate = True
    assert len(mine.of("child_crashed", "w")) == 1
    assert [r for r in root if r.name.startswith("foundation.supervision")] == []


# ---------------------------------------------------------------------- no configuration

SCENARIO = """
import asyncio, logging, sys
from foundation.supervision import ChildSpec, Supervisor
from tests.supervision import _report_targets
{setup}

async def task_child(ctx):
    ctx.ready()
    raise ValueError("task boom")

def thread_child(ctx):
    ctx.ready()
    raise ValueError("thread boom")

async def main():
    specs = [
        ChildSpec("w", task_child, restart="temporary"),
        ChildSpec("t", thread_child, restart="temporary"),
        ChildSpec("p", _report_targets.crash_with_value_error, kind="process",
                  restart="temporary"),
    ]
    sup = Supervisor(specs, name="app")
    await sup.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while sup.count_children().specs and loop.time() < deadline:
        await asyncio.sleep(0.01)  # sleep-ok: polling with a deadline
    await sup.stop()
    print("OK", sup.count_children().specs)

if __name__ == "__main__":
    asyncio.run(main())
"""


def run_scenario(tmp_path: Path, setup: str = "") -> subprocess.CompletedProcess[str]:
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO.format(setup=setup))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
    return subprocess.run(
        [PY, str(script)],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )


def test_crash_reports_reach_stderr_with_no_logging_configured(tmp_path: Path) -> None:
    done = run_scenario(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK 0"
    err = done.stderr
    for line in (
        "Child w of supervisor app (task) crashed: ValueError('task boom'); "
        "action: no_restart (temporary)",
        "Child t of supervisor app (thread) crashed: ValueError('thread boom'); "
        "action: no_restart (temporary)",
        "Child p of supervisor app (process) crashed: exit code 1; action: no_restart (temporary)",
    ):
        assert err.count(line) == 1, err
    assert 'raise ValueError("task boom")' in err
    assert "ValueError: task boom" in err
    assert 'raise ValueError("thread boom")' in err
    assert "Exception in thread" not in err  # the thread's crash is a report, not a dead thread
    assert " started" not in err  # progress reports are INFO: quiet by default


@pytest.mark.parametrize(
    "setup",
    [
        'logging.getLogger("foundation.supervision").setLevel(logging.CRITICAL)',
        'logging.getLogger("foundation.supervision").addHandler(logging.NullHandler())',
    ],
    ids=["level", "null-handler"],
)
def test_crash_reports_are_silenced_by_ordinary_logging_configuration(
    tmp_path: Path, setup: str
) -> None:
    done = run_scenario(tmp_path, setup)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK 0"
    assert "of supervisor app" not in done.stderr
    assert "Exception in thread" not in done.stderr


# ---------------------------------------------------------------------- Application


def app_events(capture: Records) -> list[tuple[str, Any]]:
    return [
        (r.event, r.service)  # type: ignore[attr-defined]
        for r in capture
        if r.name == "foundation.application"
    ]


def test_application_reports_its_start_in_order_and_its_stop_in_reverse(
    app_reports: Records,
) -> None:
    with Application.start(AppConfig(), services=("flags", "monitors", "registry")):
        pass
    assert app_events(app_reports) == [
        ("app_starting", None),
        ("service_started", "flags"),
        ("service_started", "monitors"),
        ("service_started", "registry"),
        ("app_started", None),
        ("app_stopping", None),
        ("service_stopped", "registry"),
        ("service_stopped", "monitors"),
        ("service_stopped", "flags"),
        ("app_stopped", None),
    ]
    records = [r for r in app_reports if r.name == "foundation.application"]
    assert {r.application for r in records} == {"foundation"}  # type: ignore[attr-defined]
    assert all(r.levelno == logging.INFO for r in records)
    assert records[1].getMessage() == "Application foundation: service flags started (1/3)"


def test_application_start_failure_is_an_error_with_the_traceback(app_reports: Records) -> None:
    async def refuse(ctx: ChildContext) -> None:
        raise ValueError("no database")

    with pytest.raises(StartError):
        Application.start(AppConfig(), services=(), workers=[ChildSpec("db", refuse)])
    [failed] = [r for r in app_reports if getattr(r, "event", None) == "app_start_failed"]
    assert failed.name == "foundation.application"
    assert failed.levelno == logging.ERROR
    assert failed.reason == "start_error"  # type: ignore[attr-defined]
    # One failed start, one traceback: the crash report of "db" has it, and
    # the application's line points there.
    assert failed.exc_info is None
    assert failed.getMessage().endswith("(traceback in the crash report above)")
    [crash] = app_reports.of("start_failed", "db")
    assert crash.levelno == logging.ERROR
    assert "ValueError: no database" in traceback_of(crash)


def test_application_giving_up_is_an_error_record(app_reports: Records) -> None:
    app = Application.start(AppConfig(), services=(), workers=[ChildSpec("w", always_crash)])
    try:
        wait_until(lambda: bool(app_reports.of("app_failed")), timeout=30)
    finally:
        app.stop()
    [failed] = app_reports.of("app_failed")
    assert failed.levelno == logging.ERROR
    assert isinstance(failed.exc_info[1] if failed.exc_info else None, RestartIntensityExceeded)
    [stopped] = app_reports.of("app_stopped")
    assert stopped.reason == "failed"  # type: ignore[attr-defined]


APP_SCENARIO = """
from foundation import Application
from foundation.application import AppConfig
from foundation.errors import StartError
from foundation.supervision import ChildSpec

async def refuse(ctx):
    raise ValueError("no database")

if __name__ == "__main__":
    try:
        Application.start(AppConfig(), services=("flags",), workers=[ChildSpec("db", refuse)])
    except StartError:
        print("OK")
"""


def test_application_start_failure_reaches_stderr_with_no_logging_configured(
    tmp_path: Path,
) -> None:
    script = tmp_path / "app_scenario.py"
    script.write_text(APP_SCENARIO)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
    done = subprocess.run(
        [PY, str(script)],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK"
    assert done.stderr.count("Application foundation failed to start: StartError(") == 1
    assert "ValueError: no database" in done.stderr
    assert "service flags started" not in done.stderr  # INFO: quiet by default
