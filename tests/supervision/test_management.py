"""which_children, count_children, start/terminate/restart/delete_child and their errors;
the dynamic supervisor; the synchronous facade."""

from __future__ import annotations

import asyncio
import threading

import pytest

from foundation.errors import RestartIntensityExceeded, StartError, SupervisorError
from foundation.supervision import (
    Backoff,
    ChildContext,
    ChildCounts,
    ChildSpec,
    DynamicSupervisor,
    Supervisor,
)
from tests.supervision._support import Boom, Crew, captured_events, run, until, wait_until


def reason(info: pytest.ExceptionInfo[SupervisorError]) -> str:
    return info.value.reason  # type: ignore[attr-defined,no-any-return]


@run
async def test_which_and_count_children_describe_the_tree() -> None:
    crew = Crew()
    nested = Supervisor([crew.spec("inner")])
    specs = [crew.spec("a"), ChildSpec("nested", nested), crew.spec("b", restart="transient")]
    async with Supervisor(specs) as sup:
        rows = sup.which_children()
        assert [(r.id, r.kind, r.restart, r.status) for r in rows] == [
            ("a", "task", "permanent", "running"),
            ("nested", "supervisor", "permanent", "running"),
            ("b", "task", "transient", "running"),
        ]
        assert isinstance(rows[0].handle, asyncio.Task)
        assert rows[1].handle is nested
        assert sup.count_children() == ChildCounts(specs=3, active=3, supervisors=1, workers=2)
        crew.finish("b")
        await until(lambda: sup.count_children().active == 2)
        assert sup.which_children()[2].handle is None


@run
async def test_start_child_appends_and_starts_a_new_child() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("a")], strategy="rest_for_one") as sup:
        info = await sup.start_child(crew.spec("b"))
        assert (info.id, info.status) == ("b", "running")
        assert [c.id for c in sup.which_children()] == ["a", "b"]
        crew.crash("a")  # rest_for_one: b was added after a, so it restarts too
        await until(lambda: crew.starts() == ["a", "b", "a", "b"])


@run
async def test_start_child_errors_follow_otp() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("a"), crew.spec("t", restart="transient")]) as sup:
        with pytest.raises(SupervisorError) as info:
            await sup.start_child(crew.spec("a"))
        assert reason(info) == "already_started"
        assert info.value.child == "a"  # type: ignore[attr-defined]
        crew.finish("t")
        await until(lambda: sup.which_children()[1].status == "stopped")
        with pytest.raises(SupervisorError) as info:
            await sup.start_child(crew.spec("t"))
        assert reason(info) == "already_present"
        crew.fail_start.add("bad")
        with pytest.raises(StartError) as start_info:
            await sup.start_child(crew.spec("bad"))
        assert start_info.value.child == "bad"
        assert [c.id for c in sup.which_children()] == ["a", "t"]  # not kept


@run
async def test_terminate_restart_and_delete_child() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("a"), crew.spec("b")]) as sup:
        await sup.terminate_child("a")
        assert crew.stops() == ["a"]
        assert sup.which_children()[0].status == "stopped"
        assert sup.count_children().active == 1
        info = await sup.restart_child("a")
        assert info.status == "running"
        assert crew.starts() == ["a", "b", "a"]
        await sup.terminate_child("a")
        await sup.delete_child("a")
        assert [c.id for c in sup.which_children()] == ["b"]


@run
async def test_management_errors_name_running_restarting_and_not_found() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("a")], backoff=Backoff(initial=5.0)) as sup:
        for call in (sup.restart_child, sup.delete_child):
            with pytest.raises(SupervisorError) as info:
                await call("a")
            assert reason(info) == "running"
        for call in (sup.restart_child, sup.delete_child, sup.terminate_child):
            with pytest.raises(SupervisorError) as info:
                await call("zz")
            assert reason(info) == "not_found"
            assert isinstance(info.value, SupervisorError)
        crew.crash("a")
        await until(lambda: sup.which_children()[0].status == "restarting")
        for call in (sup.restart_child, sup.delete_child):
            with pytest.raises(SupervisorError) as info:
                await call("a")
            assert reason(info) == "restarting"
    with pytest.raises(SupervisorError) as info:
        await sup.start_child(crew.spec("late"))
    assert reason(info) == "supervisor_not_running"


@run
async def test_terminating_a_temporary_child_drops_its_spec() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("tmp", restart="temporary")]) as sup:
        await sup.terminate_child("tmp")
        assert sup.which_children() == []


@run
async def test_restart_child_that_fails_to_start_stays_stopped() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("a")]) as sup:
        await sup.terminate_child("a")
        crew.fail_start.add("a")
        with pytest.raises(StartError):
            await sup.restart_child("a")
        assert sup.which_children()[0].status == "stopped"


@run
async def test_dynamic_supervisor_starts_children_from_a_template_with_extra_args() -> None:
    seen: list[tuple[str, str, int]] = []

    async def agent(ctx: ChildContext, zone: str, load: int) -> None:
        seen.append((ctx.id, zone, load))
        ctx.ready()
        await asyncio.Event().wait()

    template = ChildSpec("agent", agent, args=("eu",), restart="transient")
    async with DynamicSupervisor(template, max_children=3) as sup:
        a = await sup.start_child(1)
        b = await sup.start_child(2, id="special")
        await sup.start_child(3)
        assert (a.id, b.id) == ("agent-1", "special")
        assert seen == [("agent-1", "eu", 1), ("special", "eu", 2), ("agent-2", "eu", 3)]
        with pytest.raises(SupervisorError) as info:
            await sup.start_child(4)
        assert reason(info) == "max_children"
        # Elixir's DynamicSupervisor: terminate_child also forgets the child.
        await sup.terminate_child("special")
        assert [c.id for c in sup.which_children()] == ["agent-1", "agent-2"]
        with pytest.raises(SupervisorError) as info:
            await sup.restart_child("special")
        assert reason(info) == "simple_one_for_one"  # OTP: {error, simple_one_for_one}
        # A crashed dynamic child is restarted (one_for_one) with the same args.
        sup.which_children()[0].handle.cancel()
        await until(lambda: seen.count(("agent-1", "eu", 1)) == 2)


@run
async def test_dynamic_supervisor_without_template_takes_full_specs() -> None:
    crew = Crew()
    async with DynamicSupervisor() as sup:
        await sup.start_child(crew.spec("x"))
        assert sup.count_children().active == 1
        with pytest.raises(TypeError):
            await sup.start_child("not a spec")


def test_sync_facade_runs_the_loop_in_a_named_thread_and_manages_children() -> None:
    stop_all = threading.Event()

    def worker(ctx: ChildContext, n: int) -> None:
        ctx.ready()
        while not ctx.stopping.is_set() and not stop_all.is_set():
            ctx.stopping.wait(1)

    sup = Supervisor([ChildSpec("w1", worker, args=(1,))], name="facade")
    with sup.run_in_thread() as handle:
        assert handle.thread.name == "supervisor:facade"
        assert handle.thread.is_alive()
        handle.start_child(ChildSpec("w2", worker, args=(2,)))
        assert [c.id for c in handle.which_children()] == ["w1", "w2"]
        handle.terminate_child("w1")
        assert handle.count_children().active == 1
        handle.restart_child("w1")
        with pytest.raises(SupervisorError):
            handle.delete_child("w1")
        with pytest.raises(TimeoutError):
            handle.wait(timeout=0.01)
    assert not handle.thread.is_alive()
    assert sup.state == "stopped"
    handle.wait()  # after a clean stop: returns at once
    handle.stop()  # idempotent


def test_sync_facade_raises_start_error_and_leaves_no_thread() -> None:
    def bad(ctx: ChildContext) -> None:
        raise Boom("no")

    before = set(threading.enumerate())
    with pytest.raises(StartError) as info:
        Supervisor([ChildSpec("bad", bad)], name="bad-facade").run_in_thread()
    assert info.value.child == "bad"
    wait_until(lambda: set(threading.enumerate()) <= before)


def test_sync_facade_wait_raises_restart_intensity_exceeded() -> None:
    crash = threading.Event()

    def fragile(ctx: ChildContext) -> None:
        ctx.ready()
        while not ctx.stopping.wait(0.01):
            if crash.is_set():
                raise Boom("fragile")

    with captured_events() as events:
        handle = Supervisor([ChildSpec("f", fragile)], max_restarts=2).run_in_thread()
        with handle:
            crash.set()
            with pytest.raises(RestartIntensityExceeded):
                handle.wait(timeout=10)
        with pytest.raises(RestartIntensityExceeded):
            handle.wait()  # also after the loop closed
    restarted = [d for n, d in events if n == "supervisor.child_restarted"]
    assert [d["restarts"] for d in restarted] == [1, 2]
