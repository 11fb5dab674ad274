"""terminate_child whose caller goes away, dynamic children that end for good,
and a thread child terminating itself (the OTP parity review's findings 1-4).

OTP references: ``supervisor.erl`` (``terminate_child`` completes in the
supervisor whatever happens to its caller; ``do_restart(_, normal, ...)``
deletes a simple_one_for_one child) and Elixir's ``DynamicSupervisor``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from foundation.errors import ShutdownError
from foundation.supervision import ChildContext, ChildSpec, DynamicSupervisor, Supervisor
from foundation.supervision._spec import RestartType
from tests.supervision._support import run, until, wait_until


def _slow_stopper(cancelled: asyncio.Event, release: asyncio.Event) -> Any:
    """A task child whose cleanup, once cancelled, waits for ``release``."""

    async def child(ctx: ChildContext) -> None:
        ctx.ready()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            await release.wait()
            raise

    return child


# ------------------------------------------------------------------ 1: cancelled caller
@run
async def test_cancelled_terminate_child_caller_still_leaves_the_child_stopped() -> None:
    cancelled, release = asyncio.Event(), asyncio.Event()
    spec = ChildSpec("slow", _slow_stopper(cancelled, release), shutdown_timeout=30)
    async with Supervisor([spec], name="cancel-term") as sup:
        handle = sup.which_child("slow").handle
        assert isinstance(handle, asyncio.Task)
        caller = asyncio.create_task(sup.terminate_child("slow"))
        await cancelled.wait()  # the stop is under way
        caller.cancel()  # as an asyncio.wait_for timeout would
        with pytest.raises(asyncio.CancelledError):
            await caller
        release.set()
        await until(handle.done)
        await until(lambda: sup.which_child("slow").status == "stopped")
        assert sup.which_child("slow").handle is None
        assert sup.count_children().active == 0
        # OTP: pid undefined, so restart_child and delete_child work.
        info = await sup.restart_child("slow")
        assert info.status == "running"
        await sup.terminate_child("slow")  # released already: it stops at once
        await sup.delete_child("slow")
        assert sup.which_children() == []


@run
async def test_cancelled_terminate_child_caller_frees_the_dynamic_slot() -> None:
    cancelled, release = asyncio.Event(), asyncio.Event()
    template = ChildSpec("slow", _slow_stopper(cancelled, release), shutdown_timeout=30)
    async with DynamicSupervisor(template, max_children=1, name="cancel-dyn") as sup:
        first = await sup.start_child()
        caller = asyncio.create_task(sup.terminate_child(first.id))
        await cancelled.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        release.set()
        await until(lambda: sup.which_children() == [])
        assert sup.count_children().active == 0
        second = await sup.start_child()  # the max_children slot is free again
        assert second.status == "running"


@pytest.mark.parametrize("restart", ["permanent", "transient", "temporary"])
def test_task_child_terminating_itself_ends_stopped_and_not_restarted(restart: RestartType) -> None:
    @run
    async def scenario() -> None:
        box: list[Supervisor] = []
        runs: list[ChildContext] = []
        asked, go = asyncio.Event(), asyncio.Event()

        async def me(ctx: ChildContext) -> None:
            ctx.ready()
            runs.append(ctx)
            if len(runs) == 1:
                await go.wait()  # the supervisor is running
                asked.set()
                await box[0].terminate_child("me")  # cancelled by that very stop
            await asyncio.Event().wait()

        sup = Supervisor([ChildSpec("me", me, restart=restart)], name=f"self-{restart}")
        box.append(sup)
        async with sup:
            go.set()
            await asyncio.wait_for(asked.wait(), 30)
            if restart == "temporary":
                await until(lambda: sup.which_children() == [])
            else:
                await until(lambda: sup.which_child("me").status == "stopped")
                assert sup.which_child("me").restarts == 0
                assert sup.count_children().active == 0
                assert (await sup.restart_child("me")).status == "running"
            assert len(runs) == 1 + (restart != "temporary")

    scenario()


# ------------------------------------------------------------------ 2: dynamic rows
@pytest.mark.parametrize("restart", ["transient", "temporary"])
def test_dynamic_child_ending_normally_is_removed(restart: RestartType) -> None:
    @run
    async def scenario() -> None:
        async def job(ctx: ChildContext) -> None:
            ctx.ready()  # does its work and returns: a normal exit

        template = ChildSpec("job", job, restart=restart)
        async with DynamicSupervisor(template, max_children=2, name="dyn-jobs") as sup:
            for _ in range(3):  # more rounds than max_children
                await sup.start_child()
                await sup.start_child()
                await until(lambda: sup.which_children() == [])
                assert sup.count_children().specs == 0

    scenario()


# ------------------------------------------------------------------ 3: thread self-terminate
def test_thread_child_terminating_itself_does_not_wait_for_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    box: dict[str, Any] = {}
    returned = threading.Event()
    outcome: list[BaseException | None] = []

    def me(ctx: ChildContext) -> None:
        ctx.ready()
        wait_until(lambda: "handle" in box)
        try:
            box["handle"].terminate_child("me")  # returns at once: the stop runs on
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
        returned.set()
        ctx.stopping.wait()

    # Long enough that a terminate waiting for its own thread is unmistakable.
    spec = ChildSpec("me", me, kind="thread", restart="transient", shutdown_timeout=30)
    caplog.set_level(logging.WARNING, logger="foundation.supervision")
    with Supervisor([spec], name="thread-self").run_in_thread() as handle:
        thread = handle.which_child("me").handle
        assert isinstance(thread, threading.Thread)
        box["handle"] = handle
        wait_until(returned.is_set)
        assert outcome == [None]
        wait_until(lambda: not thread.is_alive())
        wait_until(lambda: handle.which_child("me").status == "stopped")
    assert "abandoned" not in caplog.text


def test_thread_grandchild_terminating_its_supervisor_does_not_wait_for_itself() -> None:
    box: dict[str, Any] = {}
    returned = threading.Event()
    outcome: list[BaseException | None] = []

    def grandchild(ctx: ChildContext) -> None:
        ctx.ready()
        wait_until(lambda: "handle" in box)
        try:
            box["handle"].terminate_child("inner")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
        returned.set()
        ctx.stopping.wait()

    def inner() -> Supervisor:
        g = ChildSpec("g", grandchild, kind="thread", shutdown_timeout=30)
        return Supervisor([g], name="inner")

    outer = Supervisor([ChildSpec("inner", inner, kind="supervisor")], name="outer")
    with outer.run_in_thread() as handle:
        box["handle"] = handle
        wait_until(returned.is_set)
        assert outcome == [None]
        wait_until(lambda: handle.which_child("inner").status == "stopped")


# ------------------------------------------------------------------ 4: nested abandon
def test_terminating_a_nested_supervisor_names_the_abandoned_grandchild() -> None:
    @run
    async def scenario() -> None:
        release = threading.Event()
        started = threading.Event()

        def stubborn(ctx: ChildContext) -> None:
            ctx.ready()
            started.set()
            release.wait(30)  # ignores ctx.stopping: abandoned at its timeout

        def inner() -> Supervisor:
            return Supervisor([ChildSpec("g", stubborn, shutdown_timeout=0)], name="inner-s")

        outer = Supervisor([ChildSpec("inner", inner, kind="supervisor")], name="outer-s")
        async with outer:
            await asyncio.to_thread(started.wait, 30)
            try:
                with pytest.raises(ShutdownError) as info:
                    await outer.terminate_child("inner")
            finally:
                release.set()
            message = str(info.value)
            assert "'inner'" in message, message
            assert "'g'" in message, message
            assert isinstance(info.value.__cause__, ShutdownError)
            assert outer.which_child("inner").status in ("stopped", "abandoned")

    scenario()
