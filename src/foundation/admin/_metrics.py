"""``GET /metrics``: the Prometheus exposition, written by ``prometheus-client``."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from foundation.admin._status import LOCAL
from foundation.errors import Closed, FoundationError
from foundation.metrics import REGISTRY_STATES, _committed_stage, _label_value

if TYPE_CHECKING:
    from foundation.admin._state import AdminState, RegistryLike
    from foundation.flags import FeatureFlags, Migration

__all__ = ["exposition"]

log = logging.getLogger("foundation.admin")


class _AdminCollector(Collector):
    """What the admin server sees itself: flag switches, migration stage, live entries."""

    def __init__(self, state: AdminState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # Each part read apart: one closed or unreachable leaves the others' gauges.
        state = self._state
        flags, migration, registry = state.flags, state.migration, state.registry
        if flags is not None:
            yield from _guarded("flags", lambda: _flag_families(flags))
        if migration is not None:
            yield from _guarded("migration stage", lambda: _migration_families(migration))
        if registry is not None:
            yield from _guarded("registry", lambda: _registry_families(registry))
        yield from _status_families(state.status.report())
        g = GaugeMetricFamily(
            "foundation_admin_dead_agents", "agents in the recently-dead ring", labels=[]
        )
        g.add_metric([], float(len(state.hub.dead)))
        yield g


def _guarded(what: str, read: Callable[[], list[GaugeMetricFamily]]) -> list[GaugeMetricFamily]:
    """``read()``'s families; none if that part cannot be read.

    Closed (the application shut it down, the admin server still up): no
    samples and one DEBUG line, no traceback -- nothing is wrong and every
    scrape would say it again. Unreachable (any other ``FoundationError``):
    a WARNING with the traceback, as it is news.
    """
    try:
        return read()
    except Closed:
        log.debug("admin: the served %s is closed: /metrics leaves out its gauges", what)
    except FoundationError:
        log.warning("admin: %s unavailable for /metrics", what, exc_info=True)
    return []


def _flag_families(flags: FeatureFlags) -> list[GaugeMetricFamily]:
    """The switch, percentage and split gauges of every flag."""
    switch = GaugeMetricFamily(
        "foundation_admin_flag_enabled",
        "1 if the flag's switch is on (its effective state)",
        labels=["flag"],
    )
    percentage = GaugeMetricFamily(
        "foundation_admin_flag_percentage",
        "the flag's rollout percentage (absent: none set)",
        labels=["flag"],
    )
    split = GaugeMetricFamily(
        "foundation_admin_flag_split",
        "a typed flag's split: the variant's share in percent (absent: no split)",
        labels=["flag", "variant"],
    )
    for name in flags.names:
        s = flags.state(name)
        switch.add_metric([name], 1.0 if s.switch else 0.0)
        if s.percentage is not None:
            percentage.add_metric([name], s.percentage)
        for variant, share in (s.split or {}).items():
            split.add_metric([name, variant], share)
    return [switch, percentage, split]


def _migration_families(migration: Migration) -> list[GaugeMetricFamily]:
    """The committed stage gauge (read without evaluating the plan flags: a scrape
    is not counted in ``foundation_flag_evaluations_total``)."""
    stage = _committed_stage(migration)
    g = GaugeMetricFamily("foundation_admin_migration_stage", "committed stage", labels=["plan"])
    g.add_metric([migration.plan.name], float(stage))
    return [g]


def _registry_families(registry: RegistryLike) -> list[GaugeMetricFamily]:
    """Live entries by node and kind."""
    entries = registry.list_all()
    from foundation.admin._json import _kind

    counts = collections.Counter((e.node, _kind(e.agent)) for e in entries)
    # A node name that is not valid Unicode (a custom registry's) is escaped as
    # foundation.metrics writes it: one such name must not fail the whole scrape.
    labelled: collections.Counter[tuple[str, str]] = collections.Counter()
    for (node, kind), n in counts.items():
        labelled[_label_value(node), kind] += n
    g = GaugeMetricFamily(
        "foundation_admin_registry_entries",
        "live registry entries seen by the admin server",
        labels=["node", "kind"],
    )
    for (node, kind), n in sorted(labelled.items()):
        g.add_metric([node, kind], float(n))
    return [g]


def _status_families(report: Mapping[str, Any]) -> Iterator[GaugeMetricFamily]:
    """Connection state of the registry and the flag store, and ``degraded`` overall."""
    registry, store = report.get("registry"), report.get("flag_store")
    if registry is not None and registry["state"] != LOCAL:
        yield from _registry_state_families(registry)
    if store is not None and store["state"] != LOCAL:
        yield from _store_families(store)
    degraded = GaugeMetricFamily(
        "foundation_admin_degraded",
        "1 while a component the admin server serves is degraded (see GET /api/status)",
        labels=[],
    )
    degraded.add_metric([], 1.0 if report["degraded"] else 0.0)
    yield degraded


def _registry_state_families(registry: Mapping[str, Any]) -> Iterator[GaugeMetricFamily]:
    """``..._registry_connected`` and the state set ``..._registry_state{state}``."""
    connected = GaugeMetricFamily(
        "foundation_admin_registry_connected",
        "1 while the served registry's state is connected, 0 in any other state",
        labels=[],
    )
    connected.add_metric([], 1.0 if registry["connected"] else 0.0)
    yield connected
    states = GaugeMetricFamily(
        "foundation_admin_registry_state",
        "the served registry's connection state: 1 for the current state, 0 for the others",
        labels=["state"],
    )
    for name in dict.fromkeys((*REGISTRY_STATES, registry["state"])):
        states.add_metric([name], 1.0 if name == registry["state"] else 0.0)
    yield states


def _store_families(store: Mapping[str, Any]) -> Iterator[GaugeMetricFamily]:
    """``..._flag_store_stale`` and ``..._flag_store_pending`` of a store with ``status()``."""
    stale = GaugeMetricFamily(
        "foundation_admin_flag_store_stale",
        "1 while the flag store is not connected (it answers from its node copy)",
        labels=[],
    )
    stale.add_metric([], 0.0 if store["state"] in ("connected", "pending") else 1.0)
    yield stale
    pending = GaugeMetricFamily(
        "foundation_admin_flag_store_pending",
        "kill switches applied on this node and not yet committed to the store",
        labels=[],
    )
    pending.add_metric([], float(store["pending"]))
    yield pending


def exposition(state: AdminState) -> tuple[bytes, str]:
    """The text exposition of the admin collector plus ``foundation.metrics`` if given."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_AdminCollector(state))
    if state.metrics is not None:
        from foundation.metrics import prometheus_collector

        registry.register(prometheus_collector(state.metrics))
    return generate_latest(registry), CONTENT_TYPE_LATEST
