"""Supervised children registered by name, re-registered on every restart
(the ``{:via, Registry, ...}`` analogue)."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from foundation import telemetry
from foundation.registry import MemoryRegistry
from foundation.supervision import ChildContext, ChildSpec, DynamicSupervisor, Supervisor
from tests.supervision._support import Crew, run, until

SERVE = """
import os, signal
os.write(int(os.environ["FOUNDATION_READY_FD"]), b"1")
signal.pause()
"""


@pytest.fixture
def registry() -> Iterator[MemoryRegistry]:
    with MemoryRegistry(indexed=("zone",)) as reg:
        yield reg


def thread_child(ctx: ChildContext) -> None:
    ctx.ready()
    ctx.stopping.wait()


def test_every_kind_is_registered_with_its_live_handle(registry: MemoryRegistry) -> None:
    @run
    async def scenario() -> None:
        crew = Crew()
        nested = Supervisor([crew.spec("inner")])
        specs = [
            crew.spec("task", register_as=("agent", 1), metadata={"zone": "eu"}),
            ChildSpec("thread", thread_child),
            ChildSpec("process", [sys.executable, "-c", SERVE], readiness="explicit"),
            ChildSpec("nested", nested),
        ]
        async with Supervisor(specs, registry=registry) as sup:
            handles = {c.id: c.handle for c in sup.which_children()}
            task_entry = registry.lookup(("agent", 1))
            assert task_entry is not None
            assert task_entry.agent is handles["task"]
            assert task_entry.metadata["zone"] == "eu"
            for key in ("thread", "process"):
                entry = registry.lookup(key)
                assert entry is not None
                assert entry.agent is handles[key]
            nested_entry = registry.lookup("nested")
            assert nested_entry is not None
            assert nested_entry.agent is nested.task
            assert [e.key for e in registry.find_by_attribute("zone", "eu")] == [("agent", 1)]
        # Every run has ended: the registry dropped them all, nothing lingers.
        await until(lambda: registry.count() == 0)

    scenario()


def test_children_are_re_registered_after_a_restart_and_never_looked_up_stale(
    registry: MemoryRegistry,
) -> None:
    @run
    async def scenario() -> None:
        crew = Crew()
        stale: list[Any] = []
        seen_gap = []

        def on_exit(name: str, data: Any) -> None:
            # At the moment the supervisor handles the exit, the dead run must
            # already be gone from the registry (or replaced by a live one).
            entry = registry.lookup(data["child"])
            seen_gap.append(entry is None)
            if entry is not None and entry.agent.done():
                stale.append(entry)

        specs = [crew.spec("a"), crew.spec("b"), crew.spec("c")]
        detach = telemetry.attach("supervisor.child_exited", on_exit)
        try:
            async with Supervisor(specs, strategy="rest_for_one", registry=registry) as sup:
                before = {c.id: c.handle for c in sup.which_children()}
                crew.crash("b")
                await until(lambda: len(crew.starts()) == 5 and sup.count_children().active == 3)
                after = {c.id: c.handle for c in sup.which_children()}
                for key in ("b", "c"):
                    entry = registry.lookup(key)
                    assert entry is not None
                    assert entry.agent is after[key]
                    assert entry.agent is not before[key]
                    assert not entry.agent.done()
                entry = registry.lookup("a")
                assert entry is not None
                assert entry.agent is before["a"]  # a was not restarted
        finally:
            detach()
        assert stale == []
        assert seen_gap[:2] == [True, True]  # b crashed, c was stopped: both gone

    scenario()


def test_dynamic_children_register_under_their_own_key_with_metadata(
    registry: MemoryRegistry,
) -> None:
    @run
    async def scenario() -> None:
        async def agent(ctx: ChildContext, n: int) -> None:
            ctx.ready()
            await asyncio.Event().wait()

        async with DynamicSupervisor(ChildSpec("agent", agent), registry=registry) as sup:
            for n in range(6):
                await sup.start_child(
                    n, register_as=("agent", n), metadata={"zone": "eu" if n % 2 else "us"}
                )
            keys = sorted(e.key for e in registry.find_by_attribute("zone", "eu"))
            assert keys == [("agent", 1), ("agent", 3), ("agent", 5)]
            await sup.terminate_child("agent-2")
            await until(lambda: registry.lookup(("agent", 1)) is None)
            assert registry.count() == 5

    scenario()


def test_an_abandoned_thread_is_unregistered(registry: MemoryRegistry) -> None:
    @run
    async def scenario() -> None:
        release = threading.Event()

        def deaf(ctx: ChildContext) -> None:
            ctx.ready()
            release.wait()

        sup = Supervisor([ChildSpec("deaf", deaf, shutdown_timeout=0.05)], registry=registry)
        await sup.start()
        thread = sup.which_children()[0].handle
        assert registry.lookup("deaf") is not None
        with pytest.raises(Exception, match="abandoned"):
            await sup.stop()
        assert thread.is_alive()
        assert registry.lookup("deaf") is None
        release.set()
        thread.join(5)

    scenario()


class _LostReply(MemoryRegistry):
    """A registry whose first register lands and then reports the backend
    unavailable, as a write whose reply was lost (a timeout after sending)."""

    lost = 0

    def register(self, *args: Any, **kwargs: Any) -> None:
        super().register(*args, **kwargs)
        if not self.lost:
            self.lost += 1
            from foundation.errors import BackendUnavailable

            raise BackendUnavailable("the reply was lost")


def test_a_retry_finding_its_own_earlier_write_changes_nothing() -> None:
    """The registrar's retry meets AlreadyRegistered held by this very run: done,
    with no replace (no false 'unregistered'/'registered' pair for one agent)."""

    @run
    async def scenario() -> None:
        with _LostReply() as registry:
            events: list[tuple[str, str | None]] = []
            registry.subscribe(lambda e: events.append((e.kind, e.reason)))
            crew = Crew()
            restored = asyncio.Event()
            detach = telemetry.attach(
                "foundation.supervision.registration_restored",
                lambda name, data: restored.set(),
            )
            try:
                async with Supervisor([crew.spec("w")], registry=registry) as sup:
                    await asyncio.wait_for(restored.wait(), 30)
                    (child,) = sup.which_children()
                    entry = registry.lookup("w")
                    assert entry is not None
                    assert entry.agent is child.handle
                    assert events == [("registered", None)]
            finally:
                detach()

    scenario()
