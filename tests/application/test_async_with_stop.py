"""``app.stop()`` stops a tree run by ``async with Application(...)``: from its
loop, from another thread, from a task worker and from a thread worker;
``wait()`` then returns, and leaving the block stops nothing twice.

Was: stop() found no tree run in a thread and did nothing: every child still
running, ``wait()`` never returned, a SIGTERM handler calling ``app.stop``
left the program hanging.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from foundation import Application, ChildSpec
from foundation.application import AppConfig
from foundation.supervision import ChildContext
from tests.application._threads import ThreadCall
from tests.faults._subprocess import run_scenario
from tests.supervision._support import wait_until

DEADLINE = 20.0  # seconds: a tree not stopped by then was not stopped at all
SERVICES = ("flags", "monitors", "registry")


class _Stoppers:
    """A task worker and a thread worker that call ``app.stop()`` when told."""

    def __init__(self, app_box: list[Application]) -> None:
        self._app = app_box
        self.task_go: asyncio.Event | None = None
        self.thread_go = threading.Event()

    def specs(self) -> list[ChildSpec]:
        return [
            ChildSpec("t", self._task, readiness="explicit"),
            ChildSpec("h", self._thread, kind="thread", readiness="explicit"),
        ]

    async def _task(self, ctx: ChildContext) -> None:
        go = self.task_go = asyncio.Event()
        ctx.ready()
        await go.wait()
        self._app[0].stop()
        await asyncio.Event().wait()  # cancelled by the stop

    def _thread(self, ctx: ChildContext) -> None:
        ctx.ready()
        while not ctx.stopping.wait(0.01):
            if self.thread_go.is_set():
                self._app[0].stop()
                ctx.stopping.wait()
                return


async def _trigger(where: str, app: Application, stoppers: _Stoppers) -> None:
    if where == "loop":
        app.stop()
    elif where == "thread":
        await asyncio.to_thread(app.stop)
        # From another thread, stop() returns once the tree has stopped.
        assert {c.status for c in app.which_children()} == {"stopped"}
    elif where == "task_worker":
        assert stoppers.task_go is not None
        stoppers.task_go.set()
    else:
        stoppers.thread_go.set()


def _events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        str(getattr(r, "event", "")) for r in caplog.records if r.name == "foundation.application"
    ]


@pytest.mark.parametrize("where", ["loop", "thread", "task_worker", "thread_worker"])
def test_stop_stops_an_async_with_run_and_wait_returns(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="foundation.application")
    box: list[Application] = []
    stoppers = _Stoppers(box)
    app = Application(AppConfig(), services=SERVICES, workers=stoppers.specs())
    box.append(app)
    seen: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with app:
            await _trigger(where, app, stoppers)
            # Was: TimeoutError, every child still running.
            await loop.run_in_executor(None, app.wait, DEADLINE)
            seen.extend(c.status for c in app.which_children())
            assert app.flags is None  # the services are closed

    asyncio.run(main())
    assert set(seen) == {"stopped"}
    events = _events(caplog)
    # Stopped once, by stop(); leaving the block stopped nothing again.
    assert events.count("app_stopping") == 1, events
    assert events.count("app_stopped") == 1, events
    assert "app_stop_failed" not in events
    assert app.supervisor.state == "stopped"


def test_after_a_stop_the_application_runs_again_in_a_new_async_with() -> None:
    app = Application(AppConfig(), services=SERVICES)
    states: list[str] = []

    async def twice() -> None:
        async with app:
            app.stop()
            await asyncio.get_running_loop().run_in_executor(None, app.wait, DEADLINE)
        async with app:
            states.append(app.supervisor.state)
            assert app.flags is not None

    asyncio.run(twice())
    assert states == ["running"]
    assert app.supervisor.state == "stopped"


def test_a_stop_from_another_thread_while_async_with_starts_waits_and_stops_it() -> None:
    reached = threading.Event()
    gate = threading.Event()

    def slow(ctx: ChildContext) -> None:  # ready only once the test says so
        reached.set()
        gate.wait(DEADLINE)
        ctx.ready()
        ctx.stopping.wait()

    app = Application(
        AppConfig(),
        services=("flags",),
        workers=[ChildSpec("s", slow, kind="thread", readiness="explicit", ready_timeout=DEADLINE)],
    )
    seen: list[str] = []

    async def ask_stop() -> ThreadCall:
        await asyncio.to_thread(reached.wait, DEADLINE)
        stopper = ThreadCall(app.stop)
        # It waits for the start's end (the stop's end, in fact): not returned.
        await asyncio.to_thread(
            wait_until, lambda: stopper.inside(app, "_stop_async_run"), DEADLINE
        )
        gate.set()
        return stopper

    async def main() -> None:
        asking = asyncio.create_task(ask_stop())
        async with app:
            stopper = await asking
            await asyncio.get_running_loop().run_in_executor(None, app.wait, DEADLINE)
            seen.extend(c.status for c in app.which_children())
            await asyncio.to_thread(stopper.result)  # returned once stopped

    asyncio.run(main())
    assert set(seen) == {"stopped"}


def test_a_sigterm_handler_calling_stop_ends_the_program() -> None:
    # Was: the handler's stop() did nothing, the program hung in app.wait().
    result = run_scenario(
        """
        import asyncio, os, signal, sys
        from foundation import Application, ChildSpec

        SLEEP = [sys.executable, "-c", "import time; time.sleep(3600)"]  # sleep-ok: child

        async def main():
            app = Application(services=("flags", "monitors", "registry"),
                              workers=[ChildSpec("p", SLEEP)])
            async with app:
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGTERM, app.stop)
                os.kill(os.getpid(), signal.SIGTERM)
                await loop.run_in_executor(None, app.wait, 20)
                print("CHILDREN", sorted({c.status for c in app.which_children()}), flush=True)
            print("LEFT", flush=True)

        asyncio.run(main())
        print("OK")
        """,
        timeout=DEADLINE * 3,
    )
    assert result.lines("CHILDREN") == ["CHILDREN ['stopped']"]
    assert result.lines("LEFT") == ["LEFT"]
    assert "app_stop_failed" not in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
