"""The local mirror of a RedisRegistry: entries and attribute indexes, in memory.

Readers never lock: ``entries`` is a plain ``dict`` that is only mutated in
place, one key at a time, by the holder of the owner's mirror lock (a single
``dict`` operation is atomic). Index buckets are read under that lock (a
query copies its candidates, then evaluates outside).

Per-key versions make application idempotent and order-safe: a change record
is applied only if its version is newer than the last one applied to that key
(or, for keys not in ``versions``, newer than ``floor``, the version of the
last snapshot). So a node can apply its own write at once and later skip the
same record when the stream tail delivers it.

``reached`` is the highest version the mirror took (a snapshot's, a record's,
a node's own write's): Redis's change counter was there, in the history the
mirror follows, so a counter found below it means Redis went back to older
data. A node's own writes can take it past the tail's position (the tail has
not read back another node's record before them yet).

``own_ahead`` (a node's mirror only) holds the versions of that node's own
change records (each record's first version) its writers applied past the tail
position, ascending: in one history the tail meets a record of that node
starting at each (``Shared.note_own_write``). A snapshot forgets them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Sequence

from foundation.registry._query import AttributeIndex
from foundation.registry._types import Entry, RegistryEvent

__all__ = ["Mirror"]


class Mirror:
    """Entries by key, per-key versions, and the attribute index.

    ``index`` is the same ``AttributeIndex`` ``MemoryRegistry`` uses, so both
    answer an indexed query alike (enum members looked up as their plain value).
    """

    __slots__ = ("entries", "floor", "index", "indexing", "own_ahead", "reached", "versions")

    def __init__(self, indexed: Iterable[str]) -> None:
        self.entries: dict[Hashable, Entry] = {}
        self.versions: dict[Hashable, int] = {}
        self.floor = 0
        self.reached = 0
        self.own_ahead: deque[int] = deque()  # the tail takes them from the front
        self.index = AttributeIndex(indexed)
        self.indexing = bool(self.index.attrs)  # False: put/remove skip the index

    def is_newer(self, key: Hashable, version: int) -> bool:
        """True when a record of ``version`` for ``key`` has not been applied yet."""
        return version > self.versions.get(key, self.floor)

    def rebase(self, version: int) -> None:
        """The mirror now shows a snapshot of ``version`` (its entries put): forget
        every per-key version and what a history before it reached."""
        self.versions.clear()
        self.own_ahead.clear()
        self.floor = self.reached = version

    def put(self, entry: Entry, version: int) -> Entry | None:
        """Insert or replace ``entry``; returns the entry it replaced."""
        key = entry.key
        entries = self.entries
        old = entries.get(key)
        if version > self.reached:  # noqa: PLR1730 - an if: max() costs 4x here (hot path)
            self.reached = version
        if not self.indexing:
            entries[key] = entry
            self.versions[key] = version
            return old
        # Index first, then publish, then unindex what only the old entry had: a
        # query that sees the key in the index and reads ``entries`` finds the new
        # entry or the old one (re-checked by the query), never a half-written one.
        self.index.add(key, entry.metadata)
        entries[key] = entry
        if old is not None:
            self.index.remove(key, old.metadata, entry.metadata)
        self.versions[key] = version
        return old

    def apply_registration(self, entry: Entry, version: int) -> list[RegistryEvent]:
        """Put ``entry`` (a registration record from Redis); the events it means.

        Our own registration written back (a re-assert) replaces nothing: at
        most its metadata changed. Any other entry it displaces was confirmed
        by Redis to be another registration of the key: "replaced".
        """
        old = self.put(entry, version)
        if old is not None and same_registration(old, entry):
            return [RegistryEvent("updated", entry)] if old.metadata != entry.metadata else []
        events = [] if old is None else [RegistryEvent("unregistered", old, reason="replaced")]
        events.append(RegistryEvent("registered", entry))
        return events

    def remove(self, key: Hashable, version: int) -> Entry | None:
        """Remove ``key`` (remembering ``version`` as its tombstone); returns the old entry."""
        self.versions[key] = version
        if version > self.reached:  # noqa: PLR1730 - an if: max() costs 4x here (hot path)
            self.reached = version
        old = self.entries.pop(key, None)
        if old is not None and self.indexing:
            self.index.remove(key, old.metadata)
        return old

    def candidates(self, attr: str, values: Sequence[Hashable]) -> set[Hashable]:
        """Keys whose ``attr`` equals or contains one of ``values`` (``IndexPlan.values``)."""
        return set(self.index.keys(attr, values))

    def prune(self, upto: int) -> None:
        """Forget tombstones of versions <= ``upto`` (the stream tail is past them)."""
        if len(self.versions) <= 2 * len(self.entries) + 1024:
            return
        entries = self.entries
        self.versions = {k: v for k, v in self.versions.items() if k in entries or v > upto}


def same_registration(old: Entry, new: Entry) -> bool:
    """Both entries describe one registration (same node, time and agent)."""
    return (
        old.node == new.node
        and old.registered_at == new.registered_at
        and (old.agent is new.agent or old.agent == new.agent)
    )
