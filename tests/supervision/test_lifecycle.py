"""Ordered start with the readiness handshake, rollback of a failed start, ordered stop."""

from __future__ import annotations

import asyncio

import pytest

from foundation.errors import StartError, SupervisorError
from foundation.supervision import ChildContext, ChildSpec, Supervisor
from tests.supervision._support import Boom, Crew, run, until


@run
async def test_children_start_in_order_each_ready_before_the_next() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("a"), crew.spec("b"), crew.spec("c")]) as sup:
        assert crew.kinds("start", "ready") == [
            ("start", "a", 0),
            ("ready", "a"),
            ("start", "b", 0),
            ("ready", "b"),
            ("start", "c", 0),
            ("ready", "c"),
        ]
        assert [c.status for c in sup.which_children()] == ["running"] * 3


@run
async def test_next_child_waits_for_ready_not_for_spawn() -> None:
    gate = asyncio.Event()
    order: list[str] = []

    async def slow(ctx: ChildContext) -> None:
        order.append("slow spawned")
        await gate.wait()
        order.append("slow ready")
        ctx.ready()
        await asyncio.Event().wait()

    async def fast(ctx: ChildContext) -> None:
        order.append("fast spawned")
        ctx.ready()
        await asyncio.Event().wait()

    sup = Supervisor([ChildSpec("slow", slow), ChildSpec("fast", fast)])
    starting = asyncio.create_task(sup.start())
    await until(lambda: order == ["slow spawned"])
    assert sup.state == "starting"
    gate.set()
    await starting
    assert order == ["slow spawned", "slow ready", "fast spawned"]
    await sup.stop()


@run
async def test_children_stop_in_reverse_order() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("a"), crew.spec("b"), crew.spec("c")]):
        pass
    assert crew.stops() == ["c", "b", "a"]


@run
async def test_failed_start_stops_the_started_children_in_reverse_and_names_the_child() -> None:
    crew = Crew()
    crew.fail_start.add("c")
    sup = Supervisor([crew.spec("a"), crew.spec("b"), crew.spec("c"), crew.spec("d")])
    with pytest.raises(StartError) as info:
        await sup.start()
    assert info.value.child == "c"
    assert isinstance(info.value.__cause__, Boom)
    assert crew.stops() == ["c", "b", "a"]  # c failed itself; then b, a in reverse
    assert "d" not in crew.starts()
    assert sup.state == "stopped"


@run
async def test_child_ending_before_ready_is_a_failed_start() -> None:
    async def quitter(ctx: ChildContext) -> None:
        return None

    with pytest.raises(StartError, match="ended before it was ready") as info:
        await Supervisor([ChildSpec("quitter", quitter)]).start()
    assert info.value.child == "quitter"


@run
async def test_child_not_ready_in_time_is_a_failed_start() -> None:
    crew = Crew()
    crew.block_ready.add("b")
    sup = Supervisor([crew.spec("a"), crew.spec("b", ready_timeout=0.05)])
    with pytest.raises(StartError) as info:
        await sup.start()
    assert info.value.child == "b"
    assert isinstance(info.value.__cause__, TimeoutError)
    assert crew.stops() == ["b", "a"]


@run
async def test_spawned_readiness_needs_no_ready_call() -> None:
    async def silent(ctx: ChildContext) -> None:
        await asyncio.Event().wait()

    async with Supervisor([ChildSpec("silent", silent, readiness="spawned")]) as sup:
        assert sup.count_children().active == 1


@run
async def test_stop_during_start_aborts_the_start_and_stops_what_started() -> None:
    crew = Crew()
    crew.block_ready.add("b")
    sup = Supervisor([crew.spec("a"), crew.spec("b", ready_timeout=None)])
    starting = asyncio.create_task(sup.start())
    await until(lambda: crew.starts() == ["a", "b"])
    await sup.stop()
    with pytest.raises(StartError, match="stopping"):
        await starting
    assert crew.stops() == ["b", "a"]
    assert sup.state == "stopped"


@run
async def test_a_stopped_supervisor_starts_again_from_its_specs() -> None:
    crew = Crew()
    sup = Supervisor([crew.spec("a")])
    async with sup:
        pass
    async with sup:
        assert sup.count_children().active == 1
    assert crew.starts() == ["a", "a"]


@run
async def test_starting_a_running_supervisor_is_refused() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("a")]) as sup:
        with pytest.raises(SupervisorError) as info:
            await sup.start()
        assert info.value.reason == "supervisor_running"  # type: ignore[attr-defined]


@run
async def test_stop_is_idempotent_and_wait_returns_after_a_clean_stop() -> None:
    crew = Crew()
    sup = Supervisor([crew.spec("a")])
    await sup.start()
    await asyncio.gather(sup.stop(), sup.stop())
    await sup.stop()
    await sup.wait()
    assert crew.stops() == ["a"]


def test_bad_specs_and_options_are_refused_before_anything_starts() -> None:
    async def worker(ctx: ChildContext) -> None:
        ctx.ready()

    with pytest.raises(ValueError, match="duplicate"):
        Supervisor([ChildSpec("a", worker), ChildSpec("a", worker)])
    with pytest.raises(ValueError, match="strategy"):
        Supervisor([], strategy="one_for_some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_restarts"):
        Supervisor([], max_restarts=-1)
    with pytest.raises(ValueError, match="restart"):
        ChildSpec("a", worker, restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shutdown_timeout"):
        ChildSpec("a", worker, shutdown_timeout=-1)
    with pytest.raises(ValueError, match="non-empty"):
        ChildSpec("", worker)
    with pytest.raises(TypeError, match="cannot be started"):
        ChildSpec("a", ["ok", 3], kind="process")  # type: ignore[list-item]
    with pytest.raises(TypeError, match="cannot tell"):
        ChildSpec("a", 42)  # type: ignore[arg-type]


def test_kind_is_guessed_from_start() -> None:
    async def coro(ctx: ChildContext) -> None: ...

    def plain(ctx: ChildContext) -> None: ...

    assert ChildSpec("a", coro).kind == "task"
    assert ChildSpec("a", plain).kind == "thread"
    assert ChildSpec("a", ["true"]).kind == "process"
    assert ChildSpec("a", Supervisor([])).kind == "supervisor"
    assert ChildSpec("a", plain, kind="process").kind == "process"


@run
async def test_failed_start_of_a_nested_supervisor_names_both_children() -> None:
    crew = Crew()
    crew.fail_start.add("leaf")
    inner = Supervisor([crew.spec("ok"), crew.spec("leaf")], name="inner")
    outer = Supervisor([crew.spec("first"), ChildSpec("inner", inner)])
    with pytest.raises(StartError) as info:
        await outer.start()
    assert info.value.child == "inner"
    cause = info.value.__cause__
    assert isinstance(cause, StartError)
    assert cause.child == "leaf"
    assert isinstance(cause.__cause__, Boom)
    assert crew.stops() == ["leaf", "ok", "first"]
    assert (inner.state, outer.state) == ("stopped", "stopped")


@run
async def test_a_child_may_stop_its_own_supervisor() -> None:
    crew = Crew()
    holder: list[Supervisor] = []

    async def stopper(ctx: ChildContext) -> None:
        ctx.ready()
        await gate.wait()
        await holder[0].stop()  # cancels this very task midway: the stop goes on

    gate = asyncio.Event()
    sup = Supervisor([crew.spec("a"), ChildSpec("stopper", stopper), crew.spec("c")])
    holder.append(sup)
    await sup.start()
    gate.set()
    await sup.wait()
    assert sup.state == "stopped"
    assert crew.stops() == ["c", "a"]
