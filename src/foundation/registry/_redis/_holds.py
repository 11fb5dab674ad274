"""Deaths a reader heard whose deletes Redis then lost: not told as registered again.

The one implementation for both readers of the change stream: a node's tail
(``_tail``) and a ``RedisObserver`` (``_observer``, ``foundation agents watch``).

A failover can lose writes a node already heard: during a Sentinel failover
the old master stays writable for about a second after the promotion, so an
owner's deletes of its dead agents land there, reach the other nodes' tails
(they hear ``unregistered``, down) and are lost. A resync snapshot from the
new master then holds those registrations again. Taken as new, they were told
``registered`` (and ``lookup`` returned the dead agent) until the owner's
recovery deleted them again: a second death for one agent.

So a node's mirror remembers, for a while, the registrations of other nodes a
delete record removed (``note_delete``): the removed entry (one registration:
node, head time and agent; a new registration of the key, even by the same
agent, has another time) and the record's stream id, version and writer. A
resync whose snapshot brings that same registration back checks the stream
of the snapshot's history for that delete record (one round trip, only then):

- present: the registration was written again after its delete in this one
  history (a re-assert by its owner): a live registration, told at once;
- absent: the history lost the delete. The entry is **held**: out of the
  mirror (not told, ``lookup`` does not see it) until a record of the key
  decides: a delete (its owner's recovery deleting its dead agent's entry, or
  a reap) drops it silently; a registration or an update (its owner says it
  is alive) releases it, told ``registered``; or until ``ttl`` passes with
  neither, when it is released and told ``registered`` (Redis holds it and
  nobody removed it: the mirror never hides an entry of Redis for good).

Only a snapshot's entries the mirror lacks are held, so a resync never hides
an entry the mirror shows; the next resync recomputes the held entries from
its own snapshot (one it lacks is forgotten, silently: it was never told).
All of it runs under the mirror lock, but :func:`deletes_kept`, the round trip.

A node remembers the removals of other nodes' registrations only, and its own
writes of a held key end the hold too (``_replies``, ``_batch``, ``_update``).
An observer owns nothing and writes nothing (it never deletes nor writes back
what it holds): it remembers every removal, and only a record of the key or
the time ends a hold (two of the namespace's leases, which it reads from Redis:
``RedisObserver._lease_s``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any, NamedTuple

from foundation.registry._redis._mirror import Mirror, same_registration
from foundation.registry._redis._shared import UNREADABLE
from foundation.registry._redis._state import log
from foundation.registry._types import Entry, RegistryEvent

__all__ = ["Gone", "Holds", "deletes_kept", "say_shown"]


class Gone(NamedTuple):
    """Another node's registration a delete record removed from the mirror."""

    entry: Entry
    ek: bytes  # its encoded key (a field of P:head)
    rid: bytes  # the delete record's stream id
    v: bytes  # its ``v`` field (a bulk record's first version)
    w: bytes  # its writer
    until: float  # monotonic time it is forgotten


class Holds:
    """The removed registrations a node remembers, and the entries it holds."""

    __slots__ = ("gone", "held", "keep")

    def __init__(self, keep: float) -> None:
        self.keep = keep  # seconds a removal is remembered, and an entry held
        self.gone: OrderedDict[Hashable, Gone] = OrderedDict()
        self.held: dict[Hashable, tuple[Entry, float]] = {}

    def note_delete(self, old: Entry, ek: bytes, rid: bytes, v: bytes, w: bytes) -> None:
        """A delete record (``rid``, ``v``, writer ``w``) removed ``old`` (holding mlock)."""
        now = time.monotonic()
        self._forget(now)
        gone = self.gone
        gone.pop(old.key, None)  # the newest last: oldest first, in time order
        gone[old.key] = Gone(old, ek, rid, v, w, now + self.keep)

    def _forget(self, now: float) -> None:
        """Forget the removals remembered until ``now`` or before: the oldest
        first, so a reap of many entries costs one step each, never a scan."""
        gone = self.gone
        while gone:
            key = next(iter(gone))
            if gone[key].until > now:
                return
            del gone[key]

    def doubtful(
        self,
        heads: list[bytes],
        entries: dict[Hashable, Entry],
        read: Callable[[Hashable, str, str], Entry | None],
    ) -> dict[Hashable, Gone]:
        """The registrations this node saw deleted that a snapshot (``heads``:
        encoded key, head, ...) holds again and the mirror lacks (holding mlock):
        the stream must say whether the snapshot's history has the delete.
        ``read(key, ek, head)`` is the entry of a head (``UNREADABLE`` for junk).

        Nothing is forgotten here: ``keep`` counts while the tail reads (removals
        are forgotten as later deletes are noted), never across the outage before
        this resync. A master that crashed is replaced after Sentinel's
        ``down-after-milliseconds`` (30 s by default), longer than two leases (10 s
        by default): its lost deletes would be forgotten before the resync. One
        kept too long costs one ``XRANGE`` here, and its delete is in the stream
        (or trimmed, counted as kept: see :func:`deletes_kept`)."""
        if not self.gone:
            return {}
        by_ek = dict(zip(heads[::2], heads[1::2], strict=True))
        found: dict[Hashable, Gone] = {}
        for key, gone in self.gone.items():
            head = by_ek.get(gone.ek)
            if head is None or key in entries:
                continue
            try:
                new = read(key, gone.ek.decode(), head.decode())
            except UNREADABLE:
                continue  # left out of the snapshot's entries too
            if new is not None and same_registration(gone.entry, new):
                found[key] = gone
        return found

    def hold(
        self,
        fresh: dict[Hashable, Entry],
        entries: dict[Hashable, Entry],
        doubtful: dict[Hashable, Gone],
        kept: set[Hashable],
    ) -> None:
        """Take out of ``fresh`` (a snapshot's entries) those to hold (holding
        mlock): held before and still the same registration (their deadline
        stays), or ``doubtful`` whose delete the snapshot's history lacks
        (``kept``: those it has)."""
        now = time.monotonic()
        held: dict[Hashable, tuple[Entry, float]] = {}
        for key in {*self.held, *doubtful}:
            new = fresh.get(key)
            if new is None or key in entries:
                continue  # gone from Redis, or shown: a resync never hides a shown entry
            before = self.held.get(key)
            if before is not None and same_registration(before[0], new):
                held[key] = (new, before[1])
            elif key in doubtful and key not in kept:
                # Race: the snapshot was taken before the owner's recovery deleted
                # the dead agent's entry (its delete record, past the snapshot's
                # position, drops it), or the owner died too (a reap follows).
                held[key] = (new, now + self.keep)
            else:
                continue
            del fresh[key]
        for key in doubtful:
            self.gone.pop(key, None)  # decided: held, or told as a registration
        self.held = held

    def take(self, key: Hashable) -> Entry | None:
        """A change record of ``key`` was applied: it decides (holding mlock);
        the entry held, if any."""
        held = self.held.pop(key, None)
        return None if held is None else held[0]

    def decide(
        self, m: Mirror, key: Hashable, op: bytes, v: int, events: list[RegistryEvent]
    ) -> None:
        """A change record (``op``, version ``v``) of ``key`` is about to be
        applied to ``m`` (holding mlock): it ends the hold. An update (its owner
        says it lives) shows the held entry, told ``registered``; the update
        follows. A registration record tells its entry itself; a delete (the
        owner's recovery, or a reap) drops it silently."""
        held = self.take(key)
        if held is not None and op == b"u":
            m.put(held, v)
            events.append(RegistryEvent("registered", held))

    def release_due(self, m: Mirror, events: list[RegistryEvent]) -> int:
        """Put the held entries whose time is up into ``m``, told ``registered``
        (holding mlock): no record of their key came while they were held, so
        Redis holds them and nobody removed them. How many (for
        :func:`say_shown`, outside the lock)."""
        shown = 0
        for entry in self.due():
            if entry.key not in m.entries:
                m.put(entry, m.versions.get(entry.key, m.floor))
                events.append(RegistryEvent("registered", entry))
                shown += 1
        return shown

    def due(self) -> Iterator[Entry]:
        """Take the held entries whose time is up (holding mlock)."""
        now = time.monotonic()
        for key, (entry, until) in list(self.held.items()):
            if until <= now:
                del self.held[key]
                yield entry

    def wait(self, longest: float) -> float:
        """Seconds until the next held entry is due, at most ``longest``."""
        if not self.held:
            return longest
        soonest = min(until for _, until in self.held.values())
        return max(0.001, min(longest, soonest - time.monotonic()))


def say_shown(who: str, shown: int) -> None:
    """The one INFO line of :meth:`Holds.release_due` (``who``: ``node X``,
    ``observer of 'ns'``)."""
    if shown:
        log.info(
            "%s: %d entr(ies) whose delete it had heard and Redis lost were neither "
            "deleted nor written again by their owners: shown again",
            who,
            shown,
        )


def deletes_kept(pipe: Any, k_log: str, doubtful: dict[Hashable, Gone]) -> set[Hashable]:
    """The keys of ``doubtful`` whose delete record the stream holds: the same
    id, version and writer (a record of another history at the same id has
    another version or writer). One pipelined round trip: the stream's first
    record, then an ``XRANGE`` per key.

    A record below the stream's first one (or any, the stream empty) may have
    been trimmed (``MAXLEN``) as well as lost: counted as kept, so ordinary
    trimming never hides a live registration (say a re-assert after a reap,
    which a tail that fell past the trim point resyncs instead of reading).
    A lost delete is past the first record: it was written after every record
    the promoted replica (or the older copy) holds."""
    keys = list(doubtful)
    pipe.xrange(k_log, min="-", max="+", count=1)
    for key in keys:
        rid = doubtful[key].rid
        pipe.xrange(k_log, min=rid, max=rid, count=1)
    first, *replies = pipe.execute()
    start = _stream_id(first[0][0]) if first else None
    return {
        key for key, found in zip(keys, replies, strict=True) if _kept(doubtful[key], found, start)
    }


def _kept(gone: Gone, found: list[Any], start: tuple[int, int] | None) -> bool:
    """The stream holds ``gone``'s delete record (``found``, its ``XRANGE``), or
    may have trimmed it (below ``start``, the first record's id; None: empty)."""
    if start is None or _stream_id(gone.rid) < start:
        return True
    fields = found[0][1] if found else {}
    return bool(fields) and fields.get(b"v") == gone.v and fields.get(b"w") == gone.w


def _stream_id(rid: bytes | str) -> tuple[int, int]:
    """A stream id ``b"<ms>-<seq>"`` as a pair that orders as Redis orders ids."""
    ms, _, seq = (rid.decode() if isinstance(rid, bytes) else rid).partition("-")
    return int(ms), int(seq or 0)
