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
  or not at all: a key maps to its immutable ``Entry``, replaced by one store
  (so ``lookup`` is one ``dict.get`` and returns what it found).
- The indexes are always a **superset** of the table: a writer indexes an
  entry before publishing it and unindexes it after removing it. An index
  answer is re-checked against the entry it names, so a concurrent writer
  can never make a query return an entry that does not match.
- **Closed**: ``close()`` swaps the readers' table for an object whose every
  access raises ``errors.Closed`` (``_ClosedTable``), so a read after close
  raises at no cost to the open registry's hot path; every other public call
  checks the closed flag where it is not on a hot path. ``close()`` is
  idempotent.
- **Dead agents**: the entry goes the moment the monitor reports the death
  (exactly for tasks, futures, ``spawn_thread`` threads and OS processes;
  within the manager's poll interval for foreign threads). Until then
  ``lookup`` may still return it — it is not yet *known* dead.

Events
------
Listeners run **outside** the write lock, one event at a time, in the order
the writes happened (a queue filled under the write lock). The thread that
made a change delivers its events before the call returns, unless another
thread is delivering at that moment: that thread then delivers them too, once
the listener it is running returns, and the writer **does not wait** for it
(its call may return before its events are delivered). So a listener may
call the registry, writes included (their events follow once the current
listener returns), and may wait for another thread's write to this registry;
a slow listener delays the events of the writes made meanwhile, never the
writes. A listener that raises is logged under ``foundation.registry`` and
passed to ``sys.unraisablehook`` if one is installed; the write, the registry
and the other listeners are unaffected. Death events are delivered by the
thread that saw the death (a monitor thread, or the event loop for asyncio
agents), and the events queued while a listener runs by the same thread:
keep listeners quick.

Delivery is ``registry._listeners.DeliveryQueue`` (``_delivery``), the one
helper that also delivers ``MigratingRegistry``'s events.

A writer may tag the writes it makes in a thread (private, for
``MigratingRegistry``): while ``_write_tags.tag`` is set in a thread, each
event queued by that thread's writes carries the tag, except the events of
writes made by listeners the thread runs meanwhile (delivery clears the tag
around the listeners); ``_delivery.delivering`` is the tag of the event whose
listeners are running. ``MigratingRegistry`` recognises the events of its own
backend calls by it, whichever thread delivers them and when.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from foundation import _fork
from foundation.errors import (
    AlreadyRegistered,
    Closed,
    InvalidKey,
    NotAlive,
    NotRegistered,
    RegistryError,
)
from foundation.liveness import Down, Monitor, MonitorManager, is_alive
from foundation.registry._async import DirectAsyncWrites
from foundation.registry._listeners import CopyOnWriteListeners, DeliveryQueue, _write_tags
from foundation.registry._plain import PLAIN_SUBCLASSES
from foundation.registry._query import (
    AttributeIndex,
    compile_criteria,
    index_plan,
    matches,
    matching,
    probe_failure,
)
from foundation.registry._types import (
    Criterion,
    Entry,
    Listener,
    MetadataFilter,
    Registry,
    RegistryEvent,
    UnregisterReason,
    _EntryBuilder,
    _EntrySlots,
    filtered,
    new_entry,
)
from foundation.registry._validation import (
    EMPTY_METADATA,
    check_unicode,
    freeze_metadata,
    indexed_names,
    not_a_bool,
    validate_key,
)

if TYPE_CHECKING:
    from foundation.registry._query import Compiled

__all__ = ["MemoryRegistry", "MemoryRegistryStats"]

_now = time.time


# Stores the private slot directly, past Entry's frozen __setattr__.
_set_registration = _EntrySlots.__dict__["_registration"].__set__


def _detach(entry: Entry) -> _Registration:
    """The registration of ``entry``, which has just left the table (write lock held).

    Clears the entry's private slot: an ``Entry`` a caller keeps (from
    ``lookup``, an event, ``AlreadyRegistered``) must not keep its
    registration alive, nor through it the registry, its listeners and its
    monitor manager. Only writers, under the lock, read the slot.
    """
    reg: _Registration = entry._registration
    _set_registration(entry, None)
    return reg


@dataclass(frozen=True, slots=True)
class MemoryRegistryStats:
    """What a ``MemoryRegistry`` holds and how its queries were answered.

    ``entries``: registrations; ``monitors``: active monitors it holds (one per
    entry when nothing leaks); ``index_sizes``: per indexed attribute, the
    number of (value, key) pairs; ``index_values``: distinct indexed values;
    ``indexed_queries`` / ``scans``: ``query`` and ``find_by_attribute`` calls
    answered from an index / by scanning every entry, since construction. A
    query scans when no criterion is an ``eq``/``in`` on an indexed attribute
    with a value an index can answer (plain ``str``/``int``/``float``/``bool``/
    ``None``, tuples of them, or a subclass such as an enum member that keeps
    its base's ``__eq__``/``__hash__``): watch ``scans`` to catch a query that
    misses its index. (The two counters are plain increments without a lock:
    queries racing on several threads may lose a count; they are diagnostics.)

    Example:
        >>> import threading
        >>> from foundation import MemoryRegistry, spawn_thread
        >>> stop = threading.Event()
        >>> with MemoryRegistry(indexed=("role",)) as reg:
        ...     reg.register("a", spawn_thread(stop.wait), {"role": "io"})
        ...     _ = reg.find_by_attribute("role", "io"), reg.query([("n", "gt", 1)])
        ...     stats = reg.stats()
        >>> stats.entries, stats.indexed_queries, stats.scans
        (1, 1, 1)
        >>> stop.set()
    """

    entries: int
    monitors: int
    index_sizes: dict[str, int]
    index_values: dict[str, int]
    indexed_queries: int
    scans: int


class _ClosedTable:
    """Stands in for the table after ``close()``: every access raises ``Closed``.

    This is how reads (``lookup``, ``in``, ``len``, ``count``, ``list_all``)
    refuse to answer once closed at ZERO cost while open: they call the
    table's method as always and, after close, that call raises.
    """

    __slots__ = ()

    def _closed(self, *args: object) -> Any:
        raise Closed("this MemoryRegistry is closed")

    get = pop = values = items = __contains__ = __len__ = __getitem__ = _closed


_CLOSED_TABLE: Any = _ClosedTable()


class _Registration(Monitor):
    """One registration: its monitor (usually) and its identity.

    The table maps each key to its ``Entry``; the entry's private slot
    ``_registration`` names this object, and every ``Entry`` published for the
    same registration (``update_metadata`` publishes a new one) names the same
    one. It is the token of the registration: a death removes the entry under
    its key only if that entry names this registration — never a later
    registration under the same key.

    A ``Monitor`` subclass: when the agent's watch already exists (every
    ``spawn_thread`` thread, and futures and tasks after their first monitor)
    the manager makes the registration itself the monitor (``_monitor_as``),
    so an entry costs one object less; otherwise ``monitor`` names the
    separate monitor whose ``on_down`` this is. Nothing here refers to the
    entry: no cycle, so both are freed by reference counting the moment they
    leave the table.

    Built only by ``MemoryRegistry.register`` (inline: its hot path). Slots:
    ``key``; ``monitor``, ``None`` when the registration is its own monitor
    (the usual case); ``died``, set by ``_on_down`` under the write lock when
    the agent died while no entry of this registration was in the table —
    ``register`` reads it as "died before it was published" (``NotAlive``,
    nothing stored).
    """

    __slots__ = ("died", "key", "monitor")

    key: Hashable
    monitor: Monitor | None
    died: bool
    registry: MemoryRegistry  # a class attribute of each registry's own subclass (8 B less)

    # Built by calling the class with no arguments (register sets the slots):
    # cheaper than object.__new__(cls), which copies its arguments twice.
    __init__ = object.__init__

    def __call__(self, down: Down) -> None:
        # The monitor's on_down: called once, from whichever thread saw the death.
        self.registry._on_down(self, down)

    def watched_by(self) -> Monitor:
        """The registration's monitor: itself, usually."""
        monitor = self.monitor
        return self if monitor is None else monitor

    def release(self) -> None:
        """Release the registration's monitor (``demonitor``; idempotent)."""
        self.watched_by().demonitor()

    def __repr__(self) -> str:
        return f"<registration {self.key!r}>"


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

    #: Each event carries its writer's ``_write_tags.tag`` (``_delivery``): a
    #: ``MigratingRegistry`` recognises its own calls' events by it.
    _events_carry_write_tags = True

    def __init__(
        self,
        indexed: Iterable[str] = (),
        *,
        manager: MonitorManager | None = None,
        node: str = "local",
    ) -> None:
        indexed = indexed_names(indexed)
        if not isinstance(node, str):
            raise TypeError(f"node must be a str, got {type(node).__name__}")
        check_unicode("node", node)  # as RedisRegistry's: an Entry.node any backend can carry
        if manager is not None and not isinstance(manager, MonitorManager):
            raise TypeError(f"manager must be a MonitorManager, got {type(manager).__name__}")
        self._indexed = frozenset(indexed)
        self._node = node
        self._owns_manager = manager is None
        self._manager = manager if manager is not None else MonitorManager(name="registry")
        # An RLock for its own owner check: see register's race. (No call
        # re-enters: no caller's code runs under it.)
        self._lock = threading.RLock()
        self._lock_owned: Callable[[], bool] = self._lock._is_owned  # type: ignore[attr-defined]
        # Registrations reach their registry through a class attribute of a
        # subclass made for this registry: one pointer less per entry.
        self._registration: type[_Registration] = type(
            "_Registration", (_Registration,), {"__slots__": (), "registry": self}
        )
        # The table: key -> Entry. Writers use _live; readers use _table, the
        # same dict until close() swaps it for _CLOSED_TABLE (then every read
        # raises Closed).
        self._live: dict[Hashable, Entry] = {}
        self._table: dict[Hashable, Entry] = self._live
        # The shared attribute index (also the RedisRegistry mirror's); None: no index.
        self._index: AttributeIndex | None = AttributeIndex(indexed) if indexed else None
        # Bound once: the write paths call these per entry (an attribute load less).
        self._monitor_as = self._manager._monitor_as
        self._indexed_queries = 0
        self._scans = 0
        self._listeners: tuple[Listener, ...] = ()  # copy-on-write, replaced under _lock
        # Events to deliver, outside the write lock: (event, its writer's tag),
        # queued under _lock. Its deque is bound here too: the write paths
        # test it (an attribute load less).
        self._delivery = DeliveryQueue(self, "_listeners", "MemoryRegistry listener")
        self._pending = self._delivery.pending
        self._closed = False
        self._released = False  # close() ran to its end: every monitor released
        _fork.track(self)  # the child's own locks after a fork (see _inherited_by_fork)

    def _inherited_by_fork(self) -> None:
        """In a forked child (``foundation._fork``): the child's private copy,
        usable there as the contract says (``register()`` raises ``Closed``: the
        manager is closed in the child; ``unregister()``, ``update_metadata()``,
        ``subscribe()``, reads and ``close()`` act on the copy).

        Race: a parent thread writing at the fork held the write lock for ever
        in the child, whose next write (or ``close()``) hung; and one
        delivering events held the delivery turn, so no listener heard the
        child's writes. Both are reset in place (an unsubscribe captured the
        lock), no lock is waited for. A write cut by the fork is in the copy as
        a lock-free reader would have seen it then (each step keeps the
        indexes a superset of the table): a key indexed but not published, or
        unpublished but still indexed, which queries re-check.
        """
        _fork.reset_locks(self._lock)
        self._delivery.inherited_by_fork()

    def _closed_first(self) -> None:
        """Raise ``Closed`` if closed: called where a call is refused for its
        arguments, since a closed registry says so first, whatever they are."""
        if self._closed:
            raise Closed("this MemoryRegistry is closed") from None

    # ------------------------------------------------------------------ reads (no lock)

    def lookup(self, key: Hashable) -> Entry | None:
        """The entry for ``key``, or ``None``. Lock-free: one ``dict.get``.

        Raises:
            InvalidKey: ``key`` breaks the key rule (docs/keys-and-metadata.md).
            Closed: the registry is closed (raised by the closed table's ``get``).
        """
        t = type(key)
        if t is str:  # a str is a key in normal form as it is: one dict.get
            return self._table.get(key)  # atomic C-level read; a writer swaps whole entries
        if t is not int and t not in PLAIN_SUBCLASSES:
            # The one key rule, hit or miss: True is no key even though True == 1,
            # and an object that is no key is never hashed or compared with ours.
            # (A member of a subclass that keeps its base's hash and equality, a
            # StrEnum member say, finds the entry of its plain value as it is.)
            try:
                key = validate_key(key)
            except InvalidKey:
                self._closed_first()
                raise
        entry = self._table.get(key)
        if entry is None:
            validate_key(key)  # a miss: InvalidKey for an int beyond 64 bits, say
        return entry

    def __contains__(self, key: object) -> bool:
        t = type(key)
        if t is not str and t is not int:
            try:
                key = validate_key(key)
            except InvalidKey:
                self._closed_first()
                return False  # no key can be this (as ``Registry.__contains__``)
        return key in self._table  # one atomic C-level dict lookup (Closed once closed)

    def count(self) -> int:
        """Number of entries, O(1) (``len`` of the table is atomic; Closed once closed)."""
        return len(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def list_all(self, filter: MetadataFilter | None = None) -> list[Entry]:
        """Every entry (optionally those whose metadata passes ``filter``)."""
        # Snapshot the values in one C call; never iterate the live dict.
        return filtered(list(self._table.values()), filter)

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        """Entries matching all ``criteria``; indexed ``eq``/``in`` are answered from the index.

        An enum member (or any value keeping its base type's ``__eq__`` and
        ``__hash__``) is looked up as its plain value; ``stats()`` counts the
        queries answered by scanning.

        Raises:
            InvalidCriteria: a bad shape, unknown op or ``in`` value (before evaluating).
            Closed: the registry is closed.
        """
        if self._closed:  # first, as every call: a closed registry says so, whatever the query
            # Race: a query past this check while close() runs reads a table being
            # emptied: it answers as a query that ran just before the close.
            raise Closed("this MemoryRegistry is closed")
        compiled = compile_criteria(criteria)
        if self._index is not None:
            out = self._query_indexed(self._index, compiled)
            if out is not None:
                return out
        self._scans += 1  # race: a lost count at worst (diagnostics)
        entries = list(self._live.values())  # one-call snapshot, as in list_all
        return matching(entries, compiled)

    def _query_indexed(
        self, index: AttributeIndex, compiled: Sequence[Compiled]
    ) -> list[Entry] | None:
        """``query`` answered from the index, or None when no criterion can be."""
        keys = self._index_candidates(index, compiled)
        if keys is None:
            return None
        self._indexed_queries += 1  # race: a lost count at worst (diagnostics)
        table = self._live
        out: list[Entry] = []
        try:  # around the loop, never in it (matching's rule, one list less)
            for key in keys:
                # Re-check: the entry may have changed since the index was read.
                entry = table.get(key)
                if entry is not None and matches(entry.metadata, compiled):
                    out.append(entry)
        except Exception as exc:
            failed = probe_failure(compiled, exc)
            if failed is None:
                raise
            raise failed from exc
        return out

    def _index_candidates(
        self, index: AttributeIndex, compiled: Sequence[Compiled]
    ) -> list[Hashable] | None:
        """Keys that may match (a superset), from the smallest usable index; None: scan."""
        plans = index_plan(compiled, self._indexed)
        if not plans:
            return None
        best: list[Hashable] | None = None
        for plan in plans:
            keys = index.keys(plan.attr, plan.values)
            if best is None or len(keys) < len(best):
                best = keys
        return best

    # ------------------------------------------------------------------ writes (one lock)

    # The hot path of every register, kept inline on purpose (one frame).
    def register(  # noqa: PLR0912, PLR0915
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Register ``agent`` under ``key``, monitored from this instant.

        Raises:
            InvalidKey: ``key`` breaks the key rule (docs/keys-and-metadata.md).
            InvalidMetadata: not a JSON-compatible mapping.
            UnsupportedAgent: the agent cannot be monitored.
            BackendUnavailable: the process is out of fds or threads to monitor
                it (``errno`` EMFILE, EAGAIN); retry later.
            NotAlive: the agent is already dead.
            AlreadyRegistered: ``key`` holds a live agent and not ``replace``
                (``.entry`` is that entry). A key whose agent is dead but not
                yet cleaned is simply replaced.
            Closed: the registry is closed.
            TypeError: ``replace`` is not ``True`` or ``False``.
        Nothing is stored when an error is raised.
        """
        given: object = replace  # typed bool, yet a caller may pass anything
        if given is not False and given is not True:  # one identity test when False
            self._closed_first()
            raise not_a_bool(given, "replace")
        try:  # (free unless it raises: the checks stay on the hot path as they were)
            if type(key) is not str:  # a str is a key in normal form as it is
                key = validate_key(key)  # the one key rule (InvalidKey), normal form
            frozen = EMPTY_METADATA if metadata is None else freeze_metadata(metadata)
        except RegistryError:
            self._closed_first()
            raise
        # The registration and its Entry, built inline: this is the hot path of
        # every register (two call frames less; new_entry builds every other
        # Entry the same way).
        new_registration = self._registration  # (self._registration() would be a
        reg: _Registration = new_registration()  # method lookup, unspecialised: slower)
        reg.key = key
        reg.monitor = None
        reg.died = False
        built: Any = _EntryBuilder()  # an Entry once __class__ is set
        built.key = key
        built.agent = agent
        built.metadata = frozen
        built.registered_at = _now()
        built.node = self._node
        built._registration = reg
        built.__class__ = Entry  # frozen from here on (see new_entry)
        entry: Entry = built
        # monitor() raises UnsupportedAgent for unknown kinds (nothing stored yet).
        # An agent already dead is reported by monitor() synchronously, inside
        # the call, as "noproc": that is how NotAlive is detected, with no
        # separate liveness probe. Race: the agent may also die right after
        # monitor(); then reg(down) runs on another thread. Either way _on_down
        # sets reg.died under the write lock and, finding reg unpublished,
        # stores nothing; below, under the same lock, reg.died means "died
        # before it was registered": NotAlive, nothing stored. A death reported
        # after publication removes the entry normally (registered, then down).
        # monitor() is called outside our lock so that a synchronous on_down
        # can take it.
        monitor_as = self._monitor_as  # (loaded, then called: as above)
        try:
            monitor = monitor_as(agent, reg)  # usually reg itself
        except Exception:  # UnsupportedAgent, or RuntimeError from our closed manager
            self._closed_first()
            raise
        if monitor is not reg:
            reg.monitor = monitor  # (None, the default, means reg itself: no cycle)
        lock = self._lock
        # (explicit acquire/release: measurably cheaper than `with`, by ~0.1 us)
        # Race: a Ctrl-C raises at the interpreter's first check after a C call
        # returns: acquire()'s own end. With the acquire before the try, the
        # lock stayed held, and the unwinding thread's close() (a `with
        # MemoryRegistry()` block's exit: demo part 1) waited for it for ever,
        # as did every death reported meanwhile. Raised during the wait (the
        # lock contended), it was not taken: the RLock's owner check tells which.
        try:
            lock.acquire()
        except BaseException:
            if self._lock_owned():
                lock.release()
            raise
        try:
            # Race (a Ctrl-C, raised at a call's start or a C call's return):
            # the event is built before the store (RegistryEvent's __init__ is
            # Python: a check point) and queued by the first call after it, so
            # a cut leaves the entry stored and told, or neither. (Built after
            # the store, a cut there stored it untold.) Built before the read,
            # too: a signal handler or finalizer this thread runs at that check
            # point, writing this key (the RLock lets it in), is then seen by
            # the read, not overwritten by the store.
            item = None
            if self._listeners:
                item = (RegistryEvent("registered", entry), _write_tags.tag)
            table = self._live
            old = table.get(key)
            if old is None and not reg.died and not self._closed:
                # The common case: a new key. Index first, then publish.
                if self._index is not None and frozen:  # empty metadata: nothing to index
                    self._index.add(key, frozen)
                table[key] = entry
                if item is None:
                    # Done (the finally releases the lock). Events queued by other
                    # writers are theirs to deliver: each writer delivers its own.
                    return
                self._pending.append(item)
                error = replaced = None
            else:
                error, replaced = self._register_conflict(entry, old, replace)
        finally:
            lock.release()
        if error is not None:
            monitor.demonitor()
            raise error
        if replaced is not None:
            # Race: if the old monitor fires meanwhile, _on_down finds another
            # registration under the key and does nothing.
            replaced.release()
        if self._pending:
            self._delivery.deliver()

    def _register_conflict(
        self, entry: Entry, old: Entry | None, replace: bool
    ) -> tuple[Exception | None, _Registration | None]:
        """register() when the key is taken, the agent died, or the registry closed.

        Write lock held. Returns (error to raise, replaced registration to release).
        """
        key = entry.key
        if self._closed:  # first: a closed registry says so, whatever the agent
            return Closed("this MemoryRegistry is closed"), None
        if entry._registration.died:
            return NotAlive(key, entry.agent), None  # died before publication: nothing stored
        assert old is not None
        # Conflict path only: a liveness check, in case the old agent died but
        # its monitor has not reported it yet (a thread child's crashed run, say):
        # taken over as "down", with or without replace (one answer: docs/contract.md).
        reason: UnregisterReason = "replaced"
        if not is_alive(old.agent):
            reason = "down"
        elif not replace:
            return AlreadyRegistered(key, old), None
        # Race (a Ctrl-C): both events are built first and queued by the one
        # call right after the store (see register's common case): a cut
        # leaves the replacement stored and told, or neither.
        events: tuple[tuple[RegistryEvent, object], ...] = ()
        if self._listeners:
            # down=None for reason "down": the death was noticed here, before
            # its monitor reported it, so its details are unknown.
            tag = _write_tags.tag
            events = (
                (RegistryEvent("unregistered", old, reason), tag),
                (RegistryEvent("registered", entry), tag),
            )
        # Index the new entry, publish it (one store), then unindex the old one:
        # the index stays a superset of what lock-free readers can see.
        index = self._index
        if index is not None:
            index.add(key, entry.metadata)
        self._live[key] = entry
        self._pending.extend(events)
        replaced = _detach(old)
        if index is not None:
            index.remove(key, old.metadata, entry.metadata)
        return None, replaced

    def unregister(self, key: Hashable) -> bool:  # (hot path inline)
        """Remove ``key``; True if it was there. Its monitor is released.

        Raises:
            InvalidKey: ``key`` breaks the key rule (docs/keys-and-metadata.md).
            Closed: the registry is closed (the closed table's ``pop``/``get`` raises).
        """
        if type(key) is not str:  # a str is a key in normal form as it is
            try:
                key = validate_key(key)  # the one key rule (InvalidKey), as every backend
            except InvalidKey:
                self._closed_first()
                raise
        lock = self._lock
        try:
            lock.acquire()
        except BaseException:  # interrupted: taken or not (see register's race)
            if self._lock_owned():
                lock.release()
            raise
        try:
            # Read under the lock: close() swaps _table under it too. With no
            # listener, one atomic pop (nothing to tell: the hot path as it was);
            # else _unpublish_told. Unpublish first, then unindex.
            entry = self._unpublish_told(key) if self._listeners else self._table.pop(key, None)
            if entry is None:
                return False  # (the finally releases the lock)
            reg = entry._registration  # _detach(entry), inlined (hot path)
            _set_registration(entry, None)
            if self._index is not None and entry.metadata:
                self._index.remove(key, entry.metadata)
        finally:
            lock.release()
        # Released outside the lock. Race: if the agent died meanwhile, its
        # _on_down finds the key gone (or held by another registration) and
        # does nothing.
        mon = reg.monitor
        if mon is None:
            mon = reg
        # mon.demonitor() (reg.release()), inlined: Monitor.demonitor's steps (a
        # call frame less). Race: whoever removes mon from its watch owns it (a
        # death firing on another thread, or this call); the atomic `del`
        # decides (KeyError: taken, so what demonitor() then does, as rare).
        # Race (Ctrl-C, raised only at a call's start or a C call's return):
        # `del` is no call, so no cut lands between the two removals. (With
        # two pops, a cut after the first left mon counted in the manager for
        # good: the entry is gone, so no later unregister reaches it.) A cut
        # after both leaves at most an emptied managed watch attached, until
        # its agent dies, a next monitor of it is released, or close().
        watch = mon._watch
        try:
            del watch.monitors[mon]
        except KeyError:
            mon._settle_released(watch)
        else:
            mon._manager._monitors.pop(mon, None)
            if watch.detachable and not watch.monitors:
                mon._manager._release_watch(watch)
        if self._pending:
            self._delivery.deliver()
        return True

    def _unpublish_told(self, key: Hashable) -> Entry | None:
        """unregister()'s removal of ``key`` with listeners (write lock held):
        its entry, its event queued; None if absent.

        Race (a Ctrl-C): the event is built while the entry is still in the
        table, and queued by the first call after the `del` (no call, so no
        check point): a cut leaves the entry removed and told, or neither.
        (With a pop, a cut at its return removed it untold.)
        Race (re-entrance): at those check points (the get's return, the
        event's __init__) this thread may run a signal handler or a finalizer
        that writes this key (the RLock lets it in): the entry is looked at
        again with no call until the `del` (else a KeyError, or a new entry
        deleted untold). Changed meanwhile: None, nothing removed (that write stands).
        """
        entry = self._table.get(key)  # Closed once closed
        if entry is None:
            return None
        item = (RegistryEvent("unregistered", entry, "unregistered"), _write_tags.tag)
        live = self._live
        if key not in live or live[key] is not entry:  # (no call: no check point)
            return None
        del live[key]
        self._pending.append(item)
        return entry

    def update_metadata(self, key: Hashable, metadata: Mapping[str, Any]) -> None:
        """Replace the metadata of ``key``; indexes follow.

        Raises:
            InvalidKey: ``key`` breaks the key rule (docs/keys-and-metadata.md).
            InvalidMetadata: not a JSON-compatible mapping (nothing changes).
            NotRegistered: ``key`` is not registered (also a ``KeyError``).
            Closed: the registry is closed.
        """
        if self._closed:
            raise Closed("this MemoryRegistry is closed")
        key = validate_key(key)  # the one key rule (InvalidKey), normal form
        frozen = freeze_metadata(metadata)
        with self._lock:
            cur = self._table.get(key)  # Closed if close() ran since the check above
            if cur is None:
                raise NotRegistered(key)
            # Same registration: the same monitor and token.
            new = new_entry(
                key,
                cur.agent,
                frozen,
                cur.registered_at,
                self._node,
                registration=cur._registration,
            )
            # Race (a Ctrl-C, raised at a call's start or a C call's return):
            # the event is built before the store and queued by the first call
            # after it, so a cut leaves the new metadata stored and told, or
            # neither. (Queued last, a cut in _detach, index.remove or the
            # event's __init__ left it stored, never told.) A cut after it
            # leaves at most the old terms indexed: a superset, re-checked.
            item = (RegistryEvent("updated", new), _write_tags.tag) if self._listeners else None
            index = self._index
            if index is not None:
                index.add(key, frozen)
            self._live[key] = new  # one store: readers see the old or the new entry
            if item is not None:
                self._pending.append(item)
            _detach(cur)  # (its registration is new's now)
            if index is not None:
                index.remove(key, cur.metadata, frozen)
        if self._pending:
            self._delivery.deliver()

    def _on_down(self, reg: _Registration, down: Down) -> None:
        """The agent of registration ``reg`` died: remove its entry (if still there)."""
        with self._lock:
            cur = self._live.get(reg.key)  # _live: empty after close(), never raises
            # Race: the key may have been unregistered, replaced or re-registered
            # since — or reg is not published yet (register() is between
            # monitor() and its lock): only the entry of this registration is
            # removed; otherwise mark reg dead for register().
            if cur is None or cur._registration is not reg:
                reg.died = True
                return
            # Race (a Ctrl-C, when the death is seen by the main thread: an
            # asyncio agent's): built first, queued right after the `del`
            # (see _unpublish_told): removed and told, or neither.
            item = None
            if self._listeners:
                item = (RegistryEvent("unregistered", cur, "down", down), _write_tags.tag)
                # Race (re-entrance, as in _unpublish_told): a signal handler or
                # finalizer run at the event's __init__ may have written the
                # key: looked at again with no call until the `del`.
                live = self._live
                if reg.key not in live or live[reg.key] is not cur:  # (no call)
                    return
            del self._live[reg.key]  # unpublish first, then unindex
            if item is not None:
                self._pending.append(item)
            _detach(cur)
            if self._index is not None:
                self._index.remove(reg.key, cur.metadata)
        if self._pending:
            # No call of the user's waits here: the thread that saw the death (a
            # watcher, the end of a spawn_thread thread, a future's callback)
            # reports a listener's KeyboardInterrupt or SystemExit as a courier
            # does, and goes on. (Was: on a spawn_thread thread it reached
            # threading.excepthook, a traceback on stderr.) Except in the main
            # thread (an asyncio agent's death, seen by its loop), where a
            # Ctrl-C lands: raised there, never swallowed.
            self._delivery.deliver(
                courier=threading.current_thread() is not threading.main_thread()
            )

    # ------------------------------------------------------------------ admin

    def indexed_attributes(self) -> frozenset[str]:
        """The attribute names given as ``indexed=`` at construction.

        Raises:
            Closed: the registry is closed.
        """
        if self._closed:
            raise Closed("this MemoryRegistry is closed")
        return self._indexed

    @property
    def manager(self) -> MonitorManager:
        """The monitor manager watching this registry's agents."""
        return self._manager

    def stats(self) -> MemoryRegistryStats:
        """A consistent snapshot of the table, monitors and indexes (takes the write lock).

        Raises:
            Closed: the registry is closed.
        """
        with self._lock:
            entries = list(self._table.values())  # Closed once closed
            index = self._index
            return MemoryRegistryStats(
                entries=len(entries),
                monitors=sum(1 for e in entries if e._registration.watched_by().active),
                index_sizes=index.sizes() if index is not None else {},
                index_values=index.value_counts() if index is not None else {},
                indexed_queries=self._indexed_queries,
                scans=self._scans,
            )

    def close(self) -> None:
        """Release every monitor (and the manager, if owned); unsubscribe every
        listener first (events still queued are not delivered). Idempotent;
        emits no events.

        Afterwards every public call raises ``errors.Closed`` (``close`` itself
        excepted).
        """
        # Race: a Ctrl-C lands at any call in here. Once _closed was set, the
        # next close() returned at once: a close cut before it released the
        # monitors (and closed its own manager, with its watcher threads and
        # fds) left them for good. So only a close() run to its end
        # (_released) makes the next one return, and each step leaves what it
        # has not done yet where the next close() finds it: the entries stay
        # in _live until their monitors are released (release is idempotent).
        with self._lock:
            if self._released:
                return
            self._closed = True
            # Every listener unsubscribed first, as RedisRegistry does: events
            # still queued (behind a slow listener) reach no one, while an event
            # being delivered right now still reaches the rest of the listeners
            # it was given to (DeliveryQueue reads the listeners per event). Was:
            # a courier went on calling listeners for seconds after close().
            self._listeners = ()
            # Readers now hit _CLOSED_TABLE: one attribute store, so a lock-free
            # reader sees either the open table or the closed one, never a mix.
            self._table = _CLOSED_TABLE
            registrations = [e._registration for e in self._live.values()]
        for reg in registrations:
            if reg is not None:  # (None: detached by a cut close, released before)
                reg.release()
        with self._lock:
            for entry in self._live.values():
                _detach(entry)
            self._live.clear()
            if self._index is not None:
                self._index.clear()
        if self._owns_manager:
            self._manager.close()  # (finishes a cut close of its own too)
        self._released = True

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"entries={len(self._live)}"
        return f"<MemoryRegistry {state} indexed={sorted(self._indexed)}>"
