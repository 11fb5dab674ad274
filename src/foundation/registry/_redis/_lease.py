"""The lease of one ``RedisRegistry`` node: heartbeat, reaping, recovery, deletes.

One thread renews this node's lease every ``heartbeat`` seconds (the script
also reaps expired leases, after applying the global-outage rule of
``_scripts``: at most ``REAP_CHUNK`` entries, the rest by ``REAP`` scripts
between heartbeats, a chunk each), deletes in Redis the entries of local agents
that died, and runs the recovery whenever the link needs one:

1. heartbeat (learns whether our lease survived; renews it);
2. re-assert every live local registration with its *current* metadata, in
   one pipelined round trip (mode ``"a"``: a no-op for those Redis still has
   unchanged; a key another node took meanwhile is a :class:`Conflict`);
3. resynchronise the mirror from a snapshot (``Tail.resync``).

Failures are retried with full-jitter backoff capped below the heartbeat
interval (so a node that recovers late is never reaped for it). The loop body
never lets an exception out: an unexpected one is logged with its traceback
and the loop carries on.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from foundation._pause_clock import PAUSES
from foundation._redis_memory_policy import EvictionCheck
from foundation._retry import RetryBackoff
from foundation.errors import BackendUnavailable, FoundationError
from foundation.liveness import Monitor, is_alive
from foundation.registry._redis import _scripts
from foundation.registry._redis._registry import Conflict
from foundation.registry._redis._scripts import (
    HeartbeatArgs,
    ReapArgs,
    RegisterArgs,
    UnregisterArgs,
)
from foundation.registry._redis._shared import Job, Own, Shared, down_fields, expand_record, s
from foundation.registry._redis._state import log
from foundation.registry._redis._tail import Tail
from foundation.registry._types import RegistryEvent

__all__ = ["Lease"]


class Lease:
    """Heartbeat, recovery and background deletes of one node."""

    def __init__(self, shared: Shared, tail: Tail) -> None:
        import socket

        self._sh = shared
        self._tail = tail
        self._retry: list[Job] = []
        # Keys whose stale-entry check waits for the tail: version of our delete
        # (guarded by mlock; see _after_down_deleted).
        self._stale: dict[Hashable, int] = {}
        self._info = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        )
        # Warns once if the server may evict our keys (checked at each recovery).
        self.memory_policy = EvictionCheck(
            log, f"node {shared.node} (namespace {shared.prefix[1:-1]!r})", shared.url
        )
        # Our lease was found gone (a heartbeat's ``had`` was 0, ours holding
        # registrations) and no re-assert pass has completed since: the conflicts
        # that pass finds were taken while the lease was lost (the warning says
        # so). Kept across failed recoveries: the heartbeat of a retry finds the
        # lease the failed one renewed. Race: the lease thread's own heartbeat sets
        # it without wlock while a writer's recovery reads it; a plain bool, and the
        # worst a stale read does is pick the other wording of that warning.
        self._lease_gone = False
        # Set by each heartbeat: why Redis's data went back (its change counter is
        # below a version this node's mirror reached), or "" when it did not.
        self.went_back = ""
        # (time.monotonic(), PAUSES.paused()) as this node's last successful
        # heartbeat was sent (None: none yet). Its renewal came after: a gap the
        # next heartbeat finds longer than the time since cannot be an outage;
        # how long this process did not run since is the part of a gap that was
        # this process's silence (_log_gap).
        self._last_beat_sent: tuple[float, float] | None = None
        # The last heartbeat (or REAP chunk) left expired leases unreaped: the
        # loop runs REAP chunks between its other work until one says none is
        # left (or fails: the next heartbeat says again). Race: a writer's
        # recovery sets it while the lease thread reads it; a plain bool, and a
        # stale read only delays the next chunk until the next heartbeat.
        self._reap_more = False
        self.thread = threading.Thread(
            target=self._loop, name=f"foundation-redis-lease[{shared.node}]", daemon=True
        )

    # ------------------------------------------------------------------ heartbeat

    def heartbeat(self) -> bool:
        """Renew our lease (reaping a chunk of expired ones: ``_reap_more`` says
        whether the loop has more to reap); False if our lease had been lost."""
        sh = self._sh
        args = HeartbeatArgs(
            sh.maxlen, sh.node, int(sh.ttl * 1000), self._info, sh.grace_ms, _scripts.REAP_CHUNK
        )
        # Race: the tail or a resync moves tail_v while the script runs; every
        # value it takes is a version Redis had reached (read from Redis), and
        # Redis's counter only grows in one history: so a counter below it is
        # older data, never a race. The mirror's own writes count too: they can
        # be past the tail (it has not read back another node's record before
        # them), and older data whose counter is at the tail's version would
        # pass unnoticed (Redis lacked them for good).
        seen = max(sh.tail_v, sh.mirror.reached)
        # Race: this process may stop running anywhere in the call, before the
        # request is sent (the GIL lost in the pool's socket check to a thread
        # that starts a full collection) or after Redis answered (the reply
        # unread): Redis saw a silence that was ours. So the pauses are read
        # around the whole call, from one heartbeat's send to the next's reply.
        sent = (time.monotonic(), PAUSES.paused())
        reply = sh.script("heartbeat", args, "renewing the lease")
        sh.last_beat_ok = mono = time.monotonic()
        # Race: a writer's recovery (under wlock) and the lease thread's own
        # heartbeat (without it) may both be here: the worst a lost update does
        # is pick the other wording of the gap's warning.
        prev, self._last_beat_sent = self._last_beat_sent, sent
        since_ours, paused = (
            (None, 0.0) if prev is None else (mono - prev[0], max(0.0, PAUSES.paused() - prev[1]))
        )
        self._log_gap(int(reply[3]) if len(reply) > 3 else 0, since_ours, paused)
        ver = int(reply[4]) if len(reply) > 4 else seen
        self.went_back = (
            f"Redis went back to older data in place (its change counter is at {ver}, "
            f"this node had seen {seen}: DEBUG RELOAD of an old dump, SWAPDB, or the "
            "counter itself lost)"
            if ver < seen
            else ""
        )
        self._reap_more = len(reply) > 5 and bool(int(reply[5]))
        had = bool(int(reply[0]))
        if not had and sh.own:
            self._lease_gone = True
        return had

    def _reaping(self) -> bool:
        """A reap is unfinished and may go on now (not while the link recovers:
        the recovery's heartbeat says again whether one is left)."""
        return self._reap_more and not self._sh.link.needs_recovery()

    def _reap_chunk(self) -> None:
        """Run the next chunk of an unfinished reap (``REAP``): a script of its own,
        so Redis serves other clients between chunks, and the lease thread's
        heartbeat (its renewal) never waits behind more than one chunk.

        Race: other nodes reap the same expired leases at the same time, and a
        node being reaped may come back and renew its lease between two chunks:
        each chunk re-reads, at its own time, which leases expired and who owns
        each entry (see ``_scripts``, ``forget_node``)."""
        sh = self._sh
        args = ReapArgs(sh.maxlen, sh.grace_ms, _scripts.REAP_CHUNK)
        try:
            reply = sh.script("reap", args, "reaping expired leases")
        except FoundationError:
            self._reap_more = False  # the next heartbeat says whether any is left
            return
        self._reap_more = bool(int(reply[1]))

    def _log_gap(self, gap: int, since_ours: float | None, paused: float) -> None:
        """Say what the heartbeat's ``heal`` did: ``gap`` ms (> 0: every deadline
        extended, < 0: moved back; 0: nothing). ``since_ours``: seconds since this
        node's previous successful heartbeat was sent (None: this is its first);
        ``paused``: seconds this process did not run since then."""
        sh = self._sh
        if gap < 0:
            log.warning(
                "node %s: Redis's clock went back %d ms (its last heartbeat is dated "
                "after its time now: restarted on a host whose clock is behind, or its "
                "clock was stepped back): every lease deadline was moved back as much, "
                "so a dead node's entries are not kept that much longer",
                sh.node,
                -gap,
            )
            return
        if not gap:
            return
        sh.lease_extensions += 1
        if since_ours is not None and gap > since_ours * 1000 + max(1000, sh.grace_ms):
            # This node renewed its lease since_ours s ago, so no outage lasted
            # `gap`: the server's clock jumped ahead, or Redis went back to older
            # data (an old snapshot, whose last heartbeat is old).
            log.warning(
                "node %s: Redis says no node renewed its lease for %d ms, but this node "
                "did %.1f s ago: the server's clock jumped ahead or Redis went back to "
                "older data (an old snapshot); every lease deadline was extended by that "
                "gap before reaping, so no live node is reaped for it",
                sh.node,
                gap,
                since_ours,
            )
            return
        if gap <= sh.grace_ms + paused * 1000:
            self._log_stall(gap, since_ours, paused)
            return
        log.warning(
            "node %s: no node renewed its lease for %d ms (a global outage, not "
            "dead nodes): every lease deadline was extended by that gap before reaping",
            sh.node,
            gap,
        )

    def _log_stall(self, gap: int, since_ours: float | None, paused: float) -> None:
        """Say that the ``gap`` ms silence was this process's own: it did not run
        for ``paused`` s since its previous heartbeat was sent (a long
        garbage-collector pause, which stops every thread: a big ``register_many``
        makes several; a long C call holding the GIL; CPU starvation; the process
        stopped), and no other node renewed meanwhile (none runs, or all run in
        this process). Not an outage: had it run, the gap would have been within
        the grace. WARNING only when our lease ran out during it (kept by the gap:
        another node's heartbeat would have reaped it)."""
        sh = self._sh
        ran_out = since_ours is not None and since_ours > sh.ttl
        log.log(
            logging.WARNING if ran_out else logging.INFO,
            "node %s: this process did not run for %d ms since its last heartbeat (a "
            "long garbage-collector pause or C call holding the GIL, CPU starvation, or "
            "the process was stopped) and no other node renewed its lease meanwhile: "
            "every lease deadline was extended by the %d ms gap before reaping (the "
            "silence was this process's, not an outage)",
            sh.node,
            paused * 1000,
            gap,
        )

    # ------------------------------------------------------------------ recovery

    def recover_locked(self) -> None:
        """Heartbeat, re-assert, resync (holding wlock). CONNECTED on success,
        unless a new fault was reported meanwhile."""
        sh = self._sh
        epoch = sh.link.epoch
        had = self.heartbeat()
        self.memory_policy.check(sh.client)  # Redis answered: warn if it may evict our keys
        if not had and sh.own:
            sh.link.lease_lost("the heartbeat found our lease gone")
            epoch = sh.link.epoch  # this recovery handles it
        # Race: our versions still queued for the tail (own_ahead) belong to the
        # history being recovered from. After an in-place switch that kept the
        # connections (SWAPDB), the re-assert below may be given one of those
        # versions again, and a tail already blocked in XREAD would read it and
        # take this recovery's own record for proof of another time travel: a
        # second, needless recovery (14/20 runs). The resync below rebuilds the
        # mirror (emptying the queue anyway); no write of ours runs meanwhile
        # (we hold wlock), so forgetting them now loses nothing.
        with sh.mlock:
            sh.mirror.own_ahead.clear()
        lost = self._reassert()
        self._lease_gone = False
        self._tail.resync()
        if lost:
            # Reported only now that the mirror shows who holds those keys.
            with sh.mlock:
                sh.conflicts.extend(lost)
        if sh.link.recovered(epoch, "lease renewed, registrations re-asserted, mirror in sync"):
            sh.poke_tail()

    def _reassert(self) -> list[Conflict]:
        """Write back every live local registration Redis lacks (with its current
        metadata); returns the keys another node took meanwhile (it keeps them).

        Race: the re-assert runs before the snapshot, while the tail may be behind
        (a version gap, a cut connection: what made us recover). Another node may
        have unregistered or replaced one of our registrations on the stream past
        the tail's position: Redis lacks it because of that, not a loss, and
        writing it back would undo that unregister for every node (or report a
        conflict for a key taken on purpose). So the stream past the tail is read
        first (one round trip) and those registrations are given up as the tail
        would have (a reap of our expired lease aside: those live on, re-asserted);
        a delete landing after that read is caught by the script itself (``since``:
        the last id read, so it scans only what came after). A delete record
        trimmed away before anyone read it (a gap) cannot be told from a loss: that
        registration is written back, as before.
        """
        sh = self._sh
        with sh.mlock:
            owns = [(k, o) for k, o in sh.own.items() if not o.pending and is_alive(o.agent)]
            start = sh.sid
        conflicts: list[Conflict] = []
        if not owns:
            return conflicts
        released: list[Monitor] = []
        try:
            owns, since = self._drop_deleted_unseen(owns, s(start), released)
            results = self._reassert_round_trip(owns, since) if owns else []
            written, failure = self._reassert_replies(owns, results, conflicts, released)
        finally:
            for mon in released:
                mon.demonitor()
        self._record_reassert(written, conflicts)
        if failure is not None:
            # Keep the conflicts found so far (their owns are gone): report them.
            with sh.mlock:
                sh.conflicts.extend(conflicts)
            raise failure
        return conflicts

    def _drop_deleted_unseen(
        self, owns: list[tuple[Hashable, Own]], start: str, released: list[Monitor]
    ) -> tuple[list[tuple[Hashable, Own]], str]:
        """Give up the ``owns`` another node deleted on the stream past ``start``
        (our tail's position), as the tail would on applying that record; returns
        the others and the last stream id read (``start`` if none)."""
        sh = self._sh
        records = sh.call(
            "reading the change stream before re-asserting",
            sh.client.xrange,
            sh.k_log,
            min="(" + start,
            max="+",
        )
        if not records:
            return owns, start
        # In stream order: a delete counts only if it comes after the record of
        # the registration we hold now. Race: a delete recorded with a lost head
        # (b"": "whatever this node held") of an EARLIER registration of the key,
        # then our own register of it again (replace=True), both past the tail:
        # the delete is not of the one we hold (giving it up left it in Redis
        # with no monitor: cleaned up as an orphan, a live agent's key gone).
        heads = {own.ek.encode(): own.head.encode() for _, own in owns}
        deleted: set[bytes] = set()
        for _, f in records:
            for g in _single_records(f):
                ek = g.get(b"k", b"")
                head = heads.get(ek)
                if head is None:
                    continue
                h = g.get(b"h")
                if g.get(b"op") == b"r" and h == head:
                    deleted.discard(ek)  # ours came after: no earlier delete counts
                elif (
                    g.get(b"op") == b"d"
                    and g.get(b"w") != sh.node_b
                    and g.get(b"dr") != b"lease_expired"
                    and (h == head or (h == b"" and g.get(b"n") == sh.node_b))
                ):
                    deleted.add(ek)
        kept: list[tuple[Hashable, Own]] = []
        with sh.mlock:
            for key, own in owns:
                if own.ek.encode() not in deleted:
                    kept.append((key, own))
                elif sh.own.get(key) is own:
                    # The resync that follows drops it from the mirror (an event).
                    del sh.own[key]
                    if own.monitor is not None:
                        released.append(own.monitor)
        return kept, s(records[-1][0])

    def _reassert_round_trip(self, owns: list[tuple[Hashable, Own]], since: str) -> list[Any]:
        """Send ``REGISTER`` (mode ``"a"``) for every one of ``owns`` in one pipeline;
        a reply or an exception per registration. ``since``: see ``_reassert``."""
        sh = self._sh
        pipe = sh.client.pipeline(transaction=False)
        for _, own in owns:
            args = RegisterArgs(
                sh.maxlen,
                sh.node,
                own.ek,
                own.head,
                own.meta,
                own.ix,
                "a",
                False,
                "",
                sh.grace_ms,
                since,
                own.at,
            )
            sh.script("register", args, "re-asserting", client=pipe)
        results: list[Any] = sh.call(
            "re-asserting our registrations", pipe.execute, raise_on_error=False
        )
        return results

    def _reassert_replies(
        self,
        owns: list[tuple[Hashable, Own]],
        results: list[Any],
        conflicts: list[Conflict],
        released: list[Monitor],
    ) -> tuple[int, FoundationError | None]:
        """Apply the re-assertion replies; returns how many were written back and
        the first failure (None if none)."""
        sh = self._sh
        written = 0
        failure: FoundationError | None = None
        for (key, own), reply in zip(owns, results, strict=True):
            if isinstance(reply, Exception):
                failure = failure or sh.reply_error(reply, f"re-asserting {key!r:.200}")
                continue
            status = reply[0]
            if status in (b"OK", b"UPDATED"):
                written += 1  # written back, or its metadata brought up to date
            if not own.at and status in (b"OK", b"SAME", b"UPDATED"):
                # Its place in the server's order, if we did not know it (the
                # reply of the register that made it was lost): OK's record, or
                # the one SAME and UPDATED name from P:at ("" if unknown).
                own.at = _at_of(status, reply)
            if status == b"EXISTS":
                # Another node took the key while our lease was lost: it keeps it.
                self._yield_key(key, own, reply, conflicts, released)
            elif status == b"GONE":
                # Another node unregistered it after our look at the stream (the
                # script saw its delete): given up, as the tail would.
                with sh.mlock:
                    if sh.own.get(key) is own:
                        del sh.own[key]
                        if own.monitor is not None:
                            released.append(own.monitor)
            elif status == b"NOLEASE":
                failure = failure or BackendUnavailable(
                    f"Redis at {sh.url} dropped our lease while re-asserting"
                )
        return written, failure

    def _yield_key(
        self,
        key: Hashable,
        own: Own,
        reply: list[Any],
        conflicts: list[Conflict],
        released: list[Monitor],
    ) -> None:
        """Give up ``own`` (if still ours) to the node an EXISTS ``reply`` names: a conflict."""
        sh = self._sh
        with sh.mlock:
            if sh.own.get(key) is own:
                del sh.own[key]
                conflicts.append(Conflict(key, own.agent, s(reply[1]), time.time()))
                if own.monitor is not None:
                    released.append(own.monitor)

    def _record_reassert(self, written: int, conflicts: list[Conflict]) -> None:
        """Count and log the outcome of one re-assertion pass."""
        sh = self._sh
        if written:
            sh.reasserts += 1
            sh.reasserted += written
            log.info("node %s re-asserted %d registration(s)", sh.node, written)
        if not conflicts:
            return
        keys = ", ".join(repr(c.key) for c in conflicts[:10])
        if self._lease_gone:
            log.warning(
                "node %s gave up %d key(s): other nodes registered them while this "
                "node's lease was lost (reaped, or lost by Redis); its agents live on, "
                "unregistered (see conflicts()): %s",
                sh.node,
                len(conflicts),
                keys,
            )
        else:
            # No lease was lost: Redis no longer held these registrations of ours
            # (it lost data: a restart, a failover, an eviction; or a write of ours
            # whose reply was lost, an unregister or a replace, had landed) and
            # another node registered the keys after that.
            log.warning(
                "node %s gave up %d key(s): Redis no longer held this node's "
                "registration of them (lost by Redis, or removed by a write of this "
                "node whose reply was lost) and other nodes hold them now; its agents "
                "live on, unregistered (see conflicts()): %s",
                sh.node,
                len(conflicts),
                keys,
            )

    # ------------------------------------------------------------------ deletes

    def flush_pending_down(self, key: Hashable) -> None:
        """Delete in Redis the entry of a local agent that died (holding wlock)."""
        sh = self._sh
        if key not in sh.pending_downs:
            # The common case, without the lock. Race: a down queued right after
            # this check is not lost: its job makes the lease thread flush it.
            return
        with sh.mlock:
            pending = sh.pending_downs.pop(key, None)
        if pending is None:
            return
        ek, head, down = pending
        dr, dc, ds = down_fields(down)
        args = UnregisterArgs(sh.maxlen, ek, "down", dr, dc, ds, head, sh.node)
        try:
            v = int(sh.script("unregister", args, f"deleting the dead agent of {key!r:.200}"))
        except FoundationError:
            with sh.mlock:
                sh.pending_downs.setdefault(key, pending)
            raise
        if v:
            self._after_down_deleted(key, v)

    def _after_down_deleted(self, key: Hashable, v: int) -> None:
        """Bring the mirror to Redis's delete (version ``v``) of this node's dead
        agent's registration of ``key`` (holding wlock).

        Race (a lost "unregistered" event): the mirror never shows the
        registration just deleted (on_down removed it, telling "down"; a writer
        whose agent died mid-script never puts it). An entry it shows is an
        older one Redis removed before: by another node's record the tail has
        not applied yet, or by data Redis lost with no record. Removed here at
        ``v`` straight away, its end was never told and the tail then skipped
        that older record (version passed). So it is removed only once the
        tail applied every record before ``v``, with their events: an entry
        still shown then is truly stale (no record will remove it, it would
        stay for good) and is dropped as a resync drops it (``_drop_stale``).
        Our own record ``v`` only counts as reached (the tail skips it).

        Never waits for the tail here (review: this runs holding wlock, and a
        tail parked until a recovery, which needs wlock, made every such write
        wait a whole ``op_timeout``, once per key of a batch, past a short
        lease): a tail still behind leaves the look to the lease thread, after
        each heartbeat or recovery that succeeded (``_check_stale``).
        """
        sh = self._sh
        with sh.mlock:
            if sh.tail_v >= v - 1:
                self._drop_stale(key, v)
            elif self._shows_stale(key, v):
                # Race: the tail's older records may still come; removing the
                # entry now would skip them (their events lost).
                self._stale[key] = max(v, self._stale.get(key, 0))
            sh.mirror.reached = max(sh.mirror.reached, v)
        sh.hand_off()

    def _check_stale(self) -> None:
        """Drop the stale entries whose check ``_after_down_deleted`` left to
        the lease thread, once the tail applied every record before theirs
        (without waiting: run after each heartbeat or recovery that succeeded)."""
        sh = self._sh
        with sh.mlock:
            for key, v in list(self._stale.items()):
                if not self._shows_stale(key, v):
                    del self._stale[key]  # a record (or a resync) settled it
                elif sh.tail_v >= v - 1:
                    del self._stale[key]
                    self._drop_stale(key, v)
        sh.hand_off()

    def _shows_stale(self, key: Hashable, v: int) -> bool:
        """The mirror shows an entry of ``key`` older than ``v`` that is not a
        live local registration (holding mlock)."""
        sh = self._sh
        return key in sh.entries and key not in sh.own and sh.mirror.is_newer(key, v)

    def _drop_stale(self, key: Hashable, v: int) -> None:
        """Remove the stale entry of ``key`` still shown once the tail applied
        every record before ``v`` (holding mlock), told as a resync tells an
        entry Redis lost: ``unregistered`` with reason ``"unregistered"``.

        Race: Redis lost the data without a record (the entry's fields removed,
        the lease kept), so no record of the tail will ever remove it; left,
        it would stay for good, unwatched. Removed at ``v``: any later record
        of ``key`` still applies."""
        sh = self._sh
        if not self._shows_stale(key, v):
            return
        old = sh.mirror.remove(key, v)
        if old is not None:
            sh.queue([RegistryEvent("unregistered", old, reason="unregistered")])

    def _delete_orphan(self, key: Hashable, ek: str, head: str) -> None:
        """Delete an entry of this node that no live local registration backs."""
        sh = self._sh
        with sh.mlock:
            if (own := sh.own.get(key)) is not None and own.head == head:
                return  # it is ours after all (registered meanwhile)
        args = UnregisterArgs(sh.maxlen, ek, "down", "noproc", "", "", head, "")
        sh.script("unregister", args, f"deleting an orphan entry {key!r:.200}")

    def _run_job(self, job: Job) -> None:
        """Run a delete job; a failed one is retried after the next heartbeat or
        recovery that succeeds (``_run_retries``).

        Race: agents dying on a frozen Redis queue one job each; every job
        sent after the first timeout waited a timeout of its own holding
        wlock, and public writers queued behind them (up to ``4 * op_timeout``,
        where the documented bound is about one). So a job fails fast too
        (``fast=True``): while a call timed out moments ago, none succeeded
        since, it sends nothing and goes back to ``_retry`` with its pending
        delete kept (``flush_pending_down`` pops it only once the lock is held):
        nothing is lost, the entry is deleted once Redis answers again.
        """
        kind, arg = job
        try:
            with self._sh.writing(public=False, fast=True):
                if kind == "down":
                    self.flush_pending_down(arg)
                elif kind == "orphan":
                    self._delete_orphan(*arg)
        except FoundationError:
            self._retry.append(job)

    def _run_retries(self) -> None:
        self._check_stale()
        retry, self._retry = self._retry, []
        for job in retry:
            self._run_job(job)

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        # The pause clock runs while a lease thread does: heartbeat() reads it.
        with PAUSES.running():
            self._beat_until_stopped()

    def _beat_until_stopped(self) -> None:
        sh = self._sh
        # Capped below the heartbeat interval: after a global outage every node
        # must renew its (extended) lease well before it runs out.
        backoff = RetryBackoff(base=min(0.05, sh.beat / 4), cap=min(2.0, sh.beat))
        plan = _Schedule(next_beat=time.monotonic() + sh.beat)
        while not sh.stop.is_set():
            try:
                reaping = self._reaping()
                # While reaping, a queued job is taken without waiting.
                job = self._next_job(time.monotonic() if reaping else self._due(plan))
                if sh.stop.is_set():
                    return
                if job is not None and job[0] != "wake":
                    self._run_job(job)
                if time.monotonic() < self._due(plan):
                    # Race: the renewal comes first: a chunk runs only while no
                    # heartbeat is due, so a long reap delays the lease by one
                    # chunk at most (and the heartbeat reaps one itself).
                    if reaping and job is None:
                        self._reap_chunk()
                    continue
                if sh.link.needs_recovery():
                    self._scheduled_recovery(plan, backoff)
                    continue
                plan.next_beat = time.monotonic() + sh.beat
                self._scheduled_heartbeat(plan, backoff)
            except Exception:
                log.exception("lease thread of node %s: unexpected error (carrying on)", sh.node)
                if sh.stop.wait(backoff.next()):
                    return

    def _due(self, plan: _Schedule) -> float:
        """When the loop must act next: retry the recovery, if one is due, else beat."""
        return plan.retry_at if self._sh.link.needs_recovery() else plan.next_beat

    def _next_job(self, due: float) -> Job | None:
        """The next queued job, or None once ``due`` (``time.monotonic()``) passes."""
        try:
            return self._sh.jobs.get(timeout=max(0.0, due - time.monotonic()))
        except queue.Empty:
            return None

    def _scheduled_recovery(self, plan: _Schedule, backoff: RetryBackoff) -> None:
        """Run a due recovery from the loop; on failure (or a new fault) retry later."""
        sh = self._sh
        try:
            with sh.writing(public=False):
                self.recover_locked()
        except FoundationError:
            plan.retry_at = time.monotonic() + backoff.next()
            return
        finally:
            # The resync's events, once wlock is released, by a courier: a slow
            # listener must not delay this thread's heartbeats (the lease).
            sh.hand_off()
        # From the recovery's own heartbeat, not its end: a recovery longer than
        # the grace minus a beat (re-asserting many keys) otherwise left the next
        # heartbeat a silence past the grace, a false global outage (every lease
        # extended, a dead node's too). Past already: the loop beats at once.
        plan.next_beat = min(time.monotonic(), sh.last_beat_ok) + sh.beat
        if sh.link.needs_recovery():
            # A new fault was reported during the recovery: again, soon.
            plan.retry_at = time.monotonic() + backoff.next()
            return
        backoff.reset()
        self._run_retries()

    def _evicted(self) -> list[str]:
        """The hashes of this node's registrations Redis no longer holds, while the
        server may evict them (an ``allkeys-*`` policy, or one ``INFO`` did not
        tell): one round trip per heartbeat then, none otherwise.

        Eviction takes whole keys, and ``{ns}:owner``, ``{ns}:meta`` and
        ``{ns}:head`` hold a field per registration (our ``owned`` set a member):
        one of ours missing from any means the key went (another node's
        re-assert may have created it again meanwhile, without ours: so a field,
        not the key, is looked at); the re-assert writes each back. Not looked
        at: the index keys (docs/redis.md, failure table).
        Race: another node unregisters (or replaces) that registration between
        the look at ``own`` and the read, and our tail has not applied it yet:
        not an eviction (a re-assert would undo that unregister). So when one is
        missing, the stream past our tail's position at the look is read too (a
        second round trip), and a delete of it there means nothing was lost.
        """
        sh = self._sh
        if not self.memory_policy.may_evict:
            return []
        with sh.mlock:  # the sample and the tail position of one moment
            own = next((o for o in sh.own.values() if not o.pending), None)
            start = sh.sid
        if own is None:
            return []
        sample = own.ek
        keys = [f"{sh.prefix}:owner", f"{sh.prefix}:meta", f"{sh.prefix}:head"]
        owned = f"{sh.prefix}:owned:{sh.node}"

        def read() -> list[Any]:
            with sh.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hexists(key, sample)
                pipe.sismember(owned, sample)
                return list(pipe.execute())

        found = sh.call("checking for evicted keys", read)
        lost = [key for key, there in zip([*keys, owned], found, strict=True) if not there]
        if not lost:
            return []
        records = sh.call(
            "checking for evicted keys",
            sh.client.xrange,
            sh.k_log,
            min="(" + s(start),
            max="+",
            count=int(sh.maxlen),
        )
        ek, head = sample.encode(), own.head.encode()
        if any(
            f.get(b"op") == b"d" and f.get(b"k") == ek and f.get(b"h") in (head, b"")
            for _, f in records
        ):
            return []  # unregistered meanwhile, not evicted
        return lost

    def _scheduled_heartbeat(self, plan: _Schedule, backoff: RetryBackoff) -> None:
        """Renew the lease from the loop; a lost lease or a failure schedules a
        recovery."""
        sh = self._sh
        try:
            if not self.heartbeat() and sh.own:
                # Our lease was gone: reaped while we were frozen or cut
                # off, or Redis restarted empty. Recover at once.
                sh.link.lease_lost("the heartbeat found our lease gone")
                plan.retry_at = 0.0
                return
            if self.went_back:
                # No connection was cut, so nothing else notices before the next
                # write: Redis serves registrations that were deleted since, and
                # lacks newer ones. Recover as after a restart (re-assert what it
                # lacks, delete our own it holds without a live agent, resync).
                sh.link.resync_needed(self.went_back)
                plan.retry_at = 0.0
                return
            lost = self._evicted()
            if lost:
                # The lease is there but our registrations are not: Redis evicted
                # them. The recovery's re-assert writes back what Redis lacks.
                sh.link.lease_lost(
                    f"Redis lost this node's registrations ({', '.join(lost)} missing: "
                    "evicted? set maxmemory-policy noeviction)"
                )
                plan.retry_at = 0.0
                return
        except FoundationError:
            plan.retry_at = time.monotonic() + backoff.next()
            return
        backoff.reset()
        self._run_retries()


@dataclass(slots=True)
class _Schedule:
    """When the lease thread next renews the lease and next retries a recovery
    (``time.monotonic()`` values)."""

    next_beat: float
    retry_at: float = 0.0


def _at_of(status: bytes, reply: list[Any]) -> str:
    """The stream id ordering a registration, from a re-assert's ``reply``
    (``""``: none, or not known)."""
    index = {b"OK": 5, b"SAME": 1, b"UPDATED": 3}.get(status)
    if index is None or len(reply) <= index:
        return ""
    return s(reply[index])


def _single_records(fields: dict[bytes, bytes]) -> list[dict[bytes, bytes]]:
    """The single records of one change record; none for a record nobody can read
    (no ``op``, a malformed bulk record: written by something else), which says
    nothing about our registrations (the tail logs it when it meets it)."""
    if fields.get(b"op") not in (b"r", b"d", b"u", b"R"):
        return []
    try:
        return [g for _, g in expand_record(0, fields)]
    except (KeyError, ValueError):
        return []
