"""Counters and gauges for operators, fed by ``foundation.telemetry`` events (stdlib only).

A :class:`Metrics` attaches to the library's telemetry events (``install()``)
and keeps plain numbers: flag changes, migration steps and stage, supervisor
restarts and exits, flag-store outages, Redis round trips. Registries have no
global events; ``watch_registry(registry)`` subscribes to one, counting its
operations and deaths (by ``Down`` reason) and reading its size when asked.
``snapshot()`` returns everything as JSON-ready data;
:func:`prometheus_collector` (the ``admin`` extra's ``prometheus-client``)
exposes the same numbers to a ``CollectorRegistry``.

Flag evaluations are the hot path (``FeatureFlags.enabled``), so they are not
events. They are counted per flag name, process-wide, only from the first
time a reader collects (``snapshot()``, a Prometheus scrape, an OpenTelemetry
SDK reading ``foundation.otel``'s instruments) until the last reader is gone:
an application that installs metrics but never reads them pays nothing on
``enabled()``. Counts never include actors.

Names (Prometheus form; ``foundation.otel`` exports every family, same
numbers, under OpenTelemetry names):

===============================================  =========  =====================
``foundation_flag_evaluations_total``            counter    flag
``foundation_flag_changes_total``                counter    flag
``foundation_flag_store_stale``                  gauge      namespace or file (1 = stale)
``foundation_flag_store_read_only``              gauge      namespace (1 = read-only)
``foundation_flag_store_copy_in_memory``         gauge      namespace (1 = in memory)
``foundation_flag_store_events_total``           counter    event
``foundation_migration_stage``                   gauge      plan
``foundation_migration_steps_total``             counter    plan, action
``foundation_registry_entries``                  gauge      registry
``foundation_registry_connected``                gauge      registry (1 = connected)
``foundation_registry_state``                    gauge      registry, state
``foundation_registry_operations_total``         counter    registry, operation
``foundation_registry_deaths_total``             counter    registry, reason
``foundation_registry_divergences_total``        counter    (none)
``foundation_supervisor_restarts_total``         counter    supervisor, child
``foundation_supervisor_child_exits_total``      counter    supervisor, reason
``foundation_supervisor_registration_degraded``  gauge      supervisor
``foundation_redis_round_trip_seconds``          histogram  outcome (ok, error)
===============================================  =========  =====================

``foundation_registry_entries`` counts the registry's local mirror: while
its backend is unreachable it shows the last state seen, so read it with
``foundation_registry_connected`` (1 while its state is ``connected``, 0 in
any other) and ``foundation_registry_state`` (one sample per state of
:data:`REGISTRY_STATES`, 1 for the current one). Both are read at each
collection from ``status()`` (``RedisRegistry``), ``connected``
(``RedisObserver``) or, for a ``MigratingRegistry``, the worse of its two
backends; an in-process registry has no connection and no sample.

``foundation_flag_store_copy_in_memory`` is 1 while a ``RedisFlagStore``'s
node copy lives in memory because its file failed (not durable: a restart
loses it, pending kill switches included), 0 once it is written back.
``foundation_flag_store_stale`` and ``foundation_flag_store_read_only`` are
``status().stale`` and ``status().read_only``. All three are read at each
collection from every open ``RedisFlagStore`` of the process (1 if any of a
namespace's says so; no I/O), never kept from events: a ``Metrics`` installed
during an outage shows it, and a closed store's namespace has no sample.
``foundation_flag_store_stale`` also has a sample per open ``SQLiteFlagStore``,
its ``namespace`` label the file's absolute path: 1 once the file was deleted
or replaced while in use (``stale``: every write refused until the store is
reopened), else 0; the other two have none for it.

The supervisor families are labelled by a place in the supervision tree, not
by a child instance, so their series are bounded by the tree's shape however
many children a service starts: a child a ``DynamicSupervisor`` made from its
template (``"conn-17"``, with or without ``id=``) counts under the template's id
(``child="conn"``), and a supervisor nested under such a child under its path
with that id (``supervisor="app/pool/conn"``, while its name, in logs and
events, is ``"app/pool/conn-17"``). A child given as a whole ``ChildSpec`` (a
static one, ``start_child(spec)``, a ``DynamicSupervisor`` without template)
counts under its own id: keep such ids to a fixed set. The supervisor events
carry both (``child`` and ``supervisor`` the names; ``template`` and
``supervisor_label`` the labels, see ``foundation.telemetry``).

A label value that is not valid Unicode (a lone surrogate: a file name that is
not UTF-8, as ``os.fsdecode`` decodes it; a supervisor or child id) is written
with each lone surrogate as its backslash escape (``\\udcff`` for the byte
0xff), in every read (``samples()``, ``snapshot()``, ``value()``, the
collector): one series never fails a scrape.

Example:
    >>> from foundation.flags import FeatureFlags, Flag
    >>> metrics = Metrics()
    >>> metrics.install()
    >>> flags = FeatureFlags([Flag("checkout_v2")])
    >>> _ = metrics.snapshot()              # the first read starts evaluation counting
    >>> flags.enabled("checkout_v2"), flags.enabled("checkout_v2")
    (False, False)
    >>> flags.enable("checkout_v2", by="ana", reason="launch")
    >>> metrics.value("foundation_flag_evaluations_total", flag="checkout_v2")
    2.0
    >>> metrics.value("foundation_flag_changes_total", flag="checkout_v2")
    1.0
    >>> metrics.uninstall()
    >>> flags.close()
"""

from __future__ import annotations

import bisect
import functools
import itertools
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from foundation import _fork, telemetry
from foundation._redis_conn import ROUND_TRIP_EVENT as REDIS_ROUND_TRIP_EVENT
from foundation.errors import Closed, FoundationError

if TYPE_CHECKING:
    from foundation.registry import Registry, RegistryEvent

__all__ = [
    "REDIS_ROUND_TRIP_BUCKETS",
    "REGISTRY_STATES",
    "ConnectionState",
    "Metrics",
    "Sample",
    "connection_state",
    "evaluation_counts",
    "prometheus_collector",
]

Kind = Literal["counter", "gauge", "histogram"]

REDIS_ROUND_TRIP_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
"""Upper bounds (seconds) of ``foundation_redis_round_trip_seconds``; ``+Inf`` is implied."""

REGISTRY_STATES: Final = (
    "connected", "degraded", "disconnected", "recovering", "lease_lost", "closed",
)  # fmt: skip
"""The connection states a registry reports (``RedisStatus.state``; see docs/redis.md)."""


@dataclass(frozen=True, slots=True)
class _Family:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]


_FAMILIES: Final = {
    f.name: f
    for f in (
        _Family("foundation_flag_evaluations_total", "counter",
                "FeatureFlags.enabled() answers, per flag (counted while a reader collects)",
                ("flag",)),
        _Family("foundation_flag_changes_total", "counter",
                "Flag changes applied (local writes and changes from other processes)",
                ("flag",)),
        _Family("foundation_flag_store_stale", "gauge",
                "1 while a flag store is stale: a RedisFlagStore serving its node copy "
                "(Redis unreachable), a SQLiteFlagStore whose file was deleted or replaced",
                ("namespace",)),
        _Family("foundation_flag_store_read_only", "gauge",
                "1 while a flag store's Redis is a read-only replica (flag writes fail)",
                ("namespace",)),
        _Family("foundation_flag_store_copy_in_memory", "gauge",
                "1 while a flag store's node copy lives in memory because its file failed "
                "(not durable until written back)", ("namespace",)),
        _Family("foundation_flag_store_events_total", "counter",
                "Flag store outage events (stale, restored, pending_*, in_sync, ...)",
                ("event",)),
        _Family("foundation_migration_stage", "gauge",
                "Committed stage of a migration plan (0 = nothing enabled)", ("plan",)),
        _Family("foundation_migration_steps_total", "counter",
                "Migration steps: advance, rollback, emergency_rollback, auto_rollback",
                ("plan", "action")),
        _Family("foundation_registry_entries", "gauge",
                "Live entries in a watched registry", ("registry",)),
        _Family("foundation_registry_connected", "gauge",
                "1 while a watched registry's state is connected, 0 in any other state "
                "(absent for in-process registries)", ("registry",)),
        _Family("foundation_registry_state", "gauge",
                "A watched registry's connection state: 1 for the current state, 0 for the others",
                ("registry", "state")),
        _Family("foundation_registry_operations_total", "counter",
                "Registry changes: registered, updated, unregistered", ("registry", "operation")),
        _Family("foundation_registry_deaths_total", "counter",
                "Entries removed because their agent died, by Down reason", ("registry", "reason")),
        _Family("foundation_registry_divergences_total", "counter",
                "Writes a MigratingRegistry could not mirror to its other backend", ()),
        _Family("foundation_supervisor_restarts_total", "counter",
                "Children restarted by a supervisor", ("supervisor", "child")),
        _Family("foundation_supervisor_child_exits_total", "counter",
                "Supervised children that exited, by reason", ("supervisor", "reason")),
        _Family("foundation_supervisor_registration_degraded", "gauge",
                "Children running unregistered while their registry is unreachable",
                ("supervisor",)),
        _Family("foundation_redis_round_trip_seconds", "histogram",
                "Duration of Redis round trips, by outcome", ("outcome",)),
    )
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of a metric family: its label values and number.

    For a histogram, ``value`` is the count of observations and ``buckets``
    holds ``(upper_bound, cumulative_count)`` pairs (the last bound is
    ``inf``) and ``sum`` the total.
    """

    labels: Mapping[str, str]
    value: float
    buckets: tuple[tuple[float, int], ...] = ()
    sum: float = 0.0


# ---------------------------------------------------------------- evaluations


class _EvaluationCounter:
    """Counts ``FeatureFlags.enabled`` answers per flag while at least one reader wants them.

    Counting swaps ``FeatureFlags.enabled`` for a wrapper (class attribute, so
    every instance) and swaps it back when the last user stops: with no user,
    ``enabled()`` is exactly the uncounted method. Counts are cumulative for
    the life of the process (a counter never goes down).
    """

    _METHOD: Final = "enabled"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._original: Any = None
        # One itertools.count per flag name: next() and the defaultdict's
        # insertion run in C without releasing the GIL, so concurrent readers
        # of one flag never lose an increment (a `+= 1` on an int could).
        self._counts: defaultdict[str, itertools.count[int]] = defaultdict(itertools.count)

    def start(self) -> None:
        """Add one user; the first one starts counting."""
        from foundation.flags._flags import FeatureFlags

        with self._lock:
            self._users += 1
            if self._users > 1:
                return
            original = FeatureFlags.__dict__[self._METHOD]
            counts = self._counts

            def enabled(self: FeatureFlags, name: str, actor: Any = None) -> bool:
                result: bool = original(self, name, actor)
                next(counts[name])  # only after a real answer: unknown names are not counted
                return result

            functools.update_wrapper(enabled, original)
            self._original = original
            # A reader racing this swap calls the old or the new function: both answer the same.
            setattr(FeatureFlags, self._METHOD, enabled)

    def stop(self) -> None:
        """Remove one user; the last one puts the uncounted method back."""
        from foundation.flags._flags import FeatureFlags

        with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0 and self._original is not None:
                setattr(FeatureFlags, self._METHOD, self._original)
                self._original = None

    @property
    def active(self) -> bool:
        return self._users > 0

    def counts(self) -> dict[str, int]:
        # repr(itertools.count(n)) is "count(n)": n is the number of next() calls made.
        return {name: int(repr(c)[6:-1]) for name, c in list(self._counts.items())}


_evaluations = _EvaluationCounter()
_fork.unlock_after_fork(_evaluations._lock)  # (a reader starting to count may hold it at a fork)


def evaluation_counts() -> dict[str, int]:
    """Flag name -> ``enabled()`` answers counted so far in this process (never actors).

    Counting runs only while a reader of :class:`Metrics` or ``foundation.otel``
    has collected at least once; otherwise this stays ``{}`` or frozen.
    """
    return _evaluations.counts()


# ---------------------------------------------------------------- histogram


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def sample(self, labels: Mapping[str, str]) -> Sample:
        cumulative = list(itertools.accumulate(self.counts))
        bounds = (*self.bounds, float("inf"))
        return Sample(
            labels, float(cumulative[-1]), tuple(zip(bounds, cumulative, strict=True)), self.total
        )


# ---------------------------------------------------------------- Metrics


class Metrics:
    """Operator metrics for this process, fed by telemetry events once ``install()``-ed.

    Every update takes one short lock (events are writes, restarts, outages:
    never a hot path); reads copy under it. ``install()`` attaches once (a
    second call does nothing); ``uninstall()`` detaches, unwatches every
    registry and stops evaluation counting for this reader.
    ``count_evaluations=False`` never counts flag evaluations (the
    ``enabled()`` hot path stays untouched even while readers collect; the
    evaluations family is then empty).

    Example:
        >>> metrics = Metrics()
        >>> metrics.install()
        >>> from foundation import telemetry
        >>> telemetry.emit("migration.advanced", {"plan": "default", "event": None})
        >>> metrics.value("foundation_migration_steps_total", plan="default", action="advance")
        1.0
        >>> metrics.uninstall()
    """

    def __init__(self, *, count_evaluations: bool = True) -> None:
        self._lock = threading.Lock()
        self._evaluations_wanted = count_evaluations
        self._values: dict[str, dict[tuple[str, ...], float]] = {n: {} for n in _FAMILIES}
        self._round_trips: dict[str, _Histogram] = {}
        self._degraded: dict[str, set[Hashable]] = {}
        self._detach: list[Callable[[], None]] = []
        self._registries: dict[str, tuple[Registry, Callable[[], None]]] = {}
        self._migrations: dict[str, Any] = {}  # plan name -> Migration, read at collection
        self._installed = False
        self._counting = False

    # ------------------------------------------------------------ lifecycle

    def install(self) -> None:
        """Attach to the library's telemetry events (idempotent)."""
        with self._lock:
            if self._installed:
                return
            self._installed = True
            handlers: dict[str, Callable[[str, Mapping[str, Any]], None]] = {
                "flag.changed": self._on_flag_changed,
                "migration.advanced": self._on_migration,
                "migration.rolled_back": self._on_migration,
                "migration.emergency_rollback": self._on_migration,
                "migration.auto_rollback": self._on_migration,
                "registry.divergence": self._on_divergence,
                "supervisor.child_restarted": self._on_restart,
                "supervisor.child_exited": self._on_exit,
                "foundation.supervision.registration_degraded": self._on_degraded,
                "foundation.supervision.registration_restored": self._on_degraded,
                "foundation.supervision.registration_abandoned": self._on_degraded,
                REDIS_ROUND_TRIP_EVENT: self._on_round_trip,
            }
            for what in (
                "stale",
                "started_from_cache",
                "restored",
                "pending_recorded",
                "pending_committed",
                "pending_superseded",
                "in_sync",
                "read_only",
                "writable",
            ):
                handlers[f"foundation.flags.{what}"] = self._on_store_event
            self._detach = [telemetry.attach(name, fn) for name, fn in handlers.items()]

    def uninstall(self) -> None:
        """Detach from telemetry and every watched registry; stop counting evaluations."""
        with self._lock:
            detach, self._detach = self._detach, []
            watched, self._registries = list(self._registries.values()), {}
            self._migrations = {}
            counting, self._counting = self._counting, False
            self._installed = False
            if counting:
                _evaluations.stop()  # under the lock: see count_evaluations()
        for fn in detach:
            fn()
        for _, unsubscribe in watched:
            unsubscribe()

    def count_evaluations(self) -> None:
        """Start counting flag evaluations now (reads start it anyway; idempotent).

        Does nothing when constructed with ``count_evaluations=False``, or while
        not installed: counting swaps ``FeatureFlags.enabled`` for every
        instance, so only an installed ``Metrics`` (undone by ``uninstall()``)
        may start it.
        """
        with self._lock:
            if self._counting or not self._evaluations_wanted or not self._installed:
                return
            self._counting = True
            # Under the lock: a racing uninstall() must not stop() before this
            # start(), which would leave FeatureFlags.enabled wrapped for good.
            _evaluations.start()

    def watch_registry(self, registry: Registry, *, name: str = "default") -> Callable[[], None]:
        """Count ``registry``'s operations and deaths and report its size as ``name``.

        Returns a callable that stops watching (``uninstall()`` stops them all).

        Raises:
            ValueError: another registry is already watched under ``name``.
            Closed: ``registry`` is closed.
        """
        with self._lock:
            if name in self._registries:
                raise ValueError(f"a registry is already watched as {name!r}")

            def on_event(event: RegistryEvent) -> None:
                self._on_registry_event(name, event)

            unsubscribe = registry.subscribe(on_event)
            self._registries[name] = (registry, unsubscribe)

        def unwatch() -> None:
            with self._lock:
                held = self._registries.get(name)
                if held is None or held[1] is not unsubscribe:
                    return
                del self._registries[name]
            unsubscribe()

        return unwatch

    def watch_migration(self, migration: Any) -> None:
        """Set ``foundation_migration_stage`` from the stage committed in the
        migration's store now, and again at each collection: a stage another
        process committed shows at the next scrape (this process's own steps
        show at once, from their events). Only the stage is read: no flag is
        evaluated, so a scrape never counts in ``foundation_flag_evaluations_total``.

        Raises:
            BackendUnavailable: the store cannot be read.
        """
        plan, stage = migration.plan.name, _committed_stage(migration)
        with self._lock:
            self._migrations[plan] = migration
        self._set("foundation_migration_stage", (plan,), float(stage))

    def _read_stages(self) -> None:
        """``foundation_migration_stage`` of every watched migration, read from its
        store now. A store that cannot answer (an outage) leaves the last value; a
        closed one ends the watch (its last value stays)."""
        with self._lock:
            watched = list(self._migrations.items())
        for plan, migration in watched:
            try:
                stage = _committed_stage(migration)
            except Closed:
                with self._lock:
                    if self._migrations.get(plan) is migration:
                        del self._migrations[plan]
                continue
            except FoundationError:
                continue
            self._set("foundation_migration_stage", (plan,), float(stage))

    # ------------------------------------------------------------ reads

    def samples(self) -> dict[str, list[Sample]]:
        """Every family's current samples (starts evaluation counting on first call)."""
        self.count_evaluations()
        # Outside our lock: status() reads the store (see _store_gauges below).
        self._read_stages()
        with self._lock:
            values = {n: dict(v) for n, v in self._values.items()}
            histograms = {k: h.sample({"outcome": k}) for k, h in self._round_trips.items()}
            registries = dict(self._registries)
        values["foundation_flag_evaluations_total"] = (
            {(flag,): float(n) for flag, n in _evaluations.counts().items()}
            if self._evaluations_wanted
            else {}
        )
        values["foundation_registry_entries"] = _registry_sizes(registries)
        # Read here, at collection, outside our lock: never from an event emitted
        # under a store's lock (status() takes the node copy's lock: a deadlock).
        # From the stores, not their events: a Metrics installed after a store went
        # stale shows it, and a store closed while stale leaves no sample behind.
        values.update(_store_gauges())
        connected, states = _registry_states(registries)
        values["foundation_registry_connected"] = connected
        values["foundation_registry_state"] = states
        out: dict[str, list[Sample]] = {}
        for name, family in _FAMILIES.items():
            if family.kind == "histogram":
                out[name] = [histograms[k] for k in sorted(histograms)]
            else:
                out[name] = [
                    Sample(dict(zip(family.labels, map(_label_value, key), strict=True)), v)
                    for key, v in sorted(values[name].items())
                ]
        return out

    def snapshot(self) -> dict[str, Any]:
        """Every family as JSON-ready data: ``{name: {"type", "help", "samples": [...]}}``.

        Each sample is ``{"labels": {...}, "value": float}`` (histograms add
        ``"buckets": [[le, count], ...]`` and ``"sum"``).
        """
        out: dict[str, Any] = {}
        for name, samples in self.samples().items():
            family = _FAMILIES[name]
            rows: list[dict[str, Any]] = []
            for s in samples:
                row: dict[str, Any] = {"labels": dict(s.labels), "value": s.value}
                if family.kind == "histogram":
                    row["buckets"] = [[le, n] for le, n in s.buckets]
                    row["sum"] = s.sum
                rows.append(row)
            out[name] = {"type": family.kind, "help": family.help, "samples": rows}
        return out

    def value(self, name: str, **labels: str) -> float:
        """The value of one sample (0.0 if never set); a histogram's is its count.

        Raises:
            KeyError: ``name`` is not one of this module's families.
        """
        if name not in _FAMILIES:
            raise KeyError(name)
        wanted = {k: _label_value(v) for k, v in labels.items()}  # as samples() writes them
        for s in self.samples()[name]:
            if dict(s.labels) == wanted:
                return s.value
        return 0.0

    # ------------------------------------------------------------ event handlers

    def _add(self, name: str, key: tuple[str, ...], amount: float = 1.0) -> None:
        with self._lock:
            table = self._values[name]
            table[key] = table.get(key, 0.0) + amount

    def _set(self, name: str, key: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._values[name][key] = value

    def _on_flag_changed(self, _name: str, data: Mapping[str, Any]) -> None:
        self._add("foundation_flag_changes_total", (str(data["flag"]),))

    def _on_migration(self, name: str, data: Mapping[str, Any]) -> None:
        action = name.removeprefix("migration.")
        action = {"advanced": "advance", "rolled_back": "rollback"}.get(action, action)
        plan = str(data.get("plan"))
        self._add("foundation_migration_steps_total", (plan, action))
        event = data.get("event")
        to_stage = getattr(event, "to_stage", None)
        if isinstance(to_stage, int):
            self._set("foundation_migration_stage", (plan,), float(to_stage))

    def _on_divergence(self, _name: str, _data: Mapping[str, Any]) -> None:
        self._add("foundation_registry_divergences_total", ())

    def _on_restart(self, _name: str, data: Mapping[str, Any]) -> None:
        key = (_supervisor_label(data), _child_label(data))
        self._add("foundation_supervisor_restarts_total", key)

    def _on_exit(self, _name: str, data: Mapping[str, Any]) -> None:
        key = (_supervisor_label(data), str(data.get("reason")))
        self._add("foundation_supervisor_child_exits_total", key)

    def _on_degraded(self, name: str, data: Mapping[str, Any]) -> None:
        supervisor = _supervisor_label(data)
        # Counted by name: two nested supervisors made from one template share a label.
        child = (data.get("supervisor"), data.get("child"))
        with self._lock:
            children = self._degraded.setdefault(supervisor, set())
            if name.endswith("degraded"):
                children.add(child)
            else:
                children.discard(child)
            table = self._values["foundation_supervisor_registration_degraded"]
            table[(supervisor,)] = float(len(children))

    def _on_store_event(self, name: str, data: Mapping[str, Any]) -> None:
        what = name.removeprefix("foundation.flags.")
        with self._lock:
            events = self._values["foundation_flag_store_events_total"]
            events[(what,)] = events.get((what,), 0.0) + 1.0

    def _on_round_trip(self, _name: str, data: Mapping[str, Any]) -> None:
        outcome = "ok" if data.get("ok", True) else "error"
        seconds = float(data["seconds"])
        with self._lock:
            hist = self._round_trips.get(outcome)
            if hist is None:
                hist = self._round_trips[outcome] = _Histogram(REDIS_ROUND_TRIP_BUCKETS)
            hist.observe(seconds)

    def _on_registry_event(self, registry: str, event: RegistryEvent) -> None:
        self._add("foundation_registry_operations_total", (registry, event.kind))
        if event.reason == "down":
            reason = event.down.reason if event.down is not None else "unknown"
            self._add("foundation_registry_deaths_total", (registry, reason))

    def __repr__(self) -> str:
        state = "installed" if self._installed else "not installed"
        return f"<Metrics {state}, {len(self._registries)} registries watched>"


def _committed_stage(migration: Any) -> int:
    """The stage committed in ``migration``'s store, as ``status().stage`` reads it,
    without ``status()``'s answers of the plan flags: those are ``enabled()``
    calls, which count as evaluations while a reader collects (each scrape added
    one per plan flag). ``Closed`` once its flags are closed, as ``status()``."""
    migration.flags._check_open()  # a store you passed outlives the flags
    stage: int = migration.flags.store.migration_stage(migration.plan.name)
    return stage


def _supervisor_label(data: Mapping[str, Any]) -> str:
    """A supervisor event's ``supervisor`` label: its ``supervisor_label`` (the name,
    with a dynamic child's template id in place of its instance id), else its name."""
    label = data.get("supervisor_label")
    return str(data.get("supervisor") if label is None else label)


def _child_label(data: Mapping[str, Any]) -> str:
    """A supervisor event's ``child`` label: its ``template`` (the id of the
    DynamicSupervisor template it was made from), else its ``child`` id."""
    template = data.get("template")
    return str(data.get("child") if template is None else template)


# ---------------------------------------------------------------- Prometheus


def _registry_sizes(
    registries: dict[str, tuple[Registry, Callable[[], None]]],
) -> dict[tuple[str, ...], float]:
    """The entry count of each watched registry that can answer, keyed by ``(name,)``."""
    entries: dict[tuple[str, ...], float] = {}
    for reg_name, (registry, _) in registries.items():
        try:
            entries[(reg_name,)] = float(registry.count())
        except (Closed, FoundationError):
            continue  # a closed or unreachable registry has no size to report
    return entries


_STORE_GAUGES: Final = (
    "foundation_flag_store_stale",
    "foundation_flag_store_read_only",
    "foundation_flag_store_copy_in_memory",
)


def _store_gauges() -> dict[str, dict[tuple[str, ...], float]]:
    """The flag store gauges (:data:`_STORE_GAUGES`): per namespace, 1 if an open
    ``RedisFlagStore`` is stale / on a read-only Redis / keeps its copy in memory, else 0;
    and ``foundation_flag_store_stale`` per open ``SQLiteFlagStore``, labelled with its
    file's absolute path (1 once its file was deleted or replaced while in use)."""
    gauges: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in _STORE_GAUGES}
    if "foundation.flags._redis_store" in sys.modules:  # else no RedisFlagStore here
        from foundation.flags._redis_store import store_gauges

        for namespace, flags in store_gauges().items():
            for name, flag in zip(_STORE_GAUGES, flags, strict=True):
                gauges[name][(namespace,)] = 1.0 if flag else 0.0
    stale = gauges["foundation_flag_store_stale"]
    for path, flag in _sqlite_stale().items():
        stale[(path,)] = max(stale.get((path,), 0.0), 1.0 if flag else 0.0)
    return gauges


def _sqlite_stale() -> dict[str, bool]:
    """Per file, whether an open ``SQLiteFlagStore`` on it is stale (none imported for this)."""
    if "foundation.flags._sqlite_store" not in sys.modules:
        return {}
    from foundation.flags._sqlite_store import stale_files

    return stale_files()


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """A registry's connection as it reports it: ``state`` (one of
    :data:`REGISTRY_STATES`), ``last_error`` (the last backend failure, if
    known) and ``stale`` (reads may be behind the backend)."""

    state: str
    last_error: str | None
    stale: bool

    @property
    def connected(self) -> bool:
        return self.state == "connected"


def connection_state(registry: object) -> ConnectionState | None:
    """The connection state ``registry`` reports, or None if it has none (in-process).

    Reads ``status()`` (``RedisRegistry`` and ``RedisObserver``: ``state``,
    ``last_error``, ``stale``), else a boolean ``connected``; a
    ``MigratingRegistry`` (``legacy`` and ``target``) reports the first of its
    backends that is not connected, else a connected one (the target only,
    once ``finish()`` retired the legacy one).
    Never raises: a closed registry is ``"closed"``.

    Example:
        >>> from foundation import MemoryRegistry
        >>> with MemoryRegistry() as registry:
        ...     print(connection_state(registry))
        None
    """
    legacy, target = getattr(registry, "legacy", None), getattr(registry, "target", None)
    if legacy is not None and target is not None:
        # After finish() the legacy backend is retired (closed): only the target counts.
        retired = getattr(registry, "finished", False) is True
        return _worst((target,) if retired else (legacy, target))
    status = getattr(registry, "status", None)
    report = _reported_state(status) if callable(status) else None
    if report is not None:
        return report
    connected = getattr(registry, "connected", None)
    if isinstance(connected, bool):
        return ConnectionState(
            "connected" if connected else "disconnected", None, stale=not connected
        )
    return None


def _worst(backends: Sequence[object]) -> ConnectionState | None:
    """The first backend's state that is not connected, else the first one's (None: none)."""
    states = [s for s in map(connection_state, backends) if s is not None]
    down = [s for s in states if not s.connected]
    return down[0] if down else (states[0] if states else None)


def _reported_state(status: Callable[[], object]) -> ConnectionState | None:
    """The state a ``status()`` reports (None: it has no ``state`` field)."""
    try:
        report = status()
    except Closed:
        return ConnectionState("closed", None, True)
    state = getattr(report, "state", None)
    if not isinstance(state, str):
        return None
    error = getattr(report, "last_error", None)
    stale = bool(getattr(report, "stale", state != "connected"))
    return ConnectionState(state, error if isinstance(error, str) else None, stale)


def _registry_states(
    registries: dict[str, tuple[Registry, Callable[[], None]]],
) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], float]]:
    """``foundation_registry_connected`` and ``foundation_registry_state`` values."""
    connected: dict[tuple[str, ...], float] = {}
    states: dict[tuple[str, ...], float] = {}
    for reg_name, (registry, _) in registries.items():
        report = connection_state(registry)
        if report is None:
            continue  # an in-process registry: no connection to report
        connected[(reg_name,)] = 1.0 if report.connected else 0.0
        for state in dict.fromkeys((*REGISTRY_STATES, report.state)):
            states[(reg_name, state)] = 1.0 if state == report.state else 0.0
    return connected, states


def prometheus_collector(metrics: Metrics) -> Any:
    """A ``prometheus_client`` collector exposing ``metrics`` (needs ``prometheus-client``).

    Register it in a ``CollectorRegistry`` and serve
    ``prometheus_client.generate_latest(registry)``. Each scrape reads
    ``metrics.samples()``.

    Raises:
        ImportError: ``prometheus-client`` is missing (``pip install 'foundation[admin]'``).

    Example:
        >>> from prometheus_client import CollectorRegistry, generate_latest
        >>> metrics = Metrics()
        >>> registry = CollectorRegistry()
        >>> registry.register(prometheus_collector(metrics))
        >>> b"# TYPE foundation_flag_changes_total counter" in generate_latest(registry)
        True
    """
    try:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.registry import Collector
    except ImportError as exc:  # pragma: no cover - installed in dev
        raise ImportError(
            "foundation.metrics.prometheus_collector needs prometheus-client: "
            "pip install 'foundation[admin]'"
        ) from exc

    class FoundationCollector(Collector):
        """Foundation's metrics in the Prometheus data model."""

        def describe(self) -> list[Any]:
            # Empty: registering must not collect (a collection starts evaluation counting).
            return []

        def collect(self) -> Iterator[Any]:
            for name, samples in metrics.samples().items():
                family = _FAMILIES[name]
                labels = list(family.labels)
                if family.kind == "counter":
                    base = name.removesuffix("_total")
                    c = CounterMetricFamily(base, family.help, labels=labels)
                    for s in samples:
                        c.add_metric([s.labels[k] for k in labels], s.value)
                    yield c
                elif family.kind == "gauge":
                    g = GaugeMetricFamily(name, family.help, labels=labels)
                    for s in samples:
                        g.add_metric([s.labels[k] for k in labels], s.value)
                    yield g
                else:
                    h = HistogramMetricFamily(name, family.help, labels=labels)
                    for s in samples:
                        buckets = [(_le(le), float(n)) for le, n in s.buckets]
                        h.add_metric([s.labels[k] for k in labels], buckets, s.sum)
                    yield h

    return FoundationCollector()


def _label_value(value: object) -> str:
    """``value`` as a label value that any exporter can encode: a string that is not
    valid Unicode (a lone surrogate, as ``os.fsdecode`` makes of a non-UTF-8 file
    name) gets ``\\udcff`` escapes in their place. Without this, one such value made
    the whole Prometheus text exposition raise ``UnicodeEncodeError``.

    >>> _label_value("flags.db"), _label_value("caf\\udce9.db")
    ('flags.db', 'caf\\\\udce9.db')
    """
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
