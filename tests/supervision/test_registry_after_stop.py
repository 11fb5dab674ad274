"""A stopped child's registry entry is gone when the stop returns, for every
kind: a process's too, whose death the registry's own monitor sees on another
thread (its pidfd thread) some time after the supervisor saw the exit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from foundation.registry import MemoryRegistry
from foundation.supervision import ChildContext, ChildSpec, DynamicSupervisor, Supervisor
from tests.supervision._support import run, until

# Enough rounds that a lag of the registry's monitor shows in almost every run
# of the test: without the supervisor's own unregister, about one stop in three
# returned with the stopped process still registered.
ROUNDS = 30

SLEEPER = ["sleep", "3600"]  # cheap to spawn: many rounds


@pytest.fixture
def registry() -> Iterator[MemoryRegistry]:
    with MemoryRegistry() as reg:
        yield reg


async def task_child(ctx: ChildContext) -> None:
    ctx.ready()
    await asyncio.Event().wait()


def test_a_stopped_process_child_is_unregistered_when_stop_returns(
    registry: MemoryRegistry,
) -> None:
    @run
    async def scenario() -> None:
        stale = []
        for n in range(ROUNDS):
            sup = Supervisor(
                [ChildSpec("proc", SLEEPER), ChildSpec("task", task_child)],
                registry=registry,
            )
            await sup.start()
            assert registry.lookup("proc") is not None
            await sup.stop()
            if registry.lookup("proc") is not None or registry.lookup("task") is not None:
                stale.append(n)
        assert stale == []

    scenario()


def test_a_terminated_process_child_is_unregistered_when_terminate_child_returns(
    registry: MemoryRegistry,
) -> None:
    @run
    async def scenario() -> None:
        stale = []
        async with Supervisor([ChildSpec("proc", SLEEPER)], registry=registry) as sup:
            for n in range(ROUNDS):
                if n:
                    await sup.restart_child("proc")
                entry = registry.lookup("proc")
                assert entry is not None
                assert entry.agent is sup.which_child("proc").handle
                await sup.terminate_child("proc")
                if registry.lookup("proc") is not None:
                    stale.append(n)
        assert stale == []

    scenario()


def test_a_dynamic_process_child_is_unregistered_when_stop_or_terminate_returns(
    registry: MemoryRegistry,
) -> None:
    @run
    async def scenario() -> None:
        stale = []
        for n in range(ROUNDS):
            sup = DynamicSupervisor(ChildSpec("proc", SLEEPER), registry=registry)
            await sup.start()
            await sup.start_child(id="a")
            await sup.start_child(id="b")
            assert registry.lookup("a") is not None
            assert registry.lookup("b") is not None
            await sup.terminate_child("a")
            if registry.lookup("a") is not None:
                stale.append(("terminate", n))
            await sup.stop()
            if registry.lookup("b") is not None:
                stale.append(("stop", n))
        assert stale == []

    scenario()


def test_a_restarted_process_child_keeps_its_new_registration(
    registry: MemoryRegistry,
) -> None:
    """The stopped run's unregister never removes the next run's registration
    (one_for_all: the sibling is stopped and started again in one round)."""

    @run
    async def scenario() -> None:
        specs = [ChildSpec("proc", SLEEPER), ChildSpec("task", task_child)]
        async with Supervisor(
            specs, strategy="one_for_all", registry=registry, max_restarts=100
        ) as sup:
            for _ in range(5):
                old = sup.which_child("proc").handle
                task = sup.which_child("task").handle
                assert isinstance(task, asyncio.Task)
                task.cancel()  # a crash of the sibling: proc is stopped and restarted
                await until(
                    lambda old=old: (
                        sup.which_child("proc").handle not in (None, old)
                        and sup.which_child("task").status == "running"
                    )
                )
                entry = registry.lookup("proc")
                assert entry is not None
                assert entry.agent is sup.which_child("proc").handle

    scenario()
