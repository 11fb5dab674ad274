"""Watching an asyncio agent does not change it.

* A crashed task or future nobody awaited is still reported by asyncio
  ("Task exception was never retrieved") when it is collected, exactly once,
  as without the library: the library's done-callback reads the exception
  without marking it retrieved (before, ``fut.exception()`` did, and the
  crash of a registered fire-and-forget task vanished silently).
* Each death's ``on_down`` (a registry's listener) runs in a fresh, empty
  ``contextvars.Context``: a ContextVar one sets is seen by no other, on the
  same loop or the same poller thread (before, every death on a loop shared
  one context for the loop's lifetime).

The "never retrieved" checks run in a plain interpreter with default hooks
(``run_scenario``): the log comes from asyncio's own ``__del__``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import threading
from typing import Any

import pytest

from foundation import MemoryRegistry
from foundation.liveness import Down, MonitorManager
from foundation.liveness._watches import _future_down
from tests.faults._subprocess import Expected, run_scenario
from tests.liveness._support import TIMEOUT, Recorder

_SCENARIO = """
import asyncio, gc
from foundation import MemoryRegistry
from foundation.liveness import monitor

AGENT, WATCH = {agent!r}, {watch!r}
crash = ValueError("unobserved-crash")
downs = []

async def boom():
    raise crash

def make(loop):
    if AGENT == "task":
        return asyncio.create_task(boom())
    fut = loop.create_future()
    loop.call_soon(fut.set_exception, crash)
    return fut

def on_event(event):
    if event.kind == "unregistered":
        downs.append(event.down)

async def main():
    reg = MemoryRegistry()
    reg.subscribe(on_event)
    agent = make(asyncio.get_running_loop())
    if WATCH in ("registered", "both"):
        reg.register("agent", agent)
    if WATCH in ("monitor", "both"):
        monitor(agent, downs.append)
    want = 2 if WATCH == "both" else 1
    deadline = asyncio.get_running_loop().time() + 20
    while len(downs) < want or not agent.done():
        assert asyncio.get_running_loop().time() < deadline, "no Down in time"
        await asyncio.sleep(0.001)  # sleep-ok: polling with a deadline
    assert all(d.reason == "exception" and d.exception is crash for d in downs), downs
    reg.close()

asyncio.run(main())
downs.clear()
gc.collect()
print("OK")
"""

_KINDS = [("task", "Task"), ("future", "Future")]


@pytest.mark.parametrize("watch", ["registered", "monitor", "both"])
@pytest.mark.parametrize(("agent", "what"), _KINDS)
def test_unobserved_crash_is_still_logged_once_by_asyncio(
    agent: str, what: str, watch: str
) -> None:
    line = f"{what} exception was never retrieved"
    # The crash nobody awaited is asyncio's report to make, on purpose: the test
    # checks that watching the agent leaves it (once) to asyncio.
    result = run_scenario(
        _SCENARIO.format(agent=agent, watch=watch), expect=(Expected(line, "ValueError"),)
    )
    assert result.stderr.count(line) == 1, result.stderr
    assert result.stderr.count("exception=ValueError('unobserved-crash')") == 1, result.stderr


@pytest.mark.parametrize("kind", ["task", "future"])
def test_the_down_does_not_mark_the_exception_retrieved(manager: MonitorManager, kind: str) -> None:
    crash = ValueError("crash")

    async def boom() -> None:
        raise crash

    async def main() -> tuple[Down, bool]:
        loop = asyncio.get_running_loop()
        agent: asyncio.Future[Any]
        if kind == "task":
            agent = asyncio.create_task(boom())
        else:
            agent = loop.create_future()
            loop.call_soon(agent.set_exception, crash)
        rec = Recorder()
        manager.monitor(agent, rec)
        while not rec.count:
            await asyncio.sleep(0.001)  # sleep-ok: polling on the loop itself
        unretrieved = agent._log_traceback  # type: ignore[attr-defined]
        agent.exception()  # retrieved here: nothing logged at collection
        return rec.downs[0], unretrieved

    down, unretrieved = asyncio.run(main())
    assert down.reason == "exception"
    assert down.exception is crash
    assert unretrieved
    gc.collect()


_REQUEST: contextvars.ContextVar[str | None] = contextvars.ContextVar("request", default=None)


def test_listeners_of_unrelated_registries_share_no_context() -> None:
    seen: list[str | None] = []

    def listener_a(event: Any) -> None:
        if event.kind == "unregistered":
            _REQUEST.set("req-42")

    def listener_b(event: Any) -> None:
        if event.kind == "unregistered":
            seen.append(_REQUEST.get())

    async def main() -> None:
        reg_a, reg_b = MemoryRegistry(), MemoryRegistry()
        reg_a.subscribe(listener_a)
        reg_b.subscribe(listener_b)
        loop = asyncio.get_running_loop()
        fa: asyncio.Future[int] = loop.create_future()
        fb: asyncio.Future[int] = loop.create_future()
        reg_a.register("a", fa)
        reg_b.register("b", fb)
        fa.set_result(1)
        while reg_a.lookup("a") is not None:
            await asyncio.sleep(0.001)  # sleep-ok: polling on the loop itself
        fb.set_result(1)
        while not seen:
            await asyncio.sleep(0.001)  # sleep-ok: polling on the loop itself
        reg_a.close()
        reg_b.close()

    asyncio.run(main())
    assert seen == [None]


def test_monitors_of_one_death_share_no_context(manager: MonitorManager) -> None:
    seen: list[str | None] = []

    def setter(down: Down) -> None:
        _REQUEST.set("req-1")

    def reader(down: Down) -> None:
        seen.append(_REQUEST.get())

    async def main() -> None:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        manager.monitor(fut, setter)
        manager.monitor(fut, reader)  # called after setter (monitor order)
        fut.set_result(1)
        while not seen:
            await asyncio.sleep(0.001)  # sleep-ok: polling on the loop itself

    asyncio.run(main())
    assert seen == [None]


def test_deaths_on_one_poller_thread_share_no_context(manager: MonitorManager) -> None:
    """Foreign threads: every death is told on the manager's poller thread."""
    seen: list[tuple[str, str | None]] = []
    first_told, second_told = threading.Event(), threading.Event()

    def setter(down: Down) -> None:
        seen.append((threading.current_thread().name, _REQUEST.get()))
        _REQUEST.set("req-7")
        first_told.set()

    def reader(down: Down) -> None:
        seen.append((threading.current_thread().name, _REQUEST.get()))
        second_told.set()

    release_a, release_b = threading.Event(), threading.Event()
    a = threading.Thread(target=release_a.wait)
    b = threading.Thread(target=release_b.wait)
    a.start()
    b.start()
    manager.monitor(a, setter)
    manager.monitor(b, reader)
    release_a.set()
    assert first_told.wait(TIMEOUT)
    release_b.set()
    assert second_told.wait(TIMEOUT)
    a.join()
    b.join()
    assert seen[0][0] == seen[1][0]  # the same (poller) thread told both
    assert [value for _, value in seen] == [None, None]


class _FutureLike:
    """A future-like object without ``_exception``: read through ``exception()``."""

    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return self.exc


def test_future_down_peeks_pure_python_futures_and_falls_back() -> None:
    loop = asyncio.new_event_loop()
    try:
        crash = ValueError("crash")
        fut: asyncio.Future[int] = asyncio.futures._PyFuture(loop=loop)  # type: ignore[attr-defined]
        fut.set_exception(crash)
        assert _future_down(fut) == Down("exception", exception=crash)
        assert fut._log_traceback  # type: ignore[attr-defined]  # still unretrieved
        fut.exception()
    finally:
        loop.close()
    assert _future_down(_FutureLike(crash)) == Down("exception", exception=crash)  # type: ignore[arg-type]
    assert _future_down(_FutureLike(None)) == Down("normal")  # type: ignore[arg-type]


def test_a_death_told_from_an_on_down_gets_its_own_context(manager: MonitorManager) -> None:
    """An on_down completing another agent: that death is told (nested) in a
    context of its own, while the outer one is still entered."""
    outer: concurrent.futures.Future[int] = concurrent.futures.Future()
    inner: concurrent.futures.Future[int] = concurrent.futures.Future()
    seen: list[str | None] = []

    def noop(down: Down) -> None:
        pass

    def completes_inner(down: Down) -> None:
        _REQUEST.set("outer")
        inner.set_result(1)
        seen.append(_REQUEST.get())

    def reader(down: Down) -> None:
        seen.append(_REQUEST.get())

    manager.monitor(inner, reader)
    for on_down in (noop, completes_inner, reader):
        manager.monitor(outer, on_down)
    outer.set_result(1)
    assert seen == [None, "outer", None]
    assert manager.active_count() == 0
