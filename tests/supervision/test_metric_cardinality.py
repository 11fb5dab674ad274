"""An unnamed nested supervisor is named by its place in the tree.

Was: it got a unique default name (``supervisor-<id>``), so a factory's fresh
tree had a new name on every restart: a crash loop minted new label values in
``foundation_supervisor_restarts_total`` and ``..._child_exits_total`` without
end (24 -> 110 series in 5 s). Now it is ``"<parent>/<child id>"``, the same
on every restart.
"""

from __future__ import annotations

from foundation.metrics import Metrics
from foundation.supervision import ChildContext, ChildSpec, DynamicSupervisor, Supervisor
from tests.supervision._support import Boom, run, until

RESTARTS = "foundation_supervisor_restarts_total"
EXITS = "foundation_supervisor_child_exits_total"


async def crash(ctx: ChildContext) -> None:
    ctx.ready()
    raise Boom("crash")


async def serve(ctx: ChildContext) -> None:
    import asyncio

    ctx.ready()
    await asyncio.Event().wait()


def crashing_tree() -> Supervisor:
    # Gives up on the second crash: its parent restarts a fresh one.
    return Supervisor([ChildSpec("w", crash)], max_restarts=1, max_seconds=60)


def label_sets(metrics: Metrics, family: str) -> set[tuple[str, ...]]:
    return {tuple(s.labels.values()) for s in metrics.samples()[family]}


@run
async def test_a_crash_looping_unnamed_nested_supervisor_keeps_one_set_of_series() -> None:
    metrics = Metrics()
    metrics.install()
    try:
        root = Supervisor(
            [ChildSpec("nested", crashing_tree, kind="supervisor")],
            name="root",
            max_restarts=1000,
            max_seconds=60,
        )
        await root.start()
        try:
            await until(lambda: metrics.value(RESTARTS, supervisor="root", child="nested") >= 5)
        finally:
            await root.stop()
        assert label_sets(metrics, RESTARTS) == {("root", "nested"), ("root/nested", "w")}
        assert label_sets(metrics, EXITS) == {("root", "shutdown"), ("root/nested", "exception")}
    finally:
        metrics.uninstall()


def serving_tree(name: str | None = None) -> Supervisor:
    return Supervisor([ChildSpec("leaf", serve)], name=name)


@run
async def test_nested_names_follow_the_tree_and_explicit_names_are_kept() -> None:
    given = serving_tree()  # an instance, not a factory: named when its parent starts it
    inner = ChildSpec("inner", serving_tree, kind="supervisor")

    def workers() -> Supervisor:
        return Supervisor([inner])

    a = Supervisor(
        [
            ChildSpec("workers", workers, kind="supervisor"),
            ChildSpec("named", lambda: serving_tree("mine"), kind="supervisor"),
            ChildSpec("given", given, kind="supervisor"),
        ],
        name="a",
    )
    b = Supervisor([ChildSpec("workers", workers, kind="supervisor")], name="b")
    first, second = Supervisor(), Supervisor()
    assert first.name != second.name  # top level: a unique default each
    async with a, b:
        children = {c.id: c.handle for c in a.which_children()}
        assert children["workers"].name == "a/workers"
        assert children["workers"].which_children()[0].handle.name == "a/workers/inner"
        assert children["named"].name == "mine"
        assert given.name == "a/given"
        assert b.which_children()[0].handle.name == "b/workers"  # two parents: no collision


@run
async def test_a_restarted_nested_dynamic_supervisor_keeps_its_name() -> None:
    def pool() -> DynamicSupervisor:
        return DynamicSupervisor(ChildSpec("conn", serve))

    root = Supervisor([ChildSpec("pool", pool, kind="supervisor")], name="app")
    async with root:
        first = root.which_children()[0].handle
        assert first.name == "app/pool"
        await root.terminate_child("pool")
        await root.restart_child("pool")
        again = root.which_children()[0].handle
        assert again is not first
        assert again.name == "app/pool"
        info = await again.start_child()
        assert info.id == "conn-1"


@run
async def test_an_instance_running_elsewhere_keeps_its_name() -> None:
    import pytest

    from foundation.errors import StartError

    elsewhere = serving_tree()
    own = elsewhere.name
    async with elsewhere:  # top level: its unique default
        parent = Supervisor([ChildSpec("taken", elsewhere, kind="supervisor")], name="p")
        with pytest.raises(StartError):
            await parent.start()  # it runs already: refused, and not renamed
        assert elsewhere.name == own
    # Stopped, it may serve under another parent: it takes its place there.
    async with Supervisor([ChildSpec("reused", elsewhere, kind="supervisor")], name="q"):
        assert elsewhere.name == "q/reused"
