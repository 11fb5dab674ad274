"""Restart intensity across children, escalation through nesting, backoff, min_uptime."""

from __future__ import annotations

import asyncio
import logging

import pytest

from foundation.errors import RestartIntensityExceeded
from foundation.supervision import Backoff, ChildContext, ChildSpec, Supervisor
from tests._logs import captured
from tests.supervision._support import Boom, Crew, captured_events, run, until


@run
async def test_intensity_counts_restarts_across_all_children() -> None:
    crew = Crew()
    sup = Supervisor(
        [crew.spec("a"), crew.spec("b"), crew.spec("c")], max_restarts=2, max_seconds=60
    )
    with captured_events() as events:
        await sup.start()
        crew.crash("a")
        await until(lambda: crew.starts("a") == ["a", "a"] and sup.count_children().active == 3)
        crew.crash("b")
        await until(lambda: crew.starts("b") == ["b", "b"] and sup.count_children().active == 3)
        crew.crash("c")  # third restart within the window: one too many
        with pytest.raises(RestartIntensityExceeded) as info:
            await sup.wait()
    assert sup.state == "failed"
    assert sup.failure is info.value
    assert isinstance(info.value.__cause__, Boom)
    assert "'c'" in str(info.value)
    # Every child stopped, in reverse order, and nothing restarted after giving up.
    assert crew.stops()[-3:] == ["c", "b", "a"]
    assert crew.starts("c") == ["c"]
    names = [n for n, _ in events]
    assert names.count("supervisor.intensity_exceeded") == 1
    assert names[-1] == "supervisor.child_exited"  # a, the last one stopped


@run
async def test_max_restarts_zero_gives_up_on_the_first_crash() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("a")], max_restarts=0) as sup:
        crew.crash("a")
        with pytest.raises(RestartIntensityExceeded):
            await sup.wait()
        assert crew.starts() == ["a"]


@run
async def test_restarts_older_than_the_window_no_longer_count() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("a")], max_restarts=1, max_seconds=0.05) as sup:
        for n in range(2, 5):
            before = asyncio.get_running_loop().time()
            crew.crash("a")
            await until(lambda n=n: len(crew.starts()) == n and sup.count_children().active == 1)
            # Let this restart leave the window before the next crash.
            await until(lambda b=before: asyncio.get_running_loop().time() > b + 0.06)
        assert sup.state == "running"


def crashing_leaf(crew: Crew, max_restarts: int) -> Supervisor:
    return Supervisor([crew.spec("leaf")], max_restarts=max_restarts, name="leaf-sup")


@run
async def test_intensity_escalates_through_two_levels_of_nesting() -> None:
    crew = Crew()
    # leaf-sup gives up at its 2nd crash; mid-sup gives up at leaf-sup's first
    # failure; top gives up at mid-sup's first failure.
    mid = Supervisor(
        [
            crew.spec("mid-worker"),
            ChildSpec("leaf-sup", lambda: crashing_leaf(crew, 1), kind="supervisor"),
        ],
        max_restarts=0,
        name="mid-sup",
    )
    top = Supervisor(
        [crew.spec("top-worker"), ChildSpec("mid-sup", mid)], max_restarts=0, name="top"
    )
    with captured_events() as events:
        await top.start()
        assert crew.starts() == ["top-worker", "mid-worker", "leaf"]
        crew.crash("leaf")
        await until(lambda: crew.starts("leaf") == ["leaf", "leaf"])
        crew.crash("leaf")
        with pytest.raises(RestartIntensityExceeded) as info:
            await top.wait()
    assert "'mid-sup'" in str(info.value)
    mid_failure = info.value.__cause__
    assert isinstance(mid_failure, RestartIntensityExceeded)
    assert "'leaf-sup'" in str(mid_failure)
    leaf_failure = mid_failure.__cause__
    assert isinstance(leaf_failure, RestartIntensityExceeded)
    assert isinstance(leaf_failure.__cause__, Boom)
    gave_up = [d["supervisor"] for n, d in events if n == "supervisor.intensity_exceeded"]
    assert gave_up == ["leaf-sup", "mid-sup", "top"]
    assert crew.stops()[-2:] == ["mid-worker", "top-worker"]
    assert top.state == "failed"


@run
async def test_a_nested_supervisor_that_gives_up_is_restarted_by_its_parent() -> None:
    crew = Crew()
    top = Supervisor(
        [ChildSpec("leaf-sup", lambda: crashing_leaf(crew, 0), kind="supervisor")],
        max_restarts=5,
    )
    async with top:
        first = top.which_children()[0].handle
        crew.crash("leaf")
        await until(lambda: crew.starts() == ["leaf", "leaf"] and top.count_children().active == 1)
        child = top.which_children()[0]
        assert child.handle is not first
        assert child.handle.state == "running"
        assert child.restarts == 1
        assert first.state == "failed"


@run
async def test_failed_restarts_count_against_the_intensity() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("a")], max_restarts=3, max_seconds=60) as sup:
        crew.fail_start.add("a")
        crew.crash("a")
        with pytest.raises(RestartIntensityExceeded):
            await sup.wait()
    # 1 start + 3 failed restarts; the 4th restart is refused.
    assert crew.starts() == ["a"] * 4


@run
async def test_backoff_delays_restarts_that_still_count_against_the_intensity() -> None:
    crew = Crew()
    backoff = Backoff(initial=0.02, factor=2.0, max_delay=0.05)
    sup = Supervisor([crew.spec("a")], max_restarts=2, max_seconds=60, backoff=backoff)
    with captured_events() as events:
        await sup.start()
        for n in (2, 3):
            crew.crash("a")
            await until(lambda: any(n == "supervisor.child_exited" for n, _ in events))
            # Between the crash and the delayed restart, the child is restarting.
            assert sup.which_children()[0].status == "restarting"
            await until(lambda n=n: len(crew.starts()) == n and sup.count_children().active == 1)
            events.clear()
        crew.crash("a")
        with pytest.raises(RestartIntensityExceeded):
            await sup.wait()
    assert crew.starts() == ["a"] * 3


@run
async def test_backoff_grows_then_resets_after_min_uptime() -> None:
    crew = Crew()
    backoff = Backoff(initial=0.01, factor=3.0, max_delay=10.0)
    sup = Supervisor(
        [crew.spec("a")], max_restarts=10, max_seconds=60, backoff=backoff, min_uptime=0.1
    )
    loop = asyncio.get_running_loop()
    with captured("foundation.supervision", level=logging.ERROR) as records:
        async with sup:
            for n in (2, 3):
                crew.crash("a")
                await until(
                    lambda n=n: len(crew.starts()) == n and sup.count_children().active == 1
                )
            # Consecutive quick crashes: the second restart waits factor x initial.
            assert sup._children["a"].consecutive == 2
            # Now stay up longer than min_uptime: the next restart is back to `initial`.
            up_since = loop.time()
            await until(lambda: loop.time() > up_since + 0.12)
            started = len(crew.starts())
            crew.crash("a")
            await until(lambda: len(crew.starts()) == started + 1)
            assert sup._children["a"].consecutive == 1
    # Each crash report says the delay its restart waited (what the round was given).
    assert [getattr(r, "action", None) for r in records.of("child_crashed", "a")] == [
        "restart (after 0.01s backoff)",
        "restart (after 0.03s backoff)",
        "restart (after 0.01s backoff)",
    ]


@run
async def test_a_crash_during_a_backoff_delay_is_not_lost_by_terminate() -> None:
    crew = Crew()
    backoff = Backoff(initial=5.0)
    async with Supervisor([crew.spec("a")], backoff=backoff) as sup:
        crew.crash("a")
        await until(lambda: sup.which_children()[0].status == "restarting")
        await sup.terminate_child("a")  # cancels the delayed restart
        assert sup.which_children()[0].status == "stopped"
        await sup.restart_child("a")
        assert sup.which_children()[0].status == "running"


@run
async def test_stop_cancels_pending_delayed_restarts() -> None:
    crew = Crew()
    sup = Supervisor([crew.spec("a")], backoff=Backoff(initial=5.0))
    await sup.start()
    crew.crash("a")
    await until(lambda: sup.which_children()[0].status == "restarting")
    await sup.stop()
    assert sup._timers == []
    assert crew.starts() == ["a"]


@run
async def test_thread_child_crash_is_restarted() -> None:
    starts: list[int] = []

    def worker(ctx: ChildContext) -> None:
        starts.append(ctx.attempt)
        ctx.ready()
        if ctx.attempt == 0:
            raise Boom("thread crashed")
        ctx.stopping.wait()

    async with Supervisor([ChildSpec("t", worker)]) as sup:
        await until(lambda: starts == [0, 1] and sup.count_children().active == 1)
