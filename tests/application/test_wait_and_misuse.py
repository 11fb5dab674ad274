"""``wait()`` during a start, ``async with`` on a running application, and
``wait_for_signal()`` off the main thread.

Real threads, loops and trees; every hand-over is an event or a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

import pytest

from foundation import Application
from foundation.application import AppConfig
from foundation.errors import StartError, SupervisorError
from foundation.supervision import ChildContext, ChildSpec
from tests.application._threads import DEADLINE, ThreadCall
from tests.supervision._support import wait_until


def _waiting(app: Application) -> ThreadCall:
    """A thread in ``app.wait()`` (its result: the supervisor's state once it
    returned); returns once that call returned or blocks in ``wait()``."""

    def wait_then_look() -> str:
        app.wait()
        return app.supervisor.state

    waiter = ThreadCall(wait_then_look)
    # It returns at once (the defect) or blocks in wait() for the run's end.
    wait_until(lambda: waiter.done() or waiter.inside(app, "wait"), DEADLINE)
    return waiter


class _Gate:
    """A worker whose start waits at the gate (``fail``: then fails its start)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.open = threading.Event()
        self.fail = False

    def __call__(self, ctx: ChildContext) -> None:
        self.reached.set()
        assert self.open.wait(DEADLINE)
        if self.fail:
            raise RuntimeError("the gate failed this start")
        ctx.ready()
        ctx.stopping.wait()

    def spec(self) -> ChildSpec:
        return ChildSpec("gated", self, kind="thread", ready_timeout=DEADLINE)

    def reset(self) -> None:
        self.reached.clear()
        self.open.clear()


# ---------------------------------------------------------------------- wait()


@pytest.mark.parametrize("earlier_runs", [0, 1], ids=["the first run", "a later run"])
def test_wait_during_a_start_waits_for_the_run_being_started(earlier_runs: int) -> None:
    # Was: it returned at once, having seen the previous run (ended) or none.
    gate = _Gate()
    app = Application(AppConfig(), services=("flags",), workers=[gate.spec()])
    for _ in range(earlier_runs):
        gate.open.set()
        with app:
            pass
        gate.reset()
    starter = ThreadCall(app.__enter__)
    assert gate.reached.wait(DEADLINE)  # the start is under way, held at the gate

    waiter = _waiting(app)
    gate.open.set()
    starter.result()
    app.stop()
    assert waiter.result() == "stopped"  # was "starting": returned before the start ended


def test_wait_during_a_start_that_fails_returns() -> None:
    gate = _Gate()
    gate.fail = True
    app = Application(AppConfig(), services=("flags",), workers=[gate.spec()])
    starter = ThreadCall(app.__enter__)
    assert gate.reached.wait(DEADLINE)
    waiter = ThreadCall(app.wait)
    wait_until(lambda: waiter.done() or waiter.inside(app, "wait"), DEADLINE)
    gate.open.set()
    with pytest.raises(StartError):
        starter.result()
    assert waiter.result() is None  # the run ended without starting: nothing to wait for


def test_wait_during_an_async_with_start_waits_for_that_run() -> None:
    gate = _Gate()
    app = Application(AppConfig(), services=("flags",), workers=[gate.spec()])
    leave = threading.Event()

    async def hold() -> None:
        async with app:
            await asyncio.to_thread(leave.wait, DEADLINE)

    holder = ThreadCall(lambda: asyncio.run(hold()))
    assert gate.reached.wait(DEADLINE)

    waiter = _waiting(app)
    gate.open.set()
    leave.set()
    holder.result()
    assert waiter.result() == "stopped"


# ---------------------------------------------------------------------- async with


def _app_reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        str(getattr(r, "event", "")) for r in caplog.records if r.name == "foundation.application"
    ]


def test_async_with_on_an_application_running_in_its_thread_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Was: app_starting, then app_start_failed with a traceback, then the error.
    caplog.set_level(logging.INFO, logger="foundation.application")
    with Application.start(AppConfig(), services=("flags",)) as app:
        flags = app.flags
        caplog.clear()

        async def enter() -> None:
            async with app:
                raise AssertionError("entered a running application")

        with pytest.raises(SupervisorError, match="already running") as caught:
            asyncio.run(enter())
        assert caught.value.reason == "supervisor_running"
        assert _app_reports(caplog) == []
        assert app.supervisor.state == "running"  # untouched
        assert app.flags is flags
    assert app.supervisor.state == "stopped"


def test_a_second_async_with_logs_nothing_and_leaves_the_first_run_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="foundation.application")
    app = Application(AppConfig(), services=("flags",))

    async def twice() -> None:
        async with app:
            caplog.clear()
            with pytest.raises(SupervisorError, match="already running") as caught:
                async with app:
                    raise AssertionError("entered a running application")
            assert caught.value.reason == "supervisor_running"
            assert _app_reports(caplog) == []
            assert app.supervisor.state == "running"

    asyncio.run(twice())
    assert app.supervisor.state == "stopped"


def test_with_on_an_application_run_by_async_with_logs_nothing_and_wait_still_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The thread's start is refused before it begins: no report, and the run's
    # end (what wait() waits for) is still that of the async with's run.
    caplog.set_level(logging.INFO, logger="foundation.application")
    app = Application(AppConfig(), services=("flags",))
    inside = threading.Event()
    leave = threading.Event()

    async def hold() -> None:
        async with app:
            inside.set()
            await asyncio.to_thread(leave.wait, DEADLINE)

    holder = ThreadCall(lambda: asyncio.run(hold()))
    assert inside.wait(DEADLINE)
    caplog.clear()
    with pytest.raises(SupervisorError, match="async with") as caught, app:
        raise AssertionError("entered an application run by async with")
    assert caught.value.reason == "supervisor_running"
    assert _app_reports(caplog) == []

    waiter = _waiting(app)
    leave.set()
    holder.result()
    assert waiter.result() == "stopped"


# ---------------------------------------------------------------------- wait_for_signal()


def test_wait_for_signal_off_the_main_thread_raises_a_supervisor_error() -> None:
    # Was: the stdlib's ValueError ("signal only works in main thread").
    before = signal.getsignal(signal.SIGINT)
    with Application.start(AppConfig(), services=("flags",)) as app:
        waiter = ThreadCall(app.wait_for_signal)
        with pytest.raises(SupervisorError, match="main thread"):
            waiter.result()
        assert app.supervisor.state == "running"  # left running
    assert signal.getsignal(signal.SIGINT) is before


def test_wait_for_signal_of_no_signals_off_the_main_thread_waits_for_the_end() -> None:
    with Application.start(AppConfig(), services=("flags",)) as app:
        waiter = ThreadCall(lambda: app.wait_for_signal(signals=()))
        wait_until(lambda: waiter.done() or waiter.inside(app, "wait_for_signal"), DEADLINE)
        app.stop()
        assert waiter.result() == 0
