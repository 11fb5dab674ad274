"""A DynamicSupervisor's template children are labelled by the template, not the instance.

Was: ``foundation_supervisor_restarts_total{supervisor, child}`` took the
instance id (``"conn-<n>"``, a fresh serial per ``start_child``), and a
supervisor nested under a template child took its instance's path as its
``supervisor`` label (``"pool/tree-<n>"``): a service starting children without
end kept a series per child ever started. Now the events carry the template id
(``template``) and the supervisor's label (``supervisor_label``), and metrics
label by those: one series per place in the tree. Logs and events keep ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from foundation import telemetry
from foundation.metrics import Metrics, prometheus_collector
from foundation.supervision import ChildContext, ChildSpec, DynamicSupervisor, Supervisor
from tests.faults._subprocess import run_scenario
from tests.supervision._support import EVENTS, Boom, run, until
from tests.supervision.test_degraded import COMMON

RESTARTS = "foundation_supervisor_restarts_total"
EXITS = "foundation_supervisor_child_exits_total"


async def crash_once(ctx: ChildContext, *_args: Any) -> None:
    """Crashes on its first run, serves once restarted."""
    ctx.ready()
    if ctx.attempt == 0:
        raise Boom("first run")
    await asyncio.Event().wait()


def restarted_once(sup: Supervisor, n: int) -> bool:
    """All ``n`` children of ``sup`` run again after one restart (their event is out)."""
    rows = sup.which_children()
    return len(rows) == n and all(c.restarts == 1 and c.status == "running" for c in rows)


def series(text: str, family: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(family + "{")]


def label_sets(metrics: Metrics, family: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels.values()): s.value for s in metrics.samples()[family]}


@run
async def test_thirty_crashing_template_instances_make_one_restarts_series() -> None:
    metrics = Metrics()
    metrics.install()
    registry = CollectorRegistry()
    registry.register(prometheus_collector(metrics))
    seen: list[Mapping[str, Any]] = []
    detach = telemetry.attach("supervisor.child_restarted", lambda _n, d: seen.append(d))
    try:
        pool = DynamicSupervisor(
            ChildSpec("conn", crash_once), name="pool", max_restarts=1000, max_seconds=60
        )
        async with pool:
            for n in range(30):
                await pool.start_child(n)
            await until(lambda: restarted_once(pool, 30))
            text = generate_latest(registry).decode()
        assert series(text, RESTARTS) == [
            'foundation_supervisor_restarts_total{child="conn",supervisor="pool"} 30.0'
        ]
        assert series(text, EXITS) == [
            'foundation_supervisor_child_exits_total{reason="exception",supervisor="pool"} 30.0'
        ]
        # Events and logs keep the instance: child is its id, template the template's.
        assert sorted(d["child"] for d in seen) == sorted(f"conn-{n}" for n in range(1, 31))
        assert {(d["template"], d["supervisor"], d["supervisor_label"]) for d in seen} == {
            ("conn", "pool", "pool")
        }
    finally:
        detach()
        metrics.uninstall()


@run
async def test_explicit_ids_one_off_specs_and_plain_supervisors() -> None:
    metrics = Metrics()
    metrics.install()
    seen: list[Mapping[str, Any]] = []
    detach = telemetry.attach("supervisor.child_restarted", lambda _n, d: seen.append(d))
    try:
        templated = DynamicSupervisor(ChildSpec("conn", crash_once), name="t", max_restarts=10)
        bare = DynamicSupervisor(name="bare", max_restarts=10)
        plain = Supervisor([ChildSpec("w", crash_once)], name="plain", max_restarts=10)
        async with templated, bare, plain:
            await templated.start_child(id="conn-eu")  # id= from the template: the template
            await templated.start_child()
            await bare.start_child(ChildSpec("job-a", crash_once))  # no template: its id
            await until(
                lambda: (
                    restarted_once(templated, 2)
                    and restarted_once(bare, 1)
                    and restarted_once(plain, 1)
                )
            )
        assert label_sets(metrics, RESTARTS) == {
            ("t", "conn"): 2.0,
            ("bare", "job-a"): 1.0,
            ("plain", "w"): 1.0,
        }
        by_child = {d["child"]: (d["template"], d["supervisor_label"]) for d in seen}
        assert by_child == {
            "conn-eu": ("conn", "t"),
            "conn-1": ("conn", "t"),
            "job-a": (None, "bare"),
            "w": (None, "plain"),
        }
    finally:
        detach()
        metrics.uninstall()


def crashing_tree() -> Supervisor:
    return Supervisor([ChildSpec("w", crash_once)], max_restarts=10, max_seconds=60)


@run
async def test_supervisors_nested_under_a_template_share_the_template_label() -> None:
    metrics = Metrics()
    metrics.install()
    try:
        pool = DynamicSupervisor(
            ChildSpec("tree", crashing_tree, kind="supervisor"), name="root", max_restarts=10
        )
        async with pool:
            trees = [(await pool.start_child()).handle for _ in range(5)]
            await until(lambda: all(restarted_once(t, 1) for t in trees))
            # Names stay unique (logs, task names); only the label is shared.
            assert sorted(t.name for t in trees) == [f"root/tree-{n}" for n in range(1, 6)]
        assert label_sets(metrics, RESTARTS) == {("root/tree", "w"): 5.0}
        exits = label_sets(metrics, EXITS)
        assert exits[("root/tree", "exception")] == 5.0
        assert {s for s, _ in exits} == {"root", "root/tree"}
    finally:
        metrics.uninstall()


@run
async def test_the_otel_instrument_has_one_point_per_template() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from foundation.otel import install
    from tests.test_otel import collect, points

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    bridge = install(provider)
    try:
        pool = DynamicSupervisor(ChildSpec("conn", crash_once), name="otel-pool", max_restarts=50)
        async with pool:
            for _ in range(10):
                await pool.start_child()
            await until(lambda: restarted_once(pool, 10))
        restarts = points(collect(reader)["foundation.supervisor.restarts"])
        mine = {k: p.value for k, p in restarts.items() if ("supervisor", "otel-pool") in k}
        assert mine == {(("child", "conn"), ("supervisor", "otel-pool")): 10}
    finally:
        bridge.uninstall()
        provider.shutdown()


DEGRADED_TEMPLATE = """
from foundation.metrics import Metrics
from foundation.supervision import DynamicSupervisor

GAUGE = "foundation_supervisor_registration_degraded"

def gauge(metrics):
    return {s.labels["supervisor"]: s.value for s in metrics.samples()[GAUGE]}

async def main():
    metrics = Metrics()
    metrics.install()
    with RedisServer() as server:
        registry = RedisRegistry(server.url, namespace="dyn-degraded", op_timeout=0.5)
        server.kill()  # refused at once: every registration is degraded

        def tree():
            return Supervisor([spec("a")], registry=registry)

        try:
            pool = DynamicSupervisor(ChildSpec("tree", tree, kind="supervisor"), name="pool")
            await pool.start()
            trees = [(await pool.start_child()).id for _ in range(5)]
            await until(lambda: gauge(metrics) == {"pool/tree": 5.0}, "five degraded")
            for id in trees[:2]:
                await pool.terminate_child(id)  # their degraded runs end: abandoned
            await until(lambda: gauge(metrics) == {"pool/tree": 3.0}, "three left")
            await pool.stop()
            await until(lambda: gauge(metrics) == {"pool/tree": 0.0}, "none left")
        finally:
            registry.close()
            metrics.uninstall()
    print("OK")

asyncio.run(main())
"""


def test_degraded_children_of_template_trees_share_one_gauge_series() -> None:
    run_scenario(COMMON + DEGRADED_TEMPLATE)


async def serve(ctx: ChildContext, *_args: Any) -> None:
    ctx.ready()
    await asyncio.Event().wait()


def expected_naming(supervisor: str) -> tuple[str, str | None]:
    """(supervisor_label, template) of an event of ``supervisor`` in the tree below."""
    if supervisor == "root":
        return "root", "shard"
    shard, _, rest = supervisor.partition("/")[2].partition("/")
    assert shard.startswith("shard-")
    return ("root/shard", None) if not rest else ("root/shard/inner", "leaf")


@run
async def test_every_event_of_a_two_level_template_tree_carries_both_namings() -> None:
    """Started, exited, restarted and intensity_exceeded, at three depths, through
    nested supervisors that give up and are restarted: each event has the four
    fields, the names distinct per instance and the labels the template path."""
    budget = {"crashes": 2}  # the first two "w" runs crash: each shard gives up once

    async def w(ctx: ChildContext) -> None:
        ctx.ready()
        if budget["crashes"] > 0:
            budget["crashes"] -= 1
            raise Boom("w")
        await asyncio.Event().wait()

    def shard() -> Supervisor:
        inner = ChildSpec(
            "inner", lambda: DynamicSupervisor(ChildSpec("leaf", serve)), kind="supervisor"
        )
        return Supervisor([ChildSpec("w", w), inner], max_restarts=0)

    metrics = Metrics()
    metrics.install()
    seen: list[tuple[str, Mapping[str, Any]]] = []
    detach = [telemetry.attach(n, lambda n, d: seen.append((n, dict(d)))) for n in EVENTS]
    try:
        root = DynamicSupervisor(
            ChildSpec("shard", shard, kind="supervisor"), name="root", max_restarts=10
        )
        async with root:
            await root.start_child()
            await root.start_child(id="shard-eu")
            await until(lambda: budget["crashes"] == 0 and restarted_once(root, 2))
            for row in root.which_children():
                inner = next(c for c in row.handle.which_children() if c.id == "inner")
                await inner.handle.start_child()
        kinds = {n for n, _ in seen}
        assert kinds == set(EVENTS)
        for name, data in seen:
            assert (data["supervisor_label"], data["template"]) == expected_naming(
                data["supervisor"]
            ), (name, data)
        supervisors = {d["supervisor"] for _, d in seen}
        assert supervisors == {
            "root",
            *(f"root/{s}{i}" for s in ("shard-1", "shard-eu") for i in ("", "/inner")),
        }
        assert label_sets(metrics, RESTARTS) == {("root", "shard"): 2.0}
        assert ("root/shard", "exception") in label_sets(metrics, EXITS)
    finally:
        for d in detach:
            d()
        metrics.uninstall()


ONE_RESTORED = """
import itertools
from foundation.metrics import Metrics
from foundation.supervision import DynamicSupervisor

GAUGE = "foundation_supervisor_registration_degraded"
SEEN = []
for _event in ("registration_degraded", "registration_restored", "registration_abandoned"):
    telemetry.attach("foundation.supervision." + _event, lambda n, d: SEEN.append(
        (n.rsplit("_", 1)[1], d["supervisor"], d["supervisor_label"], d["template"])))

def gauge(metrics):
    return {s.labels["supervisor"]: s.value for s in metrics.samples()[GAUGE]}

async def main():
    metrics = Metrics()
    metrics.install()
    with RedisServer() as east, RedisServer() as west:
        regs = [RedisRegistry(s.url, namespace="one-restored", op_timeout=0.5)
                for s in (east, west)]
        east.kill()
        west.kill()
        serial = itertools.count()

        def tree():  # two trees of one template, each over its own (dead) registry
            n = next(serial)
            a = ChildSpec("a", worker, args=(f"a{n}",), register_as=f"a{n}")
            return Supervisor([a], registry=regs[n])

        try:
            pool = DynamicSupervisor(ChildSpec("tree", tree, kind="supervisor"), name="pool")
            await pool.start()
            first, second = [(await pool.start_child()).id for _ in range(2)]
            await until(lambda: gauge(metrics) == {"pool/tree": 2.0}, "both degraded")
            east.start()  # the first tree's registry is back: one of the two restored
            await until(lambda: ("restored", f"pool/{first}") in
                        [(e, s) for e, s, _, _ in SEEN], "first restored")
            assert gauge(metrics) == {"pool/tree": 1.0}, gauge(metrics)
            await pool.terminate_child(second)  # the other one's run ends: abandoned
            await until(lambda: gauge(metrics) == {"pool/tree": 0.0}, "none left")
            assert sorted(SEEN) == [
                ("abandoned", f"pool/{second}", "pool/tree", None),
                ("degraded", f"pool/{first}", "pool/tree", None),
                ("degraded", f"pool/{second}", "pool/tree", None),
                ("restored", f"pool/{first}", "pool/tree", None),
            ], SEEN
            await pool.stop()
        finally:
            for reg in regs:
                reg.close()
            metrics.uninstall()
    print("OK")

asyncio.run(main())
"""


def test_one_of_two_degraded_trees_of_a_template_restored_leaves_one() -> None:
    """Counted per tree under the shared label: the restore of one tree's
    child leaves the other's counted, until its run ends too."""
    run_scenario(COMMON + ONE_RESTORED)
