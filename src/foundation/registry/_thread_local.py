"""``ThreadLocalRegistry``: the legacy per-thread store (the process-dictionary analogue).

Kept for migrations and comparison. It answers the same calls with the same
results and errors as every backend, with two documented differences, both
stated by name in the contract suite (``tests/contract``):

1. **Each thread sees only its own entries** (what it registered itself).
2. **Nothing is monitored**: a dead agent is filtered out when read (so
   ``count()`` costs O(n) liveness checks) and **lingers in memory** until its
   key is unregistered, updated or registered again, or its thread ends.

``indexed=`` works as on ``MemoryRegistry``: each thread's store keeps the
shared attribute index (``AttributeIndex``) over its own entries, so an
``eq``/``in`` query on an indexed attribute is answered from it, and
``stats()`` counts the queries answered by an index and by a scan.

After ``close()`` every public call (reads, ``subscribe``, ``stats()`` and
``snapshot_all_threads()`` included) raises ``errors.Closed``; ``close()``
itself is idempotent.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from foundation import _fork
from foundation._listeners import Listeners
from foundation.errors import AlreadyRegistered, Closed, NotAlive, NotRegistered
from foundation.liveness import is_alive
from foundation.registry._async import DirectAsyncWrites
from foundation.registry._query import (
    AttributeIndex,
    Compiled,
    IndexPlan,
    compile_criteria,
    index_plan,
    matching,
)
from foundation.registry._types import (
    Criterion,
    Entry,
    Listener,
    MetadataFilter,
    Registry,
    RegistryEvent,
    UnregisterReason,
    filtered,
    new_entry,
)
from foundation.registry._validation import (
    EMPTY_METADATA,
    check_bool,
    freeze_metadata,
    indexed_names,
    validate_key,
)

__all__ = ["ThreadLocalRegistry", "ThreadLocalStats"]

_tokens = itertools.count(1)


@dataclass(frozen=True, slots=True)
class ThreadLocalStats:
    """What a ``ThreadLocalRegistry`` holds, across all threads, and how its
    queries were answered.

    ``threads``: threads with a store; ``entries``: stored entries, dead ones
    included; ``dead``: stored entries whose agent is dead (lingering);
    ``indexed_queries`` / ``scans``: ``query`` and ``find_by_attribute`` calls
    answered from an index / by scanning the calling thread's entries, since
    construction (the rule of ``MemoryRegistryStats``: watch ``scans`` to
    catch a query that misses its index; plain increments without a lock,
    so queries racing on several threads may lose a count).

    Example:
        >>> import threading
        >>> from foundation import ThreadLocalRegistry, spawn_thread
        >>> stop = threading.Event()
        >>> with ThreadLocalRegistry(indexed=("role",)) as reg:
        ...     reg.register("a", spawn_thread(stop.wait), {"role": "io"})
        ...     _ = reg.find_by_attribute("role", "io"), reg.query([("n", "gt", 1)])
        ...     stats = reg.stats()
        >>> stats.entries, stats.indexed_queries, stats.scans
        (1, 1, 1)
        >>> stop.set()
    """

    threads: int
    entries: int
    dead: int
    indexed_queries: int = 0
    scans: int = 0


class _Store:
    """One thread's private entries and their index (None: nothing indexed).
    Mutated only by its own thread (and emptied by ``close()``)."""

    __slots__ = ("__weakref__", "entries", "ident", "index", "name")

    def __init__(self, indexed: frozenset[str]) -> None:
        thread = threading.current_thread()
        self.ident: int = threading.get_ident()
        self.name = thread.name
        self.entries: dict[Hashable, Entry] = {}
        self.index = AttributeIndex(indexed) if indexed else None

    def put(self, key: Hashable, entry: Entry, old: Entry | None) -> None:
        """Store ``entry`` (replacing ``old``): index, publish, then unindex the old
        terms, so the index stays a superset of the entries (as ``MemoryRegistry``)."""
        index = self.index
        if index is not None:
            index.add(key, entry.metadata)
        self.entries[key] = entry
        if index is not None and old is not None:
            index.remove(key, old.metadata, entry.metadata)

    def drop(self, key: Hashable) -> Entry | None:
        """Remove ``key`` (unpublish, then unindex); its entry, if any."""
        entry = self.entries.pop(key, None)
        if entry is not None and self.index is not None:
            self.index.remove(key, entry.metadata)
        return entry


class ThreadLocalRegistry(DirectAsyncWrites, Registry):
    """The legacy store: per-thread, unmonitored. Same calls, results and errors.

    Differences from the shared registries, by design (the legacy behaviour
    that migrations move away from):

    - each thread sees only the entries it registered itself;
    - nothing is monitored: dead agents are filtered out at read time (so
      ``count()`` is O(n)) and linger in memory until their key is written
      again or their thread ends; no ``"down"`` events are emitted.

    ``indexed`` names attributes answered from an index, as on
    ``MemoryRegistry`` (each thread indexes its own entries; ``stats()``
    counts indexed queries and scans). Listeners get the
    events of writes, synchronously, in the writing thread. For
    administration, ``snapshot_all_threads()`` shows every thread's entries.
    After ``close()`` every call raises ``errors.Closed``.

    Example:
        >>> import threading
        >>> from foundation import ThreadLocalRegistry, spawn_thread
        >>> stop = threading.Event()
        >>> reg = ThreadLocalRegistry()
        >>> reg.register("mine", spawn_thread(stop.wait), {"role": "io"})
        >>> seen_elsewhere = []
        >>> t = threading.Thread(target=lambda: seen_elsewhere.append(reg.lookup("mine")))
        >>> t.start(); t.join()
        >>> reg.lookup("mine").metadata["role"], seen_elsewhere
        ('io', [None])
        >>> stop.set(); reg.close()
    """

    def __init__(self, indexed: Iterable[str] = ()) -> None:
        self._indexed = frozenset(indexed_names(indexed))
        self._local = threading.local()
        # token -> weak reference to a thread's store. The store itself lives in
        # self._local, so it is dropped when its thread ends; the weakref
        # callback then pops its own token (one atomic dict op, and tokens are
        # never reused, so a new thread that gets the same ident is unaffected).
        self._stores: dict[int, weakref.ref[_Store]] = {}
        self._listeners: Listeners[RegistryEvent] = Listeners(
            "ThreadLocalRegistry listener", area="registry"
        )
        self._closed = False
        self._indexed_queries = 0
        self._scans = 0
        _fork.track(self)  # the child's own lock after a fork (see _inherited_by_fork)

    def _inherited_by_fork(self) -> None:
        """In a forked child (``foundation._fork``): the child's private copy (its
        forking thread's entries), usable there. Race: a parent thread
        subscribing or unsubscribing at the fork held the listeners' lock for
        ever in the child, whose next ``subscribe()``, unsubscribe or
        ``close()`` hung: reset in place (an unsubscribe captured it)."""
        _fork.reset_locks(self._listeners._lock)

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("this ThreadLocalRegistry is closed")

    # ------------------------------------------------------------------ stores

    def _own(self) -> _Store | None:
        store: _Store | None = getattr(self._local, "store", None)
        return store

    def _own_or_new(self) -> _Store:
        store: _Store | None = getattr(self._local, "store", None)
        if store is None:
            store = _Store(self._indexed)
            self._local.store = store
            token = next(_tokens)
            stores = self._stores  # the callback must not keep the registry alive

            def forget(_ref: weakref.ref[_Store], token: int = token) -> None:
                stores.pop(token, None)

            stores[token] = weakref.ref(store, forget)
        return store

    def _live_stores(self) -> list[_Store]:
        refs = list(self._stores.values())  # one-call snapshot
        return [s for s in (r() for r in refs) if s is not None]

    # ------------------------------------------------------------------ reads

    def lookup(self, key: Hashable) -> Entry | None:
        """The calling thread's live entry for ``key``, or ``None`` (dead ones filtered).

        Raises:
            InvalidKey: ``key`` breaks the key rule (docs/keys-and-metadata.md).
            Closed: the registry is closed (as every call below).
        """
        if self._closed:
            raise Closed("this ThreadLocalRegistry is closed")
        if type(key) is not str:
            # The one key rule, hit or miss: True is no key even though True == 1,
            # and an object that is no key is never hashed or compared with ours.
            key = validate_key(key)
        store = self._own()
        entry = None if store is None else store.entries.get(key)
        if entry is None:
            return None
        if not is_alive(entry.agent):
            return None
        return entry

    def _live(self) -> list[Entry]:
        self._check_open()
        store = self._own()
        if store is None:
            return []
        return [e for e in list(store.entries.values()) if is_alive(e.agent)]

    def count(self) -> int:
        """The calling thread's live entries: O(n), each agent is checked."""
        return len(self._live())

    def list_all(self, filter: MetadataFilter | None = None) -> list[Entry]:
        """The calling thread's live entries (optionally filtered by metadata)."""
        return filtered(self._live(), filter)

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        """The calling thread's live entries matching all criteria; an ``eq``/``in``
        on an indexed attribute is answered from the index (``stats()`` counts
        the queries answered by scanning).

        Raises:
            InvalidCriteria: a bad shape, unknown op or ``in`` value (before evaluating).
        """
        self._check_open()
        compiled = compile_criteria(criteria)
        plans = index_plan(compiled, self._indexed) if self._indexed else None
        if plans:
            self._indexed_queries += 1  # race: a lost count at worst (diagnostics)
            return self._query_indexed(compiled, plans)
        self._scans += 1  # race: as above
        # (The liveness checks first, outside ``matching``: an agent's error is
        # its own, never the criteria's.)
        return matching(self._live(), compiled)

    def _query_indexed(self, compiled: Sequence[Compiled], plans: list[IndexPlan]) -> list[Entry]:
        """``query`` answered from the calling thread's index (the plan with fewest keys)."""
        store = self._own()
        if store is None or store.index is None:
            return []  # this thread never registered anything
        index = store.index
        keys = min((index.keys(p.attr, p.values) for p in plans), key=len)
        entries = store.entries
        # Re-check every candidate: the index is a superset, and dead agents
        # linger (filtered, as every read does: outside ``matching``).
        candidates = [e for e in (entries.get(k) for k in keys) if e is not None]
        return [e for e in matching(candidates, compiled) if is_alive(e.agent)]

    # ------------------------------------------------------------------ writes

    def register(
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Register ``agent`` under ``key`` in the calling thread's store (not monitored).

        Raises:
            InvalidKey, InvalidMetadata, UnsupportedAgent, NotAlive,
            AlreadyRegistered: as every backend; nothing is stored on error.
            TypeError: ``replace`` is not ``True`` or ``False``.
        """
        self._check_open()
        check_bool(replace, "replace")
        key = validate_key(key)  # the one key rule (InvalidKey), normal form
        frozen = EMPTY_METADATA if metadata is None else freeze_metadata(metadata)
        if not is_alive(agent):  # raises UnsupportedAgent for unknown kinds
            raise NotAlive(key, agent)
        store = self._own_or_new()
        old = store.entries.get(key)
        reason: UnregisterReason = "replaced"
        if old is not None:
            if not is_alive(old.agent):
                reason = "down"  # a dead, lingering entry is simply taken (replace or not)
            elif not replace:
                raise AlreadyRegistered(key, old)
        entry = new_entry(key, agent, frozen, time.time(), "local")
        # Race with close() in another thread: an entry stored just after close()
        # cleared the stores lingers in this thread's store, unreadable (every
        # read raises Closed), and goes with the thread.
        store.put(key, entry, old)
        if self._listeners.current:
            if old is not None:
                self._listeners.dispatch(RegistryEvent("unregistered", old, reason))
            self._listeners.dispatch(RegistryEvent("registered", entry))

    def unregister(self, key: Hashable) -> bool:
        """Remove ``key`` from the calling thread's store; False if absent or dead.

        A dead, lingering entry is dropped too (and False returned: it was no
        longer registered as far as any read could tell).

        Raises:
            InvalidKey: ``key`` breaks the key rule (docs/keys-and-metadata.md).
        """
        self._check_open()
        key = validate_key(key)  # the one key rule (InvalidKey), normal form
        store = self._own()
        if store is None:
            return False
        entry = store.drop(key)
        if entry is None or not is_alive(entry.agent):
            return False
        if self._listeners.current:
            self._listeners.dispatch(RegistryEvent("unregistered", entry, "unregistered"))
        return True

    def update_metadata(self, key: Hashable, metadata: Mapping[str, Any]) -> None:
        """Replace the metadata of the calling thread's ``key``.

        Raises:
            InvalidKey: ``key`` breaks the key rule (docs/keys-and-metadata.md).
            InvalidMetadata: not a JSON-compatible mapping (nothing changes).
            NotRegistered: absent from this thread's store, or its agent is dead.
        """
        self._check_open()
        key = validate_key(key)  # the one key rule (InvalidKey), normal form
        frozen = freeze_metadata(metadata)
        store = self._own()
        entry = None if store is None else store.entries.get(key)
        if store is None or entry is None:
            raise NotRegistered(key)
        if not is_alive(entry.agent):
            store.drop(key)  # dead and lingering: drop it now
            raise NotRegistered(key)
        new = new_entry(key, entry.agent, frozen, entry.registered_at, entry.node)
        store.put(key, new, entry)
        if self._listeners.current:
            self._listeners.dispatch(RegistryEvent("updated", new))

    # ------------------------------------------------------------------ events

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` on every write's change; returns an idempotent unsubscribe.

        Raises:
            TypeError: ``listener`` is not callable.
        """
        self._check_open()
        return self._listeners.subscribe(listener)

    # ------------------------------------------------------------------ admin

    def protocol_version(self) -> str:
        """``"2.0"``; ``Closed`` after ``close()``, as every call."""
        self._check_open()
        return super().protocol_version()

    def indexed_attributes(self) -> frozenset[str]:
        """The attribute names given as ``indexed=`` (answered from each thread's index)."""
        self._check_open()
        return self._indexed

    def snapshot_all_threads(self, *, include_dead: bool = False) -> dict[int, list[Entry]]:
        """Introspection: every thread's entries, by thread ident (threads that ended are gone).

        Dead, lingering entries are left out unless ``include_dead``. A
        snapshot: each thread keeps writing its own store meanwhile.

        Raises:
            TypeError: ``include_dead`` is not ``True`` or ``False``.
        """
        self._check_open()
        check_bool(include_dead, "include_dead")
        out: dict[int, list[Entry]] = {}
        for store in self._live_stores():
            entries = list(store.entries.values())  # one-call snapshot of another thread's dict
            if not include_dead:
                entries = [e for e in entries if is_alive(e.agent)]
            out.setdefault(store.ident, []).extend(entries)
        return out

    def stats(self) -> ThreadLocalStats:
        """Threads with a store, stored entries (dead ones included), how many are
        dead, and the queries answered by an index and by a scan."""
        self._check_open()
        stores = self._live_stores()
        entries = [e for s in stores for e in list(s.entries.values())]
        dead = sum(1 for e in entries if not is_alive(e.agent))
        return ThreadLocalStats(
            threads=len(stores),
            entries=len(entries),
            dead=dead,
            indexed_queries=self._indexed_queries,
            scans=self._scans,
        )

    def close(self) -> None:
        """Forget every thread's entries; later calls raise ``Closed``. Idempotent, no events."""
        self._closed = True
        self._listeners.clear()
        for store in self._live_stores():
            # Race: the store's own thread may be writing it; whatever it adds
            # after this is unreadable (every read raises Closed) and goes with it.
            store.entries.clear()
            if store.index is not None:
                store.index.clear()

    def __repr__(self) -> str:
        return f"<ThreadLocalRegistry threads={len(self._stores)}>"
