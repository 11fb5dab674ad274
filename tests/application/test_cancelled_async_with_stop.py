"""A cancellation while ``async with Application(...)`` stops the tree: a
Ctrl-C under ``asyncio.run`` (which cancels the main task), or an
``asyncio.timeout()`` expiring during the block's exit. The first one lets the
stop already under way go on to its end (not begun again), then goes on; it
is one INFO line (``app_stop_cancelled``), no ERROR. A second one cuts the
wait short at once: one WARNING (``app_stop_cut_short``) names the children
still running. ``wait()`` on the loop after the block returns at once.

Was: ERROR ``app_stop_failed: CancelledError()`` and the tree left
"stopping", its children running, when the loop ended; ``wait()`` on the loop
after the block raised SupervisorError.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
import threading
import time

import pytest

from foundation import Application, ChildSpec
from foundation.application import AppConfig
from foundation.supervision import ChildContext
from tests.faults._subprocess import run_scenario

DEADLINE = 20.0  # seconds: a stop not reached by then was not reached at all
SERVICES = ("flags", "monitors", "registry")

# In the scenarios: a worker whose stop takes a while (``slow``) or never ends
# (``stuck``), so that the Ctrl-C meets the stop under way. SIGINT goes to the
# main thread (pthread_kill): the loop's select() wakes to run the handler.
_WORKERS = """
import asyncio, os, signal
from foundation import Application, ChildSpec

signal.signal(signal.SIGINT, signal.default_int_handler)  # (inherited ignored)
reached = threading.Event()
cancelled = threading.Event()
cleaned = []

def slow(ctx):
    ctx.ready()
    ctx.stopping.wait()
    reached.set()
    cancelled.wait(20)  # a cleanup that lasts until the Ctrl-C is met
    cleaned.append(ctx.id)

def stuck(ctx):
    ctx.ready()
    ctx.stopping.wait()
    reached.set()
    threading.Event().wait()  # never returns: the stop cannot end

class Events(logging.Handler):
    def emit(self, record):
        print("EVENT", record.event, record.levelname, getattr(record, "children", ""),
              flush=True)
        if record.event == "app_stop_cancelled":
            cancelled.set()

logging.getLogger("foundation.application").addHandler(Events())

def ctrl_c():
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

def ctrl_c_met():
    # Once the stop is under way. A SIGINT is now and then acted on late
    # (before this change too): sent again until met (two pending coalesce).
    reached.wait(20)
    for _ in range(10):
        ctrl_c()
        if cancelled.wait(2):
            return

def report(app):
    print("STATE", app.supervisor.state, flush=True)
    print("CLEANED", cleaned, "ORDER", app.stopped_order, flush=True)
"""


def test_one_ctrl_c_under_asyncio_run_while_async_with_stops_lets_the_stop_finish() -> None:
    result = run_scenario(
        _WORKERS
        + textwrap.dedent(
            """
        app = Application(services=("flags", "monitors", "registry"),
                          workers=[ChildSpec("slow", slow, kind="thread", shutdown_timeout=20)])

        async def main():
            async with app:
                threading.Thread(target=ctrl_c_met, daemon=True).start()

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
        report(app)
        print("OK")
        """
        ),
        timeout=DEADLINE * 3,
    )
    out = result.stdout + result.stderr
    assert result.lines("INTERRUPTED") == ["INTERRUPTED"], out
    assert "STATE stopped" in result.lines("STATE"), out
    assert result.lines("CLEANED") == [
        "CLEANED ['slow'] ORDER ['registry', 'monitors', 'flags']"
    ], out
    events = result.lines("EVENT")
    assert "EVENT app_stop_cancelled INFO " in events, out
    assert events[-1] == "EVENT app_stopped INFO ", out
    assert not [e for e in events if "ERROR" in e or "WARNING" in e], out
    assert "Traceback" not in result.stderr, out


def test_a_second_ctrl_c_while_the_stop_completes_ends_the_program() -> None:
    # A worker that never stops, with no shutdown timeout: only a second
    # Ctrl-C ends the wait (it must: the caller can always bound a stop).
    result = run_scenario(
        _WORKERS
        + textwrap.dedent(
            """
        app = Application(services=("flags",),
                          workers=[ChildSpec("stuck", stuck, kind="thread", shutdown_timeout=None)])

        def press_twice():
            ctrl_c_met()  # the stop goes on
            ctrl_c()

        async def main():
            async with app:
                threading.Thread(target=press_twice, daemon=True).start()

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
        print("OK")
        """
        ),
        timeout=DEADLINE * 3,
    )
    out = result.stdout + result.stderr
    assert result.lines("INTERRUPTED") == ["INTERRUPTED"], out
    events = result.lines("EVENT")
    assert "EVENT app_stop_cancelled INFO " in events, out
    assert [e for e in events if "WARNING" in e or "ERROR" in e] == [
        "EVENT app_stop_cut_short WARNING ['flags', 'workers/stuck']"
    ], out


class _Worker:
    """A thread worker whose stop takes ``cleanup`` seconds (None: until released)."""

    def __init__(self, cleanup: float | None) -> None:
        self.cleanup = cleanup
        self.reached = threading.Event()
        self.cleaned = threading.Event()
        self.release = threading.Event()

    def spec(self) -> ChildSpec:
        timeout = DEADLINE if self.cleanup is not None else None
        return ChildSpec("w", self._run, kind="thread", shutdown_timeout=timeout)

    def _run(self, ctx: ChildContext) -> None:
        ctx.ready()
        ctx.stopping.wait()
        self.reached.set()
        if self.cleanup is None:
            self.release.wait()
        else:
            time.sleep(self.cleanup)  # sleep-ok: a cleanup that takes a while
        self.cleaned.set()


def _events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (str(getattr(r, "event", "")), r.levelname)
        for r in caplog.records
        if r.name == "foundation.application"
    ]


async def _expire_once_reached(worker: _Worker, timeout: asyncio.Timeout) -> None:
    await asyncio.to_thread(worker.reached.wait, DEADLINE)
    timeout.reschedule(asyncio.get_running_loop().time())  # expires now


async def _expire_once_cancelled(
    caplog: pytest.LogCaptureFixture, timeout: asyncio.Timeout
) -> None:
    """Expire ``timeout`` once the first cancellation was met (its INFO line)."""
    deadline = time.monotonic() + DEADLINE
    while "app_stop_cancelled" not in [getattr(r, "event", "") for r in caplog.records]:
        assert time.monotonic() < deadline, "the first cancellation was never met"
        await asyncio.sleep(0.005)  # sleep-ok: polling with a deadline
    timeout.reschedule(asyncio.get_running_loop().time())


def test_a_timeout_expiring_while_async_with_stops_lets_the_stop_finish(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="foundation.application")
    worker = _Worker(cleanup=0.5)
    app = Application(AppConfig(), services=SERVICES, workers=[worker.spec()])
    seen: list[object] = []
    expiring: list[asyncio.Task[None]] = []

    async def leave() -> None:
        async with asyncio.timeout(None) as timeout, app:
            loop = asyncio.get_running_loop()
            expiring.append(loop.create_task(_expire_once_reached(worker, timeout)))

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await leave()
        seen.append(worker.cleaned.is_set())
        seen.append(app.supervisor.state)
        seen.append(asyncio.current_task().cancelling())  # type: ignore[union-attr]

    asyncio.run(main())
    assert seen == [True, "stopped", 0]
    assert app.stopped_order == ["registry", "monitors", "flags"]
    events = _events(caplog)
    assert ("app_stop_cancelled", "INFO") in events, events
    assert events[-1] == ("app_stopped", "INFO"), events
    assert not [e for e in events if e[1] != "INFO"], events


def test_a_second_timeout_cuts_the_wait_for_a_stop_that_cannot_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="foundation.application")
    worker = _Worker(cleanup=None)
    app = Application(AppConfig(), services=("flags",), workers=[worker.spec()])
    seen: list[object] = []
    expiring: list[asyncio.Task[None]] = []

    async def leave() -> None:
        async with asyncio.timeout(None) as outer:
            async with asyncio.timeout(None) as inner, app:
                loop = asyncio.get_running_loop()
                expiring.append(loop.create_task(_expire_once_reached(worker, inner)))
                expiring.append(loop.create_task(_expire_once_cancelled(caplog, outer)))

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await leave()
        seen.append(worker.cleaned.is_set())

    try:
        asyncio.run(main())
    finally:
        worker.release.set()
    assert seen == [False]
    cut = [r for r in caplog.records if getattr(r, "event", "") == "app_stop_cut_short"]
    assert [(r.levelname, r.children) for r in cut] == [  # type: ignore[attr-defined]
        ("WARNING", ["flags", "workers/w"])
    ]
    events = _events(caplog)
    assert ("app_stop_cancelled", "INFO") in events, events
    assert ("app_stop_failed", "ERROR") not in events, events


def test_wait_on_the_loop_after_the_async_with_block_returns_at_once() -> None:
    app = Application(AppConfig(), services=("flags",))
    outcome: list[str] = []

    async def main() -> None:
        async with app:
            pass
        app.wait()  # was: SupervisorError "called from a child of its own tree"
        outcome.append(app.supervisor.state)

    asyncio.run(main())
    assert outcome == ["stopped"]


# A cancellation met in the block itself (not in its exit), then the exit's
# stop abandons a worker (a thread that ignores its stop past its
# shutdown_timeout): the cancellation goes on, not the ShutdownError (its
# context; the worker's WARNING, and app_stop_failed as without the
# cancellation), as when the cancellation is met during the exit. Was:
# ShutdownError, the timeout never fired, a Ctrl-C ended in ShutdownError, a
# cancelled task ended with it (3/3).
_ABANDONING = """
def ignores_its_stop(ctx):
    ctx.ready()
    ctx.stopping.wait()
    threading.Event().wait()  # never returns: abandoned after its shutdown_timeout

app = Application(services=("flags",),
                  workers=[ChildSpec("w", ignores_its_stop, kind="thread", shutdown_timeout=0.3)])
logging.getLogger("foundation.supervision.supervisor").addHandler(Events())
met = threading.Event()  # the block met its cancellation

async def block():
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        met.set()
        raise

def chain(exc):
    names = []
    while exc is not None and len(names) < 10:  # (a cycle shows as 10 names)
        names.append(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return names
"""


def _run_abandoning(script: str) -> tuple[list[str], str, list[str]]:
    """Run ``script`` after ``_WORKERS`` and ``_ABANDONING``: (its stdout lines,
    all its output, the WARNING and ERROR events)."""
    result = run_scenario(_WORKERS + _ABANDONING + textwrap.dedent(script), timeout=DEADLINE * 3)
    out = result.stdout + result.stderr
    assert "STATE stopped" in result.lines("STATE"), out
    events = result.lines("EVENT")
    return result.stdout.splitlines(), out, [e for e in events if "WARNING" in e or "ERROR" in e]


_ABANDONED = ["EVENT thread_abandoned WARNING ", "EVENT app_stop_failed ERROR "]


def test_a_timeout_in_the_block_goes_on_when_the_exit_abandons_a_worker() -> None:
    lines, out, events = _run_abandoning(
        """
        async def main():
            try:
                async with asyncio.timeout(None) as timeout, app:
                    timeout.reschedule(asyncio.get_running_loop().time())  # expires now
                    await block()
            except BaseException as exc:
                print("CAUGHT", chain(exc), asyncio.current_task().cancelling(), flush=True)

        asyncio.run(main())
        report(app)
        print("OK")
        """
    )
    assert "CAUGHT ['TimeoutError', 'CancelledError', 'ShutdownError'] 0" in lines, out
    assert events == _ABANDONED, out


def test_a_ctrl_c_in_the_block_goes_on_when_the_exit_abandons_a_worker() -> None:
    lines, out, events = _run_abandoning(
        """
        def press_until_met():
            for _ in range(10):  # a SIGINT is now and then acted on late: sent again
                ctrl_c()
                if met.wait(2):
                    return

        async def main():
            async with app:
                threading.Thread(target=press_until_met, daemon=True).start()
                await block()

        try:
            asyncio.run(main())
        except BaseException as exc:
            print("RAISED", chain(exc), flush=True)
        report(app)
        print("OK")
        """
    )
    assert "RAISED ['KeyboardInterrupt', 'CancelledError', 'ShutdownError']" in lines, out
    assert events == _ABANDONED, out


def test_a_task_cancelled_in_the_block_ends_cancelled_when_the_exit_abandons_a_worker() -> None:
    lines, out, events = _run_abandoning(
        """
        entered = asyncio.Event()

        async def inner():
            async with app:
                entered.set()
                await block()

        async def main():
            task = asyncio.get_running_loop().create_task(inner())
            await entered.wait()
            task.cancel()
            await asyncio.wait({task})
            print("TASK", task.cancelled(), task.cancelling(), flush=True)
            try:
                task.result()
            except asyncio.CancelledError as exc:
                print("CONTEXT", chain(exc)[0], chain(exc)[-1], flush=True)
            print("MAIN", asyncio.current_task().cancelling(), flush=True)

        asyncio.run(main())
        report(app)
        print("OK")
        """
    )
    # Cancelled (its one cancel() request still counted, as any cancelled task's).
    assert "TASK True 1" in lines, out
    assert "CONTEXT CancelledError ShutdownError" in lines, out
    assert "MAIN 0" in lines, out
    assert events == _ABANDONED, out
