"""A task child still running at its shutdown timeout is cancelled again (OTP's
kill): a cleanup that awaits past its timeout is cut short, so the child's
restart never runs beside it. One that swallows every cancellation is still
abandoned (test_kinds, test_reports); ``brutal_kill`` still cancels once
without waiting (test_otp_features).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from foundation.supervision import ChildContext, ChildSpec, Supervisor
from tests._logs import Records, captured
from tests.supervision._support import captured_events, run, until


@pytest.fixture
def reports() -> Iterator[Records]:
    with captured("foundation.supervision") as kept:
        yield kept


class Slow:
    """A task child whose cleanup awaits for ever (an orderly close that hangs)."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.tasks: list[asyncio.Task[object]] = []

    async def child(self, ctx: ChildContext) -> None:
        self.live += 1
        self.peak = max(self.peak, self.live)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        ctx.ready()
        try:
            await asyncio.Event().wait()
        finally:
            try:
                await asyncio.Event().wait()  # the cleanup: never done on its own
            finally:
                self.live -= 1


@run
async def test_a_one_for_all_sibling_outlasting_its_timeout_never_overlaps_its_restart(
    reports: Records,
) -> None:
    crash = asyncio.Event()
    slow = Slow()

    async def crasher(ctx: ChildContext) -> None:
        ctx.ready()
        if ctx.attempt == 0:
            await crash.wait()
            raise RuntimeError("a crashed")
        await asyncio.Event().wait()

    specs = [ChildSpec("a", crasher), ChildSpec("b", slow.child, shutdown_timeout=0.05)]
    async with Supervisor(specs, name="app", strategy="one_for_all") as sup:
        crash.set()
        await until(
            lambda: [(c.restarts, c.status) for c in sup.which_children()] == [(1, "running")] * 2
        )
        first = slow.tasks[0]
        assert first.done()
        assert first.cancelled()
        assert slow.peak == 1  # the old b ended before the new one started
        [timeout] = reports.of("shutdown_timeout", "b")
        assert timeout.action == "cancelled again"  # type: ignore[attr-defined]
    assert slow.live == 0


@run
async def test_terminate_child_cancels_a_task_again_at_its_timeout(reports: Records) -> None:
    slow = Slow()
    with captured_events() as events:
        async with Supervisor([ChildSpec("t", slow.child, shutdown_timeout=0.05)]) as sup:
            await sup.terminate_child("t")  # no ShutdownError: it was not abandoned
            assert sup.which_child("t").status == "stopped"
            assert slow.tasks[0].cancelled()
            assert slow.live == 0
    exits = [d["reason"] for n, d in events if n == "supervisor.child_exited"]
    assert exits == ["killed"]
    assert reports.of("shutdown_error") == []  # the kill is the timeout's WARNING
