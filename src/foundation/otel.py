"""OpenTelemetry bridge (the ``otel`` extra: ``opentelemetry-api`` only).

``install()`` creates Foundation's instruments on the meter ``"foundation"``
of a meter provider (the global one by default) and feeds them from a
:class:`foundation.metrics.Metrics`. Configure an SDK (readers, exporters)
as usual; without one, the API's no-op provider drops everything and the
hot paths are untouched: flag evaluations are counted only once a reader has
collected (an SDK calls the observable callbacks), or from the start when
``meter_provider`` is an SDK's.

Instruments (OpenTelemetry naming: dotted, no ``_total``, UCUM units; the
counters and gauges are observable ones):

===============================================  =========  ================  ===================
name                                             kind       unit              attributes
===============================================  =========  ================  ===================
``foundation.flag.evaluations``                  counter    ``{evaluation}``  flag (never actors)
``foundation.flag.changes``                      counter    ``{change}``      flag
``foundation.flag.store.stale``                  gauge      ``1``             namespace
``foundation.flag.store.read_only``              gauge      ``1``             namespace
``foundation.flag.store.copy_in_memory``         gauge      ``1``             namespace
``foundation.flag.store.events``                 counter    ``{event}``       event
``foundation.migration.stage``                   gauge      ``{stage}``       plan
``foundation.migration.steps``                   counter    ``{step}``        plan, action
``foundation.registry.entries``                  gauge      ``{entry}``       registry
``foundation.registry.connected``                gauge      ``1``             registry
``foundation.registry.state``                    gauge      ``1``             registry, state
``foundation.registry.operations``               counter    ``{operation}``   registry, operation
``foundation.registry.deaths``                   counter    ``{death}``       registry, reason
``foundation.registry.divergences``              counter    ``{divergence}``  (none)
``foundation.supervisor.restarts``               counter    ``{restart}``     supervisor, child
``foundation.supervisor.exits``                  counter    ``{exit}``        supervisor, reason
``foundation.supervisor.registration_degraded``  gauge      ``{child}``       supervisor
``foundation.redis.round_trip``                  histogram  ``s``             outcome (ok, error)
===============================================  =========  ================  ===================

These are the families of :mod:`foundation.metrics` under OpenTelemetry
names, with the same numbers and attributes (a ``DynamicSupervisor``'s
template children count under the template's id: see there).
``foundation.redis.round_trip`` advises the buckets of ``foundation_redis_round_trip_seconds``
(:data:`~foundation.metrics.REDIS_ROUND_TRIP_BUCKETS`, 0.5 ms to 5 s; an
advisory of ``opentelemetry-api`` 1.30+, which a View overrides). One collection reads the
:class:`~foundation.metrics.Metrics` once: every instrument of an export
shows the same instant, and the stores and registries are read once.

Registries are objects, not events: pass each one to
``bridge.watch_registry(registry, name=...)``. Flag stores need nothing:
``foundation.flag.store.stale``, ``.read_only`` and ``.copy_in_memory`` are
read at each collection from every open ``RedisFlagStore`` of the process (a
closed one has no sample; see :mod:`foundation.metrics`); ``.stale`` also from
every open ``SQLiteFlagStore``, its ``namespace`` the file's absolute path.

Example:
    >>> from opentelemetry.metrics import NoOpMeterProvider
    >>> bridge = install(NoOpMeterProvider())
    >>> bridge
    <OTelBridge installed on meter 'foundation'>
    >>> bridge.uninstall()
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Final

from foundation import telemetry
from foundation._redis_conn import ROUND_TRIP_EVENT as REDIS_ROUND_TRIP_EVENT
from foundation.metrics import REDIS_ROUND_TRIP_BUCKETS, Metrics, Sample

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

    from foundation.registry import Registry

__all__ = ["METER_NAME", "OTelBridge", "install"]

METER_NAME: Final = "foundation"

# (OTel name, instrument kind, unit, description, Metrics family it reads)
_OBSERVED: Final = (
    ("foundation.flag.evaluations", "counter", "{evaluation}",
     "FeatureFlags.enabled() answers per flag", "foundation_flag_evaluations_total"),
    ("foundation.flag.changes", "counter", "{change}",
     "Flag changes applied", "foundation_flag_changes_total"),
    ("foundation.flag.store.stale", "gauge", "1",
     "1 while a flag store is stale (serving its node copy, or its file replaced)",
     "foundation_flag_store_stale"),
    ("foundation.flag.store.read_only", "gauge", "1",
     "1 while a flag store's Redis is a read-only replica", "foundation_flag_store_read_only"),
    ("foundation.flag.store.copy_in_memory", "gauge", "1",
     "1 while a flag store's node copy lives in memory (its file failed)",
     "foundation_flag_store_copy_in_memory"),
    ("foundation.flag.store.events", "counter", "{event}",
     "Flag store outage events (stale, restored, pending_*, in_sync, ...)",
     "foundation_flag_store_events_total"),
    ("foundation.migration.stage", "gauge", "{stage}",
     "Committed stage of a migration plan", "foundation_migration_stage"),
    ("foundation.migration.steps", "counter", "{step}",
     "Migration steps by action", "foundation_migration_steps_total"),
    ("foundation.registry.entries", "gauge", "{entry}",
     "Live entries in a watched registry", "foundation_registry_entries"),
    ("foundation.registry.connected", "gauge", "1",
     "1 while a watched registry is connected", "foundation_registry_connected"),
    ("foundation.registry.state", "gauge", "1",
     "A watched registry's connection state: 1 for the current state, 0 for the others",
     "foundation_registry_state"),
    ("foundation.registry.operations", "counter", "{operation}",
     "Registry changes by operation", "foundation_registry_operations_total"),
    ("foundation.registry.deaths", "counter", "{death}",
     "Entries removed because their agent died, by Down reason",
     "foundation_registry_deaths_total"),
    ("foundation.registry.divergences", "counter", "{divergence}",
     "Writes a MigratingRegistry could not mirror to its other backend",
     "foundation_registry_divergences_total"),
    ("foundation.supervisor.restarts", "counter", "{restart}",
     "Children restarted by a supervisor", "foundation_supervisor_restarts_total"),
    ("foundation.supervisor.exits", "counter", "{exit}",
     "Supervised children that exited, by reason", "foundation_supervisor_child_exits_total"),
    ("foundation.supervisor.registration_degraded", "gauge", "{child}",
     "Children running unregistered while their registry is unreachable",
     "foundation_supervisor_registration_degraded"),
)  # fmt: skip

ROUND_TRIP_INSTRUMENT: Final = "foundation.redis.round_trip"


class OTelBridge:
    """Foundation's instruments on one meter; ``uninstall()`` stops feeding them.

    ``metrics`` is the :class:`~foundation.metrics.Metrics` the instruments
    read (installed by the bridge unless you passed your own).
    """

    def __init__(self, provider: MeterProvider, metrics: Metrics, *, owns_metrics: bool) -> None:
        self.metrics = metrics
        self._owns_metrics = owns_metrics
        self._lock = threading.Lock()
        self._installed = True
        self._cycle = _Cycle()
        meter = provider.get_meter(METER_NAME, _version())
        for name, kind, unit, description, family in _OBSERVED:
            callback = self._observe(family)
            if kind == "counter":
                meter.create_observable_counter(name, [callback], unit, description)
            else:
                meter.create_observable_gauge(name, [callback], unit, description)
        self._histogram = meter.create_histogram(
            ROUND_TRIP_INSTRUMENT,
            "s",
            "Duration of Redis round trips, by outcome",
            # The buckets of foundation_redis_round_trip_seconds (the SDK's default
            # ones, 0 to 10000, would put every round trip in the first bucket).
            explicit_bucket_boundaries_advisory=list(REDIS_ROUND_TRIP_BUCKETS),
        )
        self._detach = telemetry.attach(REDIS_ROUND_TRIP_EVENT, self._on_round_trip)
        if not type(provider).__module__.startswith("opentelemetry.metrics"):
            # An SDK's provider: readers exist, so count evaluations from now on.
            # The API's proxy/no-op providers start it at the first collection instead.
            metrics.count_evaluations()

    def watch_registry(self, registry: Registry, *, name: str = "default") -> Callable[[], None]:
        """Report ``registry`` as ``name`` (see ``Metrics.watch_registry``)."""
        return self.metrics.watch_registry(registry, name=name)

    def uninstall(self) -> None:
        """Stop feeding the instruments (OpenTelemetry cannot remove them). Idempotent."""
        with self._lock:
            if not self._installed:
                return
            self._installed = False
        self._detach()
        if self._owns_metrics:
            self.metrics.uninstall()

    def _observe(self, family: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        from opentelemetry.metrics import Observation

        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            if not self._installed:
                return []
            # Only an SDK calls this: the first call starts evaluation counting.
            return [Observation(s.value, dict(s.labels)) for s in self._samples(family)]

        return callback

    def _samples(self, family: str) -> list[Sample]:
        """``family``'s part of the one ``Metrics.samples()`` read of this collection.

        An SDK collection calls each instrument's callback once, one after the
        other, on the collecting thread: the first callback reads, the others
        take their part of that read (one instant per export, one read of the
        stores and registries). A callback whose family was already served
        from the current read starts the next collection, which reads afresh.
        """
        # Race: two collections at once (two readers or exporters; the SDK runs one
        # at a time per provider, but need not) would, with one shared read, take
        # each other's: a callback could get samples read before its collection
        # began. So the read is per thread: a collection's callbacks run on its
        # thread, one after the other. A collection cut short (an SDK timeout)
        # leaves its read behind; the next one's first callback was served from
        # it already, so it reads afresh. A read that raises (the SDK logs it) is
        # not retried by each callback, and never leaves an earlier read to serve:
        # the rest of its collection reports nothing.
        cycle = self._cycle
        if cycle.samples is None or family in cycle.served:
            cycle.samples, cycle.served = {}, {family}
            cycle.samples = self.metrics.samples()
        else:
            cycle.served.add(family)
        samples = cycle.samples.get(family, [])
        if len(cycle.served) == len(_OBSERVED):
            cycle.samples = None  # collection complete: keep nothing until the next
        return samples

    def _on_round_trip(self, _name: str, data: Mapping[str, Any]) -> None:
        outcome = "ok" if data.get("ok", True) else "error"
        self._histogram.record(float(data["seconds"]), {"outcome": outcome})

    def __repr__(self) -> str:
        state = "installed" if self._installed else "uninstalled"
        return f"<OTelBridge {state} on meter {METER_NAME!r}>"


class _Cycle(threading.local):
    """One thread's read of the current collection (see ``OTelBridge._samples``)."""

    def __init__(self) -> None:
        self.samples: dict[str, list[Sample]] | None = None
        self.served: set[str] = set()


def install(
    meter_provider: MeterProvider | None = None,
    *,
    metrics: Metrics | None = None,
    count_evaluations: bool = True,
) -> OTelBridge:
    """Create Foundation's instruments on ``meter_provider`` (default: the global one).

    ``metrics``: an existing :class:`~foundation.metrics.Metrics` to read
    (e.g. the one the admin server scrapes); by default the bridge installs
    its own and uninstalls it with ``uninstall()``. ``count_evaluations=False``
    (for a bridge-owned ``Metrics``) keeps ``FeatureFlags.enabled`` uncounted
    even with an SDK: ``foundation.flag.evaluations`` then reports nothing.

    Raises:
        ImportError: ``opentelemetry-api`` is missing (``pip install 'foundation[otel]'``).
    """
    try:
        from opentelemetry import metrics as otel_metrics
    except ImportError as exc:  # pragma: no cover - installed in dev
        raise ImportError(
            "foundation.otel needs opentelemetry-api: pip install 'foundation[otel]'"
        ) from exc
    provider = otel_metrics.get_meter_provider() if meter_provider is None else meter_provider
    owns = metrics is None
    used = Metrics(count_evaluations=count_evaluations) if metrics is None else metrics
    used.install()
    return OTelBridge(provider, used, owns_metrics=owns)


def _version() -> str:
    try:
        return version("foundation")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"
