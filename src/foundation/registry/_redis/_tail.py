"""The tail of one ``RedisRegistry`` node: it follows the change stream into the mirror.

One thread blocks in ``XREAD`` on ``P:log`` (and on this node's wake stream)
while the link is CONNECTED, and applies every change record in version
order. A version gap (the stream was trimmed past us), a reset (Redis
restarted empty) or another node's record at a version this node's own write
had (Redis went back to older data in place: ``Shared.note_own_write``) asks
the link for a resync; a failed read reports the fault.
Either way the lease thread runs the recovery (which calls :meth:`Tail.resync`)
and the tail waits until the link is CONNECTED again, then reads on from the
snapshot's stream position. The loop body never lets an exception out: an
unexpected one is logged with its traceback and the loop carries on.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any

from foundation._retry import RetryBackoff
from foundation.errors import FoundationError
from foundation.liveness import Monitor
from foundation.registry._redis._codec import decode_key
from foundation.registry._redis._holds import Holds, deletes_kept, say_shown
from foundation.registry._redis._mirror import same_registration
from foundation.registry._redis._scripts import SnapshotArgs
from foundation.registry._redis._shared import (
    TAIL_BLOCK_MS,
    UNREADABLE,
    Own,
    Shared,
    expand_record,
    own_version_reused_why,
    record_span,
)
from foundation.registry._redis._state import log
from foundation.registry._types import Entry, RegistryEvent, new_entry
from foundation.registry._validation import metadata_from_json

__all__ = ["OWN_QUIET_S", "Tail"]

OWN_QUIET_S = 0.005
"""After a read that held only this node's own writes, the tail waits this long
before reading on. Every write to the stream wakes every tail, ours included;
without the pause a burst of local writes wakes our tail once per write, and it
competes with the writing thread for the GIL on every round trip. Records that
arrive meanwhile are read at once after it (XREAD does not block when the
stream has them): remote changes are delayed by at most this, and only while
this node is writing. A connection the server cut during the pause fails the
next read (the tail holds one connection, never a silently replaced pooled
one), so the link notices it as before."""


def _stream_id(rid: bytes | str) -> tuple[int, int]:
    """A stream id ``b"<ms>-<seq>"`` as a pair that orders as Redis orders ids."""
    ms, _, seq = (rid.decode() if isinstance(rid, bytes) else rid).partition("-")
    return int(ms), int(seq or 0)


def _after(rid: bytes | str, position: bytes | str) -> bool:
    """The record ``rid`` lies after the stream ``position``."""
    return _stream_id(rid) > _stream_id(position)


class Tail:
    """The stream tail and mirror application of one node."""

    def __init__(self, shared: Shared) -> None:
        self._sh = shared
        # Why the last batch stopped at a record, when not a version gap (the tail
        # thread's own).
        self._gap_why = ""
        # The change record being applied: stream id, ``v`` field, writer (the
        # tail thread's own, for Holds.note_delete).
        self._rec: tuple[bytes, bytes, bytes] = (b"0-0", b"0", b"")
        # Registrations of other nodes this node saw deleted, and the entries a
        # resync holds back because the history of its snapshot lost their
        # delete (guarded by mlock; see _holds). Two leases (of the tail reading:
        # an outage does not count, see Holds.doubtful): a dead owner's entry is
        # reaped within about a lease after the owner's last heartbeat.
        self.holds = shared.holds = Holds(2 * shared.ttl)
        self.thread = threading.Thread(
            target=self._loop, name=f"foundation-redis-tail[{shared.node}]", daemon=True
        )

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        sh = self._sh
        backoff = RetryBackoff()
        while not sh.stop.is_set():
            try:
                if self._read_once(backoff):
                    return
            except Exception:
                log.exception("tail thread of node %s: unexpected error (carrying on)", sh.node)
                # Whatever the tail could not apply, a snapshot covers: resync (which
                # also moves the stream position past a record that cannot be read).
                sh.link.resync_needed("the tail met an unexpected error")
                if sh.stop.wait(backoff.next()):
                    return

    def _read_once(self, backoff: RetryBackoff) -> bool:
        """One pass of the loop: wait for CONNECTED, read the stream, apply what
        it holds; True when the tail must stop."""
        sh = self._sh
        if not sh.link.wait_connected(timeout=0.5):
            return False  # the lease thread is recovering (or we are closing)
        with sh.mlock:
            gen, sid, wid = sh.gen, sh.sid, sh.wake_id
            # Wake up for the next held entry that falls due (at least 1 ms:
            # BLOCK 0 waits for ever).
            block = max(1, int(self.holds.wait(TAIL_BLOCK_MS / 1000) * 1000))
        try:
            resp: Any = sh.call(
                "reading the change stream",
                sh.tail_client.xread,
                {sh.k_log: sid, sh.k_wake: wid},
                count=1000,
                block=block,
            )
        except FoundationError:
            # Reported to the link by call(): the lease thread recovers.
            return sh.stop.wait(backoff.next())
        backoff.reset()
        only_own = bool(resp and self._apply_batch(gen, resp))
        # Race: read without mlock (a resync may set it meanwhile): one missed is
        # seen after the next read, which blocks at most TAIL_BLOCK_MS.
        if self.holds.held:
            self._release_due(gen)
        return only_own and sh.stop.wait(OWN_QUIET_S)

    def _release_due(self, gen: int) -> None:
        """Put the held entries whose time is up into the mirror, told
        ``registered`` (see Holds.release_due)."""
        sh = self._sh
        events: list[RegistryEvent] = []
        with sh.mlock:
            if gen != sh.gen:
                return  # a resync happened meanwhile: it decided what it holds
            shown = self.holds.release_due(sh.mirror, events)
            sh.queue(events)
        if shown:
            say_shown(f"node {sh.node}", shown)
            sh.hand_off()

    # ------------------------------------------------------------------ applying records

    def _apply_batch(self, gen: int, resp: list[Any]) -> bool:
        """Apply one XREAD reply; True if it held only this node's own writes."""
        sh = self._sh
        events: list[RegistryEvent] = []
        orphans: list[tuple[Hashable, str, str]] = []
        released: list[Monitor] = []
        with sh.mlock:
            if gen != sh.gen:
                return False  # a resync happened meanwhile; re-read from its position
            gap, only_own = self._apply_streams(resp, events, orphans, released)
            sh.mirror.prune(sh.tail_v)
            # Queued under the lock that applied them: a writer's events (also
            # queued under mlock) come before or after, as in the mirror.
            sh.queue(events)
            sh.applied.notify_all()
        if gap:
            # A gap (the stream was trimmed past us), a reset (Redis restarted
            # empty) or a version of our own write given to another record:
            # resynchronise from a snapshot.
            why, self._gap_why = self._gap_why, ""
            sh.link.resync_needed(why or "a version gap on the change stream")
        for mon in released:
            mon.demonitor()
        sh.hand_off()  # a courier runs the listeners: a slow one never stops the tail
        for orphan in orphans:
            sh.jobs.put(("orphan", orphan))
        return only_own and not gap

    def _apply_streams(
        self,
        resp: list[Any],
        events: list[RegistryEvent],
        orphans: list[tuple[Hashable, str, str]],
        released: list[Monitor],
    ) -> tuple[bool, bool]:
        """Apply the records of one XREAD reply in version order (holding mlock);
        returns (a version gap was met, they were only this node's own writes)."""
        sh = self._sh
        gap = False
        only_own = True
        for name, records in resp:
            if name == sh.k_wake_b:
                if records:
                    sh.wake_id = records[-1][0]
                continue
            log_gap, own = self._apply_log(records, events, orphans, released)
            gap = gap or log_gap
            only_own = only_own and own
        return gap, only_own

    def _apply_log(
        self,
        records: list[Any],
        events: list[RegistryEvent],
        orphans: list[tuple[Hashable, str, str]],
        released: list[Monitor],
    ) -> tuple[bool, bool]:
        """Apply the change records of ``P:log`` of one XREAD reply (holding mlock);
        returns (a version gap was met, they were only this node's own writes)."""
        sh = self._sh
        only_own = True
        node_b = sh.node_b
        ahead = sh.mirror.own_ahead
        for rid, fields in records:
            v = int(fields[b"v"])
            if v <= sh.tail_v and not _after(rid, sh.sid):
                # Race: our own records, applied by their writer, which moved
                # the tail past them while this read was on its way
                # (Shared.own_records_applied): already done, skip them. (A
                # record past our position with an old version is a reset:
                # Redis restarted empty; the check below reports it.)
                continue
            if v != sh.tail_v + 1:
                return True, only_own
            last = v + record_span(fields) - 1
            if ahead and self._own_write_gone(v, last, fields):
                return True, only_own
            sh.tail_v = last
            sh.sid = rid
            if fields[b"w"] != node_b:
                only_own = False
                self._rec = (rid, fields[b"v"], fields[b"w"])
                for iv, f in expand_record(v, fields):
                    self._apply_record(iv, f, events, orphans, released)
        return False, only_own

    def _own_write_gone(self, v: int, last: int, fields: dict[bytes, bytes]) -> bool:
        """The record of versions ``v`` .. ``last`` (the next one, ``fields``) covers
        a version this node's own write was given (``Shared.note_own_write``) and
        is not that record: True (holding mlock); the batch then stops there and
        asks for a resync, as at a version gap.

        In one history the record at such a version is ours and starts there (a
        noted version is past the tail, and the tail reads every record in
        order: a gap resyncs). Another node's record there, or one that spans
        it, means Redis went back to older data in place and other nodes wrote
        as many records since (its change counter is past every version this
        node saw: the heartbeat cannot tell): this node's writes since the
        older copy are lost, and taking the records as the next ones left them
        lost for good. Recover as when the heartbeat tells."""
        sh = self._sh
        ahead = sh.mirror.own_ahead
        gone = 0
        while ahead and ahead[0] <= last:
            first = ahead.popleft()
            if first != v or fields[b"w"] != sh.node_b:
                gone = first
        if gone:
            self._gap_why = own_version_reused_why(gone)
        return bool(gone)

    def _apply_record(
        self,
        v: int,
        f: dict[bytes, bytes],
        events: list[RegistryEvent],
        orphans: list[tuple[Hashable, str, str]],
        released: list[Monitor],
    ) -> None:
        """Apply one change record (holding mlock)."""
        sh = self._sh
        # Records written by an API call of this node never get here (the caller
        # skips them): that call applies its own result (and queues its events,
        # under mlock: in mirror order). If it could not (Redis failed after the
        # write), it asked for a resync.
        m = sh.mirror
        op = f[b"op"]
        ek = f[b"k"].decode()
        key = decode_key(ek)
        if not m.is_newer(key, v):
            return  # already applied (our own write, or covered by a snapshot)
        if self.holds.held:
            # A record of a held entry's key decides it (see Holds.decide): an
            # update shows it, told ``registered``, before the update.
            self.holds.decide(m, key, op, v, events)
        if op == b"r":
            self._apply_register(key, ek, v, f, events, orphans=orphans)
        elif op == b"u":
            self._apply_update(key, v, f, events)
        elif op == b"d":
            self._apply_delete(key, v, f, events, released)

    def _apply_register(
        self,
        key: Hashable,
        ek: str,
        v: int,
        f: dict[bytes, bytes],
        events: list[RegistryEvent],
        *,
        orphans: list[tuple[Hashable, str, str]],
    ) -> None:
        """Apply a registration record (holding mlock)."""
        sh = self._sh
        m = sh.mirror
        head_text = f[b"h"].decode()
        entry = sh.entry_from_head(key, ek, head_text, f[b"m"], orphans)
        if entry is None:
            m.versions[key] = v
            return
        events.extend(m.apply_registration(entry, v))

    def _apply_update(
        self, key: Hashable, v: int, f: dict[bytes, bytes], events: list[RegistryEvent]
    ) -> None:
        """Apply a metadata update record (holding mlock)."""
        sh = self._sh
        m = sh.mirror
        old = sh.entries.get(key)
        m.versions[key] = v
        if old is None:
            return  # e.g. our agent just died; its delete is on its way
        new = new_entry(key, old.agent, metadata_from_json(f[b"m"]), old.registered_at, old.node)
        own = sh.own.get(key)
        if own is not None and old.node == sh.node:
            own.meta, own.ix = f[b"m"], sh.ix_for(new.metadata)
        m.put(new, v)
        if f[b"w"] == b"" and old.metadata == new.metadata:
            return  # a re-assert brought Redis up to what this mirror shows
        events.append(RegistryEvent("updated", new))

    def _apply_delete(
        self,
        key: Hashable,
        v: int,
        f: dict[bytes, bytes],
        events: list[RegistryEvent],
        released: list[Monitor],
    ) -> None:
        """Apply a delete record (holding mlock)."""
        sh = self._sh
        m = sh.mirror
        owner = f[b"n"].decode()
        why, dr = f[b"why"].decode(), f[b"dr"].decode()
        own = sh.own.get(key)
        if own is not None and self._deletes_other_than(own, owner, f):
            if self._mirror_shows(key, own):
                # Another registration than our live one (which this mirror
                # shows) was deleted, say a stale copy a re-assert replaced:
                # nothing this node holds was lost. Keep it, no event.
                m.versions[key] = v
                return
            own = None  # the record removed another registration than ours
        if owner == sh.node and dr == "lease_expired":
            # Our own lease was reaped (we were frozen or cut off). Our agents
            # live on: keep them, and re-assert them (or report conflicts).
            sh.link.lease_lost("another node reaped our expired lease")
            m.versions[key] = v
            if own is not None:
                return
        old = m.remove(key, v)
        if own is not None:
            # Unregistered or replaced by someone else: stop watching it.
            self._stop_watching(key, own, released)
        if old is not None:
            if old.node != sh.node:
                # A failover can lose this delete after we heard it: remember it.
                self.holds.note_delete(old, f[b"k"], *self._rec)
            events.append(sh.removed_event(old, why, dr, f[b"dc"].decode(), f[b"ds"].decode()))

    def _deletes_other_than(self, own: Own, owner: str, f: dict[bytes, bytes]) -> bool:
        """The delete record ``f`` removed another registration than ``own``. A record
        whose head is ``""`` (Redis had lost it) removed whatever ``owner`` held:
        of another node's write, ours (this node writes a key back whole, never
        dropping it, and deletes a dead agent's head-less entry only itself)."""
        head = f[b"h"]
        return owner != self._sh.node or (head != b"" and own.head != head.decode())

    def _mirror_shows(self, key: Hashable, own: Own) -> bool:
        """The mirror shows ``own``, this node's live registration of ``key`` (holding mlock)."""
        sh = self._sh
        held = sh.entries.get(key)
        return held is not None and held.node == sh.node and held.agent is own.agent

    def _stop_watching(self, key: Hashable, own: Own, released: list[Monitor]) -> None:
        """Forget ``own`` and queue its monitor for release (holding mlock)."""
        del self._sh.own[key]
        if own.monitor is not None:
            released.append(own.monitor)

    # ------------------------------------------------------------------ resync

    def resync(self) -> None:
        """Replace the mirror by a fresh snapshot, queueing the differences as
        events (holding wlock; part of the recovery). The thread recovering
        delivers them once it released wlock (a writer) or hands them off (the
        lease thread): never under wlock, where a slow listener would stop the
        heartbeats and every write."""
        sh = self._sh
        reply = sh.call(
            "taking a snapshot",
            sh.scripts["snapshot"].run,
            sh.client,
            sh.keys,
            SnapshotArgs(sh.maxlen).argv(),
        )
        ver, sid, heads, metas = int(reply[0]), reply[1], reply[2], reply[3]
        meta_by = dict(zip(metas[::2], metas[1::2], strict=True))
        orphans: list[tuple[Hashable, str, str]] = []
        events: list[RegistryEvent] = []
        with sh.mlock:
            doubtful = self.holds.doubtful(heads, sh.entries, self._read_head)
        # Does the snapshot's history hold the deletes of the registrations it
        # brings back? (A round trip only then, so outside mlock: the tail and
        # the monitors go on; the rest is decided on the mirror as it is below.)
        # Race: a tail batch read before the fault may still be applied between
        # the two locked parts (the generation moves only below); a delete it
        # brings was not checked, so its registration is told as before, never
        # held unchecked. A record trimmed (below the stream's first one) counts
        # as kept: told at once, never hidden by ordinary trimming; one trimmed
        # between the pipeline's reads (not atomic) reads as lost: held, at most
        # two leases.
        kept = (
            sh.call(
                "checking the change stream",
                deletes_kept,
                sh.client.pipeline(transaction=False),
                sh.k_log,
                doubtful,
            )
            if doubtful
            else set()
        )
        with sh.mlock:
            fresh = self._snapshot_entries(heads, meta_by, orphans)
            m = sh.mirror
            if doubtful or self.holds.held:
                self.holds.hold(fresh, sh.entries, doubtful, kept)
            missing_own = self._drop_missing(fresh, ver, events)
            self._put_fresh(fresh, ver, events)
            m.rebase(ver)
            sh.tail_v = ver
            sh.sid = sid
            sh.gen += 1
            sh.queue(events)  # in mirror order (under mlock), delivered by the caller
            sh.applied.notify_all()
        if missing_own:
            sh.link.lease_lost("Redis lacks live registrations of ours")
        for orphan in orphans:
            sh.jobs.put(("orphan", orphan))

    def _read_head(self, key: Hashable, ek: str, head: str) -> Entry | None:
        """The entry of a snapshot's head (holding mlock), metadata aside."""
        return self._sh.entry_from_head(key, ek, head, b"{}", [])

    def _snapshot_entries(
        self,
        heads: list[bytes],
        meta_by: dict[bytes, bytes],
        orphans: list[tuple[Hashable, str, str]],
    ) -> dict[Hashable, Entry]:
        """The entries of a snapshot's heads and metadata (holding mlock); this
        node's registrations take Redis's copy of their metadata."""
        sh = self._sh
        fresh: dict[Hashable, Entry] = {}
        unreadable = 0
        for ekb, head_b in zip(heads[::2], heads[1::2], strict=True):
            try:
                ek, head = ekb.decode(), head_b.decode()
                key = decode_key(ek)
                meta = meta_by.get(ekb)
                # Redis lost this entry's metadata (the meta hash evicted or deleted):
                # never take "{}" for the truth. Ours: left out, so the recovery
                # writes it back whole; another node's: the mirror's copy (its owner
                # writes its own back).
                own = sh.own.get(key)
                if meta is None and own is not None and own.head == head:
                    continue
                entry = self._snapshot_entry(key, ek, head, meta, orphans)
            except UNREADABLE:
                # An entry nobody can read (its key, head or metadata written by
                # something else): left out, as the tail leaves out a stream record
                # it cannot read. Raised, it failed every snapshot: a node that
                # needed a resync never connected again, a new one never started.
                unreadable += 1
                continue
            if entry is not None:
                fresh[key] = entry
                if own is not None and entry.node == sh.node and meta and own.meta != meta:
                    # Redis's copy is the truth (an update whose reply was lost landed).
                    own.meta, own.ix = meta, sh.ix_for(entry.metadata)
        if unreadable:
            log.warning(
                "node %s: %d entr(ies) in Redis could not be read (not written by this "
                "library?): left out of the mirror",
                sh.node,
                unreadable,
            )
        return fresh

    def _snapshot_entry(
        self,
        key: Hashable,
        ek: str,
        head: str,
        meta: bytes | None,
        orphans: list[tuple[Hashable, str, str]],
    ) -> Entry | None:
        """One snapshot entry (holding mlock); metadata Redis lost (None) is the
        mirror's copy of that same registration, never taken as ``{}``."""
        sh = self._sh
        entry = sh.entry_from_head(key, ek, head, meta or b"{}", orphans)
        if entry is not None and meta is None:
            held = sh.entries.get(key)
            if held is not None and same_registration(held, entry):
                return held
        return entry

    def _drop_missing(
        self, fresh: dict[Hashable, Entry], ver: int, events: list[RegistryEvent]
    ) -> bool:
        """Remove from the mirror the entries the snapshot ``fresh`` lacks (holding
        mlock), except this node's live ones; True if it lacks one of those."""
        sh = self._sh
        m = sh.mirror
        missing_own = False
        for key, held in list(sh.entries.items()):
            if key in fresh:
                continue
            own = sh.own.get(key)
            if own is not None and held.node == sh.node:
                # Ours and alive, but Redis does not have it: keep it, re-assert.
                missing_own = True
                continue
            m.remove(key, ver)
            events.append(RegistryEvent("unregistered", held, reason="unregistered"))
        return missing_own

    def _put_fresh(
        self, fresh: dict[Hashable, Entry], ver: int, events: list[RegistryEvent]
    ) -> None:
        """Put into the mirror the snapshot's entries it lacks or holds differently
        (holding mlock)."""
        sh = self._sh
        m = sh.mirror
        for key, new in fresh.items():
            old = sh.entries.get(key)
            if old is None:
                m.put(new, ver)
                events.append(RegistryEvent("registered", new))
            elif not same_registration(old, new):
                # Confirmed by the snapshot: another registration holds the key.
                m.put(new, ver)
                events.append(RegistryEvent("unregistered", old, reason="replaced"))
                events.append(RegistryEvent("registered", new))
            elif old.metadata != new.metadata:
                m.put(new, ver)
                events.append(RegistryEvent("updated", new))
