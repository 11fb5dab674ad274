"""Issue 10's six OTP-parity fixes, each test named after what it shows.

OTP references: ``supervisor.erl`` (``terminate_dynamic_children``,
``restart_multiple_children``, ``handle_start_child``) and Elixir's
``{:via, Registry, name}`` registration.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from foundation.errors import AlreadyRegistered, StartError, SupervisorError
from foundation.registry import MemoryRegistry
from foundation.supervision import (
    Backoff,
    ChildContext,
    ChildSpec,
    DynamicSupervisor,
    Supervisor,
)
from tests.supervision._support import Crew, run, until

# How long a child stopped one at a time would wait for siblings that are never
# asked: long enough to be unmistakable, never reached when the stop is concurrent.
SIBLING_WAIT = 5.0


def reason(info: pytest.ExceptionInfo[SupervisorError]) -> str | None:
    return info.value.reason


# ---------------------------------------------------------------------------- 1
@run
async def test_dynamic_supervisor_stop_asks_every_child_before_any_finishes() -> None:
    """Three children that each hold their stop until all three were asked: a
    stop made one child at a time could never satisfy any of them."""
    asked: list[str] = []
    lock = threading.Lock()
    all_asked = threading.Event()
    saw_all: dict[str, bool] = {}

    def note(id: str) -> None:
        with lock:
            asked.append(id)
            if len(asked) == 3:
                all_asked.set()

    async def task_child(ctx: ChildContext) -> None:
        ctx.ready()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            note(ctx.id)
            saw_all[ctx.id] = await asyncio.to_thread(all_asked.wait, SIBLING_WAIT)
            raise

    def thread_child(ctx: ChildContext) -> None:
        ctx.ready()
        ctx.stopping.wait()
        note(ctx.id)
        saw_all[ctx.id] = all_asked.wait(SIBLING_WAIT)

    sup = DynamicSupervisor()
    await sup.start()
    for spec in (
        ChildSpec("t1", task_child, shutdown_timeout=30),
        ChildSpec("th", thread_child, shutdown_timeout=30),
        ChildSpec("t2", task_child, shutdown_timeout=30),
    ):
        await sup.start_child(spec)
    await sup.stop()
    assert sorted(asked) == ["t1", "t2", "th"]
    assert saw_all == {"t1": True, "th": True, "t2": True}
    assert sup.state == "stopped"


# ---------------------------------------------------------------------------- 2
@run
async def test_one_for_all_restarts_a_sibling_stopped_by_terminate_child() -> None:
    """OTP's restart_multiple_children starts every child that has a spec, also
    one whose pid is undefined after terminate_child."""
    crew = Crew()
    specs = [crew.spec("a"), crew.spec("b"), crew.spec("c")]
    async with Supervisor(specs, strategy="one_for_all") as sup:
        await sup.terminate_child("c")
        assert sup.which_child("c").status == "stopped"
        crew.crash("a")
        await until(lambda: [c.status for c in sup.which_children()] == ["running"] * 3)
        assert crew.starts("c") == ["c", "c"]
        assert crew.starts() == ["a", "b", "c", "a", "b", "c"]


@run
async def test_rest_for_one_restarts_a_younger_sibling_stopped_by_terminate_child() -> None:
    crew = Crew()
    specs = [crew.spec("a"), crew.spec("b"), crew.spec("c")]
    async with Supervisor(specs, strategy="rest_for_one") as sup:
        await sup.terminate_child("c")
        crew.crash("b")
        await until(lambda: sup.which_child("c").status == "running")
        assert crew.starts() == ["a", "b", "c", "b", "c"]


# ---------------------------------------------------------------------------- 3
@run
async def test_nested_supervisor_killed_from_outside_is_restarted_and_its_children_stopped() -> (
    None
):
    crew = Crew()
    trees: list[Supervisor] = []

    def tree() -> Supervisor:
        trees.append(Supervisor([crew.spec("x")], name=f"inner-{len(trees)}"))
        return trees[-1]

    async with Supervisor([ChildSpec("inner", tree, kind="supervisor")]) as outer:
        first = trees[0]
        assert outer.which_child("inner").handle is first
        worker = first.which_child("x").handle
        assert first.task is not None
        first.task.cancel()  # killed from outside
        await until(lambda: len(trees) == 2 and outer.which_child("inner").status == "running")
        # The parent saw it crash and restarted it (permanent): a fresh tree.
        assert outer.which_child("inner").handle is trees[1]
        assert outer.which_child("inner").restarts == 1
        # The killed tree stopped its own children and lists none as running.
        assert first.state == "failed"
        assert first.failure is not None
        assert first.failure.reason == "killed"
        assert worker.done()
        assert [c.status for c in first.which_children()] == ["stopped"]
        assert trees[1].which_child("x").status == "running"
        with pytest.raises(SupervisorError, match="killed"):
            await first.wait()


@run
async def test_supervisor_killed_from_outside_ends_failed_with_its_children_stopped() -> None:
    crew = Crew()
    sup = Supervisor([crew.spec("a"), crew.spec("b")])
    await sup.start()
    handles = [c.handle for c in sup.which_children()]
    assert sup.task is not None
    sup.task.cancel()
    with pytest.raises(SupervisorError) as info:
        await sup.wait()
    assert reason(info) == "killed"
    assert sup.state == "failed"
    assert all(h.done() for h in handles)
    assert crew.stops() == ["b", "a"]  # reverse start order, as any stop
    assert [c.status for c in sup.which_children()] == ["stopped", "stopped"]


# ---------------------------------------------------------------------------- 4
@run
async def test_start_child_of_a_child_whose_restart_is_pending_is_already_present() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("a")], backoff=Backoff(initial=30.0)) as sup:
        running = sup.which_child("a").handle
        with pytest.raises(SupervisorError) as info:
            await sup.start_child(crew.spec("a"))
        assert reason(info) == "already_started"
        assert info.value.handle is running  # OTP: {already_started, Pid}
        crew.crash("a")
        await until(lambda: sup.which_child("a").status == "restarting")
        with pytest.raises(SupervisorError) as info:
            await sup.start_child(crew.spec("a"))
        assert reason(info) == "already_present"
        assert info.value.handle is None


# ---------------------------------------------------------------------------- 5
@pytest.mark.parametrize("strategy", ["rest_for_one", "one_for_all"])
@pytest.mark.parametrize("backoff", [None, Backoff(initial=0.01, max_delay=0.01)])
def test_younger_siblings_of_a_terminated_failing_child_are_stopped_not_stuck(
    strategy: str, backoff: Backoff | None
) -> None:
    @run
    async def scenario() -> None:
        crew = Crew()
        specs = [crew.spec("a"), crew.spec("b"), crew.spec("c")]
        sup = Supervisor(
            specs,
            strategy=strategy,  # type: ignore[arg-type]
            max_restarts=10_000,
            max_seconds=60,
            backoff=backoff,
        )
        async with sup:
            crew.fail_start.add("a")
            crew.crash("a")
            # Its restart keeps failing (each failure one more crash, retried).
            await until(lambda: len(crew.starts("a")) >= 4)
            await sup.terminate_child("a")
            assert [(c.id, c.status) for c in sup.which_children()] == [
                ("a", "stopped"),
                ("b", "stopped"),
                ("c", "stopped"),
            ]
            # Nothing restarts them behind our back, and they are not stuck:
            # restartable and deletable, as OTP's pid-undefined children.
            starts = len(crew.starts())
            await asyncio.sleep(0.05)  # sleep-ok: gives a stray restart round the chance to run
            assert len(crew.starts()) == starts
            info = await sup.restart_child("b")
            assert info.status == "running"
            await sup.delete_child("c")
            assert [c.id for c in sup.which_children()] == ["a", "b"]

    scenario()


@run
async def test_terminating_a_child_waiting_for_its_backoff_restarts_its_elder_siblings() -> None:
    # one_for_all with backoff: b crashed, a and c were stopped for its delayed
    # restart. terminate_child(b) meanwhile: in OTP a would be running again
    # already (restart_multiple_children), c undefined. a is restarted at once,
    # c left stopped and restartable, b stopped.
    crew = Crew()
    specs = [crew.spec("a"), crew.spec("b"), crew.spec("c")]
    sup = Supervisor(specs, strategy="one_for_all", backoff=Backoff(initial=30.0))
    async with sup:
        crew.crash("b")
        await until(lambda: [c.status for c in sup.which_children()] == ["restarting"] * 3)
        await sup.terminate_child("b")
        assert [(c.id, c.status) for c in sup.which_children()] == [
            ("a", "running"),
            ("b", "stopped"),
            ("c", "stopped"),
        ]
        assert crew.starts() == ["a", "b", "c", "a"]
        assert sup.which_child("a").restarts == 1
        info = await sup.restart_child("c")
        assert info.status == "running"


# ---------------------------------------------------------------------------- 6
@run
async def test_register_as_refuses_a_name_held_by_a_live_outside_agent() -> None:
    crew = Crew()
    holder = asyncio.current_task()
    with MemoryRegistry() as registry:
        registry.register("svc", holder)
        sup = Supervisor([crew.spec("a", register_as="svc")], registry=registry)
        with pytest.raises(StartError) as info:
            await sup.start()
        assert reason(info) == "already_started"
        assert info.value.handle is holder
        assert isinstance(info.value.__cause__, AlreadyRegistered)
        assert registry.lookup("svc").agent is holder  # type: ignore[union-attr]
        # The same through start_child: refused, spec not kept.
        async with Supervisor([], registry=registry) as other:
            with pytest.raises(StartError) as info:
                await other.start_child(crew.spec("b", register_as="svc"))
            assert reason(info) == "already_started"
            assert info.value.handle is holder
            assert other.which_children() == []


@run
async def test_a_restart_replaces_the_childs_own_previous_registration() -> None:
    crew = Crew()
    with MemoryRegistry() as registry:
        specs = [crew.spec("a", register_as="svc", shutdown_timeout=0)]
        async with Supervisor(specs, registry=registry) as sup:
            first = sup.which_child("a").handle
            assert registry.lookup("svc").agent is first  # type: ignore[union-attr]
            crew.crash("a")
            await until(lambda: sup.which_child("a").restarts == 1)
            await until(lambda: sup.which_child("a").registered)
            second = sup.which_child("a").handle
            assert second is not first
            assert registry.lookup("svc").agent is second  # type: ignore[union-attr]
            # restart_child after terminate_child registers again, too.
            await sup.terminate_child("a")
            await sup.restart_child("a")
            assert registry.lookup("svc").agent is sup.which_child("a").handle  # type: ignore[union-attr]


def test_two_children_with_one_register_as_are_refused() -> None:
    crew = Crew()
    with pytest.raises(ValueError, match="duplicate register_as 'svc'"):
        Supervisor([crew.spec("a", register_as="svc"), crew.spec("b", register_as="svc")])
    # register_as equal to another child's id is the same registry key.
    with pytest.raises(ValueError, match="duplicate register_as 'a'"):
        Supervisor([crew.spec("a"), crew.spec("b", register_as="a")])

    @run
    async def through_start_child() -> None:
        async with Supervisor([crew.spec("a", register_as="svc")]) as sup:
            with pytest.raises(ValueError, match="duplicate register_as"):
                await sup.start_child(crew.spec("b", register_as="svc"))
            assert [c.id for c in sup.which_children()] == ["a"]

    through_start_child()
