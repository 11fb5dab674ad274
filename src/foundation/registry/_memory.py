"""``MemoryRegistry``: the shared, monitored table (the ETS analogue).

Concurrency contract
--------------------
- **Reads take no lock.** ``lookup``, ``query``, ``find_by_attribute``,
  ``list_all``, ``count``, ``in`` and ``len`` read the table and the indexes
  with single C-level dict operations (``dict.get``, ``len``, ``list(d)``,
  ``list(d.values())``), each atomic under the GIL and, on free-threaded
  CPython, under the dict's own per-object lock. No read path ever iterates a
  dict that a writer may be mutating: it snapshots first, in one C call.
- **Writes are serialised** by one lock (register, unregister,
  update_metadata, the death handler, close). A reader sees each write whole
  or not at all: a key maps to an immutable record, replaced by one store.
- The indexes are always a **superset** of the table: a writer indexes a
  record before publishing it and unindexes it after removing it. An index
  answer is re-checked against the record it names, so a concurrent writer
  can never make a query return an entry that does not match.
- **Dead agents**: the entry goes the moment the monitor reports the death
  (exactly for tasks, futures, ``spawn_thread`` threads and OS processes;
  within the manager's poll interval for foreign threads). Until then
  ``lookup`` may still return it — it is not yet *known* dead.

Events
------
Listeners run **outside** the write lock, one event at a time, in the order
the writes happened (a queue filled under the write lock). The thread that
made a change delivers its events before the call returns, unless another
thread is delivering at that moment — that thread then delivers them. A
listener may call the registry, writes included (their events follow once the
current listener returns). A listener that raises is logged under
``foundation.registry`` and passed to ``sys.unraisablehook`` if one is
installed; the write, the registry and the other listeners are unaffected.
Death events are delivered by the thread that saw the death (a monitor
thread, or the event loop for asyncio agents): keep listeners quick.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from foundation._unraisable import report_unraisable
from foundation.errors import (
    AlreadyRegistered,
    InvalidKey,
    NotAlive,
    NotRegistered,
    RegistryError,
)
from foundation.liveness import Down, Monitor, MonitorManager, is_alive
from foundation.registry._async import DirectAsyncWrites
from foundation.registry._listeners import CopyOnWriteListeners
from foundation.registry._query import compile_criteria, index_plan, matches
from foundation.registry._types import (
    Criterion,
    Entry,
    Listener,
    MetadataFilter,
    Registry,
    RegistryEvent,
    UnregisterReason,
)
from foundation.registry._validation import EMPTY_METADATA, freeze_metadata

if TYPE_CHECKING:
    from foundation.registry._query import Compiled

__all__ = ["MemoryRegistry", "MemoryRegistryStats"]

_now = time.time


@dataclass(frozen=True, slots=True)
class MemoryRegistryStats:
    """What a ``MemoryRegistry`` holds (for leak checks and dashboards).

    ``entries``: registrations; ``monitors``: active monitors it holds (one per
    entry when nothing leaks); ``index_sizes``: per indexed attribute, the
    number of (value, key) pairs; ``index_values``: distinct indexed values;
    ``unindexed``: keys whose value for the attribute is (partly) unhashable and
    is therefore checked by scanning.
    """

    entries: int
    monitors: int
    index_sizes: dict[str, int]
    index_values: dict[str, int]
    unindexed: dict[str, int]


class _Record:
    """One registration as the table holds it.

    Immutable once published, except ``entry`` (a lazily built ``Entry``; see
    ``_entry``) and, on the *origin* record, ``origin`` (cleared under the
    write lock when its agent dies while the record is not in the table).
    ``update_metadata`` publishes a new record that shares ``origin`` and
    ``monitor``: the origin record is the monitor's callback and the token that
    identifies this registration, so a death can only remove the registration it
    was reported for — never a later one under the same key.
    """

    __slots__ = (
        "agent",
        "entry",
        "key",
        "metadata",
        "monitor",
        "origin",
        "registered_at",
    )

    registry: MemoryRegistry  # a class attribute of each registry's own subclass (8 B less)

    def __init__(
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any],
        registered_at: float,
    ) -> None:
        self.key = key
        self.agent = agent
        self.metadata = metadata
        self.registered_at = registered_at
        self.entry: Entry | None = None
        # The origin record is the monitor's callback and the registration's
        # token; set to None by _on_down when its agent died while it was not
        # (or no longer) in the table: register() reads that as "died first".
        self.origin: _Record | None = self
        self.monitor: Monitor | None = None

    def __call__(self, down: Down) -> None:
        # The monitor's on_down: called once, from whichever thread saw the death.
        self.registry._on_down(self, down)


def _index_terms(value: Any) -> tuple[list[Any], bool]:
    """The hashable terms ``value`` is indexed under, and whether part of it is unhashable.

    A value is indexed as itself and, when it is a (frozen) collection, under
    each element — that is what ``eq``/``in`` need (see ``_query``).
    """
    terms: list[Any] = []
    unhashable = False
    try:
        hash(value)
        terms.append(value)
    except TypeError:
        unhashable = True
    if isinstance(value, tuple):
        for item in value:
            try:
                hash(item)
                terms.append(item)
            except TypeError:
                unhashable = True
    return terms, unhashable


class MemoryRegistry(DirectAsyncWrites, CopyOnWriteListeners, Registry):
    """The shared registry: lock-free reads, serialised writes, one monitor per entry.

    ``indexed`` names top-level metadata attributes answered from an index by
    ``find_by_attribute`` and ``query`` (``eq``/``in``): cost in proportion to
    the matches. Every element of a list-valued attribute is indexed. The
    registry owns a ``MonitorManager`` unless ``manager`` is given (then the
    caller closes it). ``node`` is written into every ``Entry``.

    See the module documentation for the concurrency contract and event order.

    Example:
        >>> import threading
        >>> from foundation import MemoryRegistry, spawn_thread
        >>> stop = threading.Event()
        >>> with MemoryRegistry(indexed=("role",)) as reg:
        ...     reg.register("a", spawn_thread(stop.wait), {"role": "io", "n": 1})
        ...     reg.register("b", spawn_thread(stop.wait), {"role": "cpu", "n": 2})
        ...     ([e.key for e in reg.find_by_attribute("role", "io")],
        ...      [e.key for e in reg.query([("n", "gt", 1)])], len(reg), "a" in reg)
        (['a'], ['b'], 2, True)
        >>> stop.set()
    """

    def __init__(
        self,
        indexed: Iterable[str] = (),
        *,
        manager: MonitorManager | None = None,
        node: str = "local",
    ) -> None:
        indexed = tuple(indexed)
        for attr in indexed:
            if not isinstance(attr, str) or not attr:
                raise TypeError(f"indexed attribute names must be non-empty str, got {attr!r}")
        self._indexed = frozenset(indexed)
        self._node = node
        self._owns_manager = manager is None
        self._manager = manager if manager is not None else MonitorManager(name="registry")
        self._lock = threading.Lock()
        # Records reach their registry through a class attribute of a subclass
        # made for this registry: one pointer less per entry.
        self._record: type[_Record] = type(
            "_Record", (_Record,), {"__slots__": (), "registry": self}
        )
        self._table: dict[Hashable, _Record] = {}
        # attr -> indexed value -> {key: None}; a dict, not a set, so that a
        # reader can snapshot a bucket with list(bucket) in one C call.
        self._index: dict[str, dict[Any, dict[Hashable, None]]] = {a: {} for a in self._indexed}
        # attr -> {key: None} for keys whose value is (partly) unhashable.
        self._unindexed: dict[str, dict[Hashable, None]] = {a: {} for a in self._indexed}
        self._listeners: tuple[Listener, ...] = ()  # copy-on-write, replaced under _lock
        self._pending: deque[RegistryEvent] = deque()
        self._dispatch_lock = threading.Lock()
        self._dispatch_owner = 0
        self._closed = False

    # ------------------------------------------------------------------ reads (no lock)

    def _entry(self, rec: _Record) -> Entry:
        """The record's ``Entry``, built on first use.

        Race: two readers may build it at once; both build equal Entries from
        the record's immutable fields, and whichever single slot store lands
        last is cached. Either result is correct.
        """
        entry = rec.entry
        if entry is None:
            entry = Entry(rec.key, rec.agent, rec.metadata, rec.registered_at, self._node)
            rec.entry = entry
        return entry

    def lookup(self, key: Hashable) -> Entry | None:
        """The entry for ``key``, or ``None``. Lock-free: one ``dict.get``.

        Raises:
            InvalidKey: ``key`` is unhashable.
        """
        try:
            rec = self._table.get(key)  # atomic C-level read; a writer swaps whole records
        except TypeError:
            raise InvalidKey(f"registry key must be hashable, got {type(key).__name__}") from None
        if rec is None:
            return None
        entry = rec.entry
        return entry if entry is not None else self._entry(rec)

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._table  # one atomic C-level dict lookup
        except TypeError:
            return False

    def count(self) -> int:
        """Number of entries, O(1) (``len`` of the table is atomic)."""
        return len(self._table)

    def list_all(self, filter: MetadataFilter | None = None) -> list[Entry]:
        """Every entry (optionally those whose metadata passes ``filter``)."""
        # Snapshot the values in one C call; never iterate the live dict.
        records = list(self._table.values())
        entry = self._entry
        if filter is None:
            return [entry(r) for r in records]
        return [entry(r) for r in records if filter(r.metadata)]

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        """Entries matching all ``criteria``; indexed ``eq``/``in`` are answered from the index.

        Raises:
            InvalidCriteria: a bad shape, unknown op or ``in`` value (before evaluating).
        """
        compiled = compile_criteria(criteria)
        entry = self._entry
        if self._indexed:
            keys = self._index_candidates(compiled)
            if keys is not None:
                table = self._table
                out: list[Entry] = []
                for key in keys:
                    # Re-check: the record may have changed since the index was read.
                    rec = table.get(key)
                    if rec is not None and matches(rec.metadata, compiled):
                        out.append(entry(rec))
                return out
        records = list(self._table.values())  # one-call snapshot, as in list_all
        return [entry(r) for r in records if matches(r.metadata, compiled)]

    def _index_candidates(self, compiled: Sequence[Compiled]) -> Iterable[Hashable] | None:
        """Keys that may match (a superset), from the smallest usable index; None: scan."""
        plans = index_plan(compiled, self._indexed)
        if not plans:
            return None
        best: list[Hashable] | None = None
        best_needs_dedup = False
        for plan in plans:
            buckets = self._index[plan.attr]
            keys: list[Hashable] = []
            for value in plan.values:
                bucket = buckets.get(value)
                if bucket:
                    keys += list(bucket)  # list(dict): one atomic C call
            unindexed = list(self._unindexed[plan.attr])  # checked like any candidate
            keys += unindexed
            if best is None or len(keys) < len(best):
                best = keys
                # A key may sit in several buckets (a collection holding several
                # of the queried values) or also be unindexed: de-duplicate then.
                best_needs_dedup = len(plan.values) > 1 or bool(unindexed)
        assert best is not None
        return dict.fromkeys(best) if best_needs_dedup else best

    # ------------------------------------------------------------------ writes (one lock)

    def register(
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Register ``agent`` under ``key``, monitored from this instant.

        Raises:
            InvalidKey: ``key`` is unhashable.
            InvalidMetadata: not a JSON-compatible mapping.
            UnsupportedAgent: the agent cannot be monitored.
            NotAlive: the agent is already dead.
            AlreadyRegistered: ``key`` holds a live agent and not ``replace``
                (``.entry`` is that entry). A key whose agent is dead but not
                yet cleaned is simply replaced.
            RegistryError: the registry is closed.
        Nothing is stored when an error is raised.
        """
        try:
            hash(key)
        except TypeError:
            raise InvalidKey(
                f"registry key must be hashable, got {type(key).__name__}: {key!r}"
            ) from None
        frozen = EMPTY_METADATA if metadata is None else freeze_metadata(metadata)
        rec = self._record(key, agent, frozen, _now())
        # monitor() raises UnsupportedAgent for unknown kinds (nothing stored yet).
        # An agent already dead is reported by monitor() synchronously, inside
        # the call, as "noproc": that is how NotAlive is detected, with no
        # separate liveness probe. Race: the agent may also die right after
        # monitor(); then rec(down) runs on another thread. Either way _on_down
        # clears rec.origin under the write lock and, finding rec unpublished,
        # stores nothing; below, under the same lock, rec.origin None means "died
        # before it was registered": NotAlive, nothing stored. A death reported
        # after publication removes the entry normally (registered, then down).
        # monitor() is called outside our lock so that a synchronous on_down
        # can take it.
        try:
            monitor = self._manager.monitor(agent, rec)
        except RuntimeError:
            if self._closed:  # our manager was closed by close()
                raise RegistryError("the registry is closed") from None
            raise
        rec.monitor = monitor
        table = self._table
        lock = self._lock
        lock.acquire()  # (explicit acquire/release: measurably cheaper than `with`)
        try:
            old = table.get(key)
            if old is None and rec.origin is rec and not self._closed:
                # The common case: a new key. Index first, then publish.
                if self._index:
                    self._index_add(key, frozen)
                table[key] = rec
                if self._listeners:
                    self._pending.append(RegistryEvent("registered", self._entry(rec)))
                error = None
            else:
                error, old = self._register_conflict(rec, old, replace)
        finally:
            lock.release()
        if error is not None:
            monitor.demonitor()
            raise error
        if old is not None and old.monitor is not None:
            # Race: if the old monitor fires meanwhile, _on_down finds another
            # origin under the key and does nothing.
            old.monitor.demonitor()
        if self._pending:
            self._dispatch()

    def _register_conflict(
        self, rec: _Record, old: _Record | None, replace: bool
    ) -> tuple[Exception | None, _Record | None]:
        """register() when the key is taken, the agent died, or the registry closed.

        Write lock held. Returns (error to raise, replaced record to demonitor).
        """
        key = rec.key
        if rec.origin is not rec:
            return NotAlive(key, rec.agent), None  # died before publication: nothing stored
        if self._closed:
            return RegistryError("the registry is closed"), None
        assert old is not None
        reason: UnregisterReason = "replaced"
        if not replace:
            # Conflict path only: a liveness check, in case the old agent died
            # but its monitor has not reported it yet.
            if is_alive(old.agent):
                return AlreadyRegistered(key, self._entry(old)), None
            reason = "down"
        # Index the new record, publish it (one store), then unindex the old one:
        # the index stays a superset of what lock-free readers can see.
        if self._index:
            self._index_add(key, rec.metadata)
        self._table[key] = rec
        if self._index:
            self._index_remove(key, old.metadata, rec.metadata)
        if self._listeners:
            # down=None for reason "down": the death was noticed here, before
            # its monitor reported it, so its details are unknown.
            self._pending.append(RegistryEvent("unregistered", self._entry(old), reason))
            self._pending.append(RegistryEvent("registered", self._entry(rec)))
        return None, old

    def _index_add(self, key: Hashable, metadata: Mapping[str, Any]) -> None:
        """Index ``key`` under ``metadata``'s terms (write lock held; before publishing)."""
        for attr, buckets in self._index.items():
            if attr not in metadata:
                continue
            terms, unhashable = _index_terms(metadata[attr])
            for term in terms:
                bucket = buckets.get(term)
                if bucket is None:
                    buckets[term] = {key: None}
                else:
                    bucket[key] = None
            if unhashable:
                self._unindexed[attr][key] = None

    def _index_remove(
        self, key: Hashable, metadata: Mapping[str, Any], keep: Mapping[str, Any] | None
    ) -> None:
        """Unindex ``key``'s ``metadata`` terms, except those ``keep`` also has.

        Write lock held, and called AFTER the table stopped showing
        ``metadata`` under ``key`` (removed, or replaced by a record with
        ``keep``): so the index is always a superset of the table.
        """
        for attr, buckets in self._index.items():
            if attr not in metadata:
                continue
            terms, unhashable = _index_terms(metadata[attr])
            if keep is not None and attr in keep:
                kept, kept_unhashable = _index_terms(keep[attr])
                if kept:
                    kept_set = set(kept)
                    terms = [t for t in terms if t not in kept_set]
                unhashable = unhashable and not kept_unhashable
            for term in terms:
                bucket = buckets.get(term)
                if bucket is not None:
                    bucket.pop(key, None)
                    if not bucket:
                        del buckets[term]
            if unhashable:
                self._unindexed[attr].pop(key, None)

    def unregister(self, key: Hashable) -> bool:
        """Remove ``key``; True if it was there. Its monitor is released.

        Raises:
            InvalidKey: ``key`` is unhashable.
        """
        lock = self._lock
        lock.acquire()
        try:
            rec = self._table.pop(key, None)  # unpublish first, then unindex
            if rec is not None:
                if self._index:
                    self._index_remove(key, rec.metadata, None)
                if self._listeners:
                    event = RegistryEvent("unregistered", self._entry(rec), "unregistered")
                    self._pending.append(event)
        except TypeError:
            raise InvalidKey(f"registry key must be hashable, got {type(key).__name__}") from None
        finally:
            lock.release()
        if rec is None:
            return False
        # Released outside the lock. Race: if the agent died meanwhile, its
        # _on_down finds the key gone (or held by another origin) and does nothing.
        if rec.monitor is not None:
            rec.monitor.demonitor()
        if self._pending:
            self._dispatch()
        return True

    def update_metadata(self, key: Hashable, metadata: Mapping[str, Any]) -> None:
        """Replace the metadata of ``key``; indexes follow.

        Raises:
            InvalidKey: ``key`` is unhashable.
            InvalidMetadata: not a JSON-compatible mapping (nothing changes).
            NotRegistered: ``key`` is not registered (also a ``KeyError``).
        """
        try:
            hash(key)
        except TypeError:
            raise InvalidKey(f"registry key must be hashable, got {type(key).__name__}") from None
        frozen = freeze_metadata(metadata)
        with self._lock:
            cur = self._table.get(key)
            if cur is None:
                raise NotRegistered(key)
            new = self._record(key, cur.agent, frozen, cur.registered_at)
            new.origin = cur.origin  # same registration: the same monitor and token
            new.monitor = cur.monitor
            if self._index:
                self._index_add(key, frozen)
            self._table[key] = new  # one store: readers see the old or the new record
            if self._index:
                self._index_remove(key, cur.metadata, frozen)
            if self._listeners:
                self._pending.append(RegistryEvent("updated", self._entry(new)))
        if self._pending:
            self._dispatch()

    def _on_down(self, origin: _Record, down: Down) -> None:
        """The agent of ``origin``'s registration died: remove it (if still there)."""
        with self._lock:
            cur = self._table.get(origin.key)
            # Race: the key may have been unregistered, replaced or re-registered
            # since — or origin is not published yet (register() is between
            # monitor() and its lock): only the registration this monitor
            # belongs to is removed; otherwise mark origin dead for register().
            if cur is None or cur.origin is not origin:
                origin.origin = None
                return
            del self._table[origin.key]  # unpublish first, then unindex
            if self._index:
                self._index_remove(origin.key, cur.metadata, None)
            if self._listeners:
                self._pending.append(RegistryEvent("unregistered", self._entry(cur), "down", down))
        if self._pending:
            self._dispatch()

    # ------------------------------------------------------------------ events

    def _dispatch(self) -> None:
        """Deliver queued events in write order, one at a time, outside the write lock."""
        me = threading.get_ident()
        if self._dispatch_owner == me:
            return  # a listener wrote: the loop below, further up this stack, delivers it
        pending = self._pending
        with self._dispatch_lock:
            self._dispatch_owner = me
            try:
                while True:
                    try:
                        event = pending.popleft()
                    except IndexError:
                        break
                    for listener in self._listeners:
                        try:
                            listener(event)
                        except Exception as exc:  # a broken listener must not break a writer
                            report_unraisable(exc, "MemoryRegistry listener", listener)
            finally:
                self._dispatch_owner = 0

    # ------------------------------------------------------------------ admin

    def indexed_attributes(self) -> frozenset[str]:
        """The attribute names given as ``indexed=`` at construction."""
        return self._indexed

    @property
    def manager(self) -> MonitorManager:
        """The monitor manager watching this registry's agents."""
        return self._manager

    def stats(self) -> MemoryRegistryStats:
        """A consistent snapshot of the table, monitors and indexes (takes the write lock)."""
        with self._lock:
            records = list(self._table.values())
            return MemoryRegistryStats(
                entries=len(records),
                monitors=sum(1 for r in records if r.monitor is not None and r.monitor.active),
                index_sizes={a: sum(len(b) for b in self._index[a].values()) for a in self._index},
                index_values={a: len(self._index[a]) for a in self._index},
                unindexed={a: len(self._unindexed[a]) for a in self._unindexed},
            )

    def close(self) -> None:
        """Release every monitor (and the manager, if owned). Idempotent; emits no events.

        Afterwards the registry is empty and ``register`` raises ``RegistryError``.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            records = list(self._table.values())
            self._table.clear()
            for buckets in self._index.values():
                buckets.clear()
            for keys in self._unindexed.values():
                keys.clear()
        for rec in records:
            if rec.monitor is not None:
                rec.monitor.demonitor()
        if self._owns_manager:
            self._manager.close()

    def __repr__(self) -> str:
        return f"<MemoryRegistry entries={len(self._table)} indexed={sorted(self._indexed)}>"
