"""A cancellation while ``async with Application(...)`` stops the tree: a
Ctrl-C under ``asyncio.run`` (which cancels the main task), an
``asyncio.timeout()`` expiring during the block's exit, or ``asyncio.run``
ending while the stop runs. The stop completes first (every child stopped, in
reverse order, within its grace), then the cancellation goes on; it is one
INFO line (``app_stop_cancelled``), no ERROR; ``wait()`` returns only once the
tree is stopped, and at once when called on the loop after the block.

Was: ERROR ``app_stop_failed: CancelledError()``, ``wait()`` returned early and
the tree was left "stopping" with its children running (3/3 each); a stop
under way when ``asyncio.run`` ended was cut with no log line at all; and
``wait()`` on the loop after the block raised SupervisorError.
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

# In the scenarios: a thread worker whose cleanup takes a while, so that the
# cancellation meets the stop under way; the services and workers stopped.
_SLOW_WORKER = """
import asyncio, os, signal
from foundation import Application, ChildSpec

reached = threading.Event()
cleaned = []

def slow(ctx):
    ctx.ready()
    ctx.stopping.wait()
    reached.set()
    time.sleep(0.5)  # sleep-ok: a cleanup that takes a while, met by the cancellation
    cleaned.append(ctx.id)

class Events(logging.Handler):
    def emit(self, record):
        print("EVENT", record.event, record.levelname, flush=True)

logging.getLogger("foundation.application").addHandler(Events())
app = Application(services=("flags", "monitors", "registry"),
                  workers=[ChildSpec("slow", slow, kind="thread", shutdown_timeout=20)])

def report():
    print("STATE", app.supervisor.state, flush=True)
    print("CHILDREN", sorted({c.status for c in app.which_children()}), flush=True)
    print("CLEANED", cleaned, "ORDER", app.stopped_order, flush=True)
"""


def _assert_stopped_whole(result_stdout: str, stderr: str) -> None:
    lines = result_stdout.splitlines()
    assert "STATE stopped" in lines, result_stdout + stderr
    assert "CHILDREN ['stopped']" in lines, result_stdout
    assert "CLEANED ['slow'] ORDER ['registry', 'monitors', 'flags']" in lines, result_stdout
    assert "EVENT app_stop_failed ERROR" not in lines, result_stdout
    assert "EVENT app_stopped INFO" in lines, result_stdout
    assert "Traceback" not in stderr, stderr


def test_ctrl_c_under_asyncio_run_while_async_with_stops_lets_the_stop_finish() -> None:
    result = run_scenario(
        _SLOW_WORKER
        + textwrap.dedent(
            """
        # Ctrl-C: asyncio.run cancels its main task (a test run started as a
        # background job inherits SIGINT ignored: the default handler is set).
        signal.signal(signal.SIGINT, signal.default_int_handler)

        def ctrl_c():
            reached.wait(20)  # the stop is under way: the worker cleans up
            os.kill(os.getpid(), signal.SIGINT)

        async def main():
            async with app:
                threading.Thread(target=ctrl_c, daemon=True).start()

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
        report()
        print("OK")
        """
        ),
        timeout=DEADLINE * 3,
    )
    assert result.lines("INTERRUPTED") == ["INTERRUPTED"], result.stdout + result.stderr
    _assert_stopped_whole(result.stdout, result.stderr)
    assert "EVENT app_stop_cancelled INFO" in result.lines("EVENT"), result.stdout


def test_asyncio_run_ending_while_the_stop_runs_lets_it_finish() -> None:
    # The application served by a task of its own; main asks stop() from the
    # loop (a stop in the background) and returns while it runs: the loop's
    # end cancels every task, the stop's among them.
    result = run_scenario(
        _SLOW_WORKER
        + textwrap.dedent(
            """
        async def serve(started):
            async with app:
                started.set()
                await asyncio.Event().wait()

        async def main():
            started = asyncio.Event()
            asyncio.get_running_loop().create_task(serve(started))
            await started.wait()
            app.stop()
            await asyncio.to_thread(reached.wait, 20)

        asyncio.run(main())
        report()
        print("OK")
        """
        ),
        timeout=DEADLINE * 3,
    )
    _assert_stopped_whole(result.stdout, result.stderr)
    assert "Task was destroyed" not in result.stderr, result.stderr


class _SlowCleanup:
    """A thread worker whose cleanup takes a while once the stop reaches it."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.cleaned = threading.Event()

    def spec(self) -> ChildSpec:
        return ChildSpec("slow", self._run, kind="thread", shutdown_timeout=DEADLINE)

    def _run(self, ctx: ChildContext) -> None:
        ctx.ready()
        ctx.stopping.wait()
        self.reached.set()
        time.sleep(0.5)  # sleep-ok: a cleanup that takes a while, met by the timeout
        self.cleaned.set()


def _events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (str(getattr(r, "event", "")), r.levelname)
        for r in caplog.records
        if r.name == "foundation.application"
    ]


def test_a_timeout_expiring_while_async_with_stops_lets_the_stop_finish(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="foundation.application")
    worker = _SlowCleanup()
    app = Application(AppConfig(), services=SERVICES, workers=[worker.spec()])
    seen: list[object] = []

    async def expire_once_reached(timeout: asyncio.Timeout) -> None:
        await asyncio.to_thread(worker.reached.wait, DEADLINE)
        timeout.reschedule(asyncio.get_running_loop().time())  # expires now

    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(None) as timeout, app:
                asyncio.get_running_loop().create_task(expire_once_reached(timeout))
        seen.append(worker.cleaned.is_set())
        seen.append(app.supervisor.state)
        seen.append(sorted({c.status for c in app.which_children()}))
        app.wait(0)  # on the loop, after the block: the tree is stopped, it returns

    asyncio.run(main())
    assert seen == [True, "stopped", ["stopped"]]
    assert app.stopped_order == ["registry", "monitors", "flags"]
    events = _events(caplog)
    assert ("app_stop_cancelled", "INFO") in events, events
    assert events[-1] == ("app_stopped", "INFO"), events
    assert not [e for e in events if e[1] != "INFO"], events


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
