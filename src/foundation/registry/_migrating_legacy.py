"""Legacy mirrors of a ``MigratingRegistry`` over a shared legacy backend (rule 7).

With the flag on, the target answers and the legacy side is a mirror. A
shared legacy backend may be remote (a ``RedisRegistry``: a frozen server
costs up to its ``op_timeout`` per call), so a flag-on write never calls it
under the facade lock. It *decides* under the lock (the record, the view's
``legacy_retry`` for a register, its ``inbox`` for an unregister or an
update) and asks for a *pass*; the pass *applies* outside the lock, one
thread at a time (whoever holds ``_legacy_retry_lock``): each step is planned
under the facade lock, the backends are called outside it, and the outcome
is booked under it again, re-checked against the record. The same pass
retries the registers the unavailable legacy side refused (listed
divergences) and catches the shared view up (rule 4). Writers only *try* the
pass lock: a writer whose try fails leaves its request to the running pass,
which looks again before it stops, so no writer waits behind another's
network call. A legacy read and a flag-off write first apply the passes asked
for, so after a flip back no answer lacks a live registration made while the
flag was on, nor shows one removed meanwhile. See rule 7 in the module
documentation of ``foundation.registry._migrating``.

Telemetry decided under the facade lock (``registry.divergence``,
``registry.mirror_skipped``) is queued and emitted once the thread holds no
lock of the facade (``_flush_out``), so a listener may call it back; so are
the ``subscribe()`` events a backend delivers in a pass's thread (another
writer's, or a remote change), which the pass delivers after releasing its
lock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Final, NamedTuple

from foundation import telemetry
from foundation.errors import BackendUnavailable, NotAlive, NotRegistered
from foundation.liveness import is_alive
from foundation.registry._migrating_divergences import _DivergenceBook
from foundation.registry._migrating_events import _LEGACY, _Call
from foundation.registry._migrating_views import _Record, _View
from foundation.registry._validation import short_repr

_GONE: Final = "gone"  # the target no longer holds the entry: nothing to retry
_FOREIGN: Final = "foreign"  # the legacy side holds the key for someone else (rule 2)
_DONE: Final = "done"  # the legacy side took the copy (or the metadata)
_DROPPED: Final = "dropped"  # the legacy copy is gone (removed, or its agent died)
_NOT_TRIED: Final[Any] = object()  # no register of the pass failed (a key may be None)
_UNMARKED: Final[Any] = object()  # a drop whose copy's agent is not known (no ``view.stale``)


class _LegacyPlan(NamedTuple):
    """One register of a legacy mirror (new, or refused and retried), planned
    under the facade lock."""

    key: Hashable
    agent: Any
    mine: Any  # the agent of our older legacy copy, replaceable (rule 2), or None
    gen: int  # the record's generation when planned (a later update changes it)
    writer: int  # the ident of the thread whose flag-on write it mirrors


def _take(lock: threading.RLock, blocking: bool) -> bool:
    """``lock.acquire(blocking)`` for a lock this thread does not hold yet,
    given back if that raises.

    Race: a Ctrl-C is raised at the first check after acquire() returned (its
    own end): the lock is taken then, yet the caller's ``try:`` that releases
    it is not entered: it stayed held for ever. The RLock's owner check tells
    whether it was taken. (No check point between our return and the caller's
    next instruction.)"""
    try:
        return lock.acquire(blocking)
    except BaseException:
        if lock._is_owned():  # type: ignore[attr-defined]
            lock.release()
        raise


def _deferred_reason(why: str, key: Hashable, failed: Hashable) -> str:
    """A deferred register's divergence: ``why`` is ``failed``'s own error (or,
    with no ``failed``, every key's: the legacy side says it is down)."""
    if failed is _NOT_TRIED or key == failed:
        return f"the legacy backend refused the mirror: {why}"
    return f"the legacy backend refused the mirror: not tried, a mirror before it failed: {why}"


class _CatchUp(NamedTuple):
    """One catch-up step of the shared view (rule 4), planned under the facade lock."""

    key: Hashable
    gen: int  # the view's mirror generation when planned
    new_gen: int  # the record's generation to copy (update); 0 for a drop
    agent: Any  # the record's agent (update), or None: drop the stale copy
    stale: Any = _UNMARKED  # a drop's: the agent of our copy (``view.stale``), if known


class _LegacyRetries(_DivergenceBook):
    """The legacy-mirror layer of ``MigratingRegistry`` (rule 7).

    The attributes below are set by ``MigratingRegistry.__init__``.
    """

    _finished: bool
    _closed: bool
    _pump_owner: int | None  # the thread applying target mirrors (_migrating_mirror)

    def _init_legacy_retries(self) -> None:
        """Set the pass state (called once, by ``MigratingRegistry.__init__``)."""
        # One pass at a time (whoever holds _legacy_retry_lock). Lock order:
        # _legacy_retry_lock, then the facade lock; nobody waits for the pass
        # lock while holding the facade lock (writers only try it, and only
        # after releasing the facade lock).
        self._legacy_retry_lock = threading.RLock()  # never re-entered: for _take's owner check
        self._legacy_retry_owner: int | None = None  # thread ident running a pass
        # A pass is asked for: the next _settle_legacy (after a write, before a
        # legacy read or a flag-off write) runs it once status() says the
        # legacy backend is available.
        self._legacy_retry_requested = False
        # Keys of registers asked for, neither applied nor listed as divergences
        # yet: a pass that finds the legacy side down lists them
        # (_legacy_retry_deferred; a pass that plans them takes them over).
        self._legacy_undecided: set[Hashable] = set()
        # The registers kept for retry (listed divergences) are due too, not only
        # the new ones: set by a flip, readiness() and co., a flag-off write, a
        # pass that stopped because the legacy side is down, or one in which a
        # legacy call succeeded (it is back). Else a pass plans only the new
        # ones, so a write costs no walk over every kept retry.
        self._legacy_retry_all = False
        # Telemetry events decided under the facade lock, emitted once it is
        # released (_flush_out): a listener may call the facade back.
        self._telemetry_out: deque[tuple[str, Mapping[str, Any]]] = deque()
        # Whether this thread holds the facade lock (an RLock's own check).
        self._lock_owned: Callable[[], bool] | None = getattr(self._lock, "_is_owned", None)

    # ------------------------------------------------------------------ telemetry

    def _emit_later(self, name: str, data: Mapping[str, Any]) -> None:
        """Queue a telemetry event (under the facade lock): ``_flush_out``
        emits it once the lock is released."""
        self._telemetry_out.append((name, data))

    def _flush_out(self) -> None:
        """Deliver the queued ``subscribe()`` events (``_delivery``) and emit the
        queued telemetry events, unless this thread holds a lock of the facade
        (the facade lock, the pump or the pass).

        Race: a listener may call the facade back (``lookup``, ``register``),
        or wait for another thread that does, and that call may wait for a
        pump or a pass in another thread, which needs the facade lock to book
        its outcome (and a pass may wait for a pump, or a pump's writer for a
        pass): a listener run holding one of them could deadlock, and a slow
        one would stall every writer. So events are only queued while one is
        held, and delivered by whichever thread next leaves a facade call, a
        pump or a pass holding none (in order; maybe not the thread that
        decided them).
        """
        out = self._telemetry_out
        if not out and not self._out:
            return  # the hot path: nothing queued
        me = threading.get_ident()
        if me in (self._pump_owner, self._legacy_retry_owner):
            return  # the pump or pass flushes once it has released its lock
        owned = self._lock_owned
        if owned is not None and owned():
            return  # the outer call flushes once it has released the lock
        self._delivery.deliver()
        while True:
            try:
                name, data = out.popleft()
            except IndexError:
                return
            telemetry.emit(name, data)

    # ------------------------------------------------------------------ requests

    def _request_legacy_retry(self) -> None:
        """Ask for a pass if the shared view has anything to apply (no I/O;
        lock-free, or under the facade lock). Race: something kept just after
        this look (by a writer under the facade lock) is asked for by that writer."""
        view = self._shared_view
        if view is not None and (view.legacy_retry or view.inbox):
            self._legacy_retry_all = True
            self._legacy_retry_requested = True

    def _settle_legacy(self, *, block: bool = True) -> None:
        """Run the pass asked for, or (``block``) wait for one in flight; never
        under the facade lock. The hot path is two attribute loads.

        ``block=False`` (after a write): if another thread runs a pass, return
        at once; that pass looks for requests again before it stops."""
        if not self._legacy_retry_requested and self._legacy_retry_owner is None:
            return
        me = threading.get_ident()
        if self._legacy_retry_owner == me:
            return  # re-entered (a listener of our own booking): the pass goes on
        lock = self._legacy_retry_lock
        try:
            while True:
                if not _take(lock, block):  # (see _take's race)
                    return
                # Race: the owner is set before the request is dropped (in the
                # pass), so a reader that finds neither set comes after the pass.
                self._legacy_retry_owner = me
                try:
                    while self._legacy_retry_requested and self._run_legacy_retries():
                        pass
                finally:
                    self._legacy_retry_owner = None
                    lock.release()
                # Race: a request made after our last look, by a writer whose try
                # failed because we still held the lock, would be stranded: look
                # again (unless the legacy side is down: kept for later, no I/O).
                if not self._legacy_retry_requested or self._legacy_down() is not None:
                    return
        finally:
            self._flush_out()  # events and telemetry decided meanwhile, lock released

    def _before_legacy_read(self) -> None:
        """Before a legacy read (flag off): the pass asked for (a flip back asks
        for it) or in flight, which also catches the shared view up; or the
        catch-up of the caller's private view (rule 4, lock-free)."""
        shared = self._shared_view
        if shared is not None:
            if shared.inbox:
                # A legacy copy removed or updated in the target while the flag
                # was on, not yet caught up (or whose catch-up failed while the
                # legacy backend was down): caught up first, or this read would
                # return an entry the target removed.
                self._legacy_retry_requested = True
            if self._legacy_retry_requested or self._legacy_retry_owner is not None:
                self._settle_legacy()
            return
        if self._legacy_retry_requested or self._legacy_retry_owner is not None:
            self._settle_legacy()
        view = self._existing_view()
        if view is not None and view.inbox:
            with _Call(self):
                self._catch_up(view)

    def _retry_legacy_now(self) -> None:
        """``readiness()``/``divergences()``/``finish()``: ask for a pass and run
        it, or wait for the one in flight (outside the facade lock)."""
        self._request_legacy_retry()
        self._settle_legacy()

    # ------------------------------------------------------------------ the pass

    def _run_legacy_retries(self) -> bool:
        """One pass over the shared view (holding the pass lock, not the facade
        lock): the catch-up steps, then the registers. False: stop (the legacy
        side failed or is down; what is left is kept)."""
        down = self._legacy_down()
        if down is not None:
            # Still down: kept and still asked for; no I/O, no wait. The
            # registers not tried yet become listed divergences.
            if self._legacy_undecided:
                with self._lock:
                    self._legacy_retry_deferred(down)
            self._legacy_failed("mirror", None, down)
            return False
        with self._lock:
            self._legacy_retry_requested = False
            every, self._legacy_retry_all = self._legacy_retry_all, False
            # Registers first: dropping one that is no longer current may queue
            # the removal of our older copy, planned just below.
            plans = self._plan_legacy_retries(None if every else self._legacy_undecided)
            self._legacy_undecided.clear()  # planned: applied or booked below
            steps = self._plan_catch_up()
        succeeded = False
        # Every removal or update before the registers: a register planned for
        # a key whose stale copy is removed in this pass then finds it gone.
        for i, step in enumerate(steps):
            with _Call(self) as ctx, self._events_muted(ctx, step.key, _LEGACY):
                result = self._call_catch_up(step)
            with self._lock:
                self._book_catch_up(step, result)
                if isinstance(result, BackendUnavailable):
                    self._stop_pass(steps[i + 1 :], plans, result)
                    return False
            succeeded = succeeded or not isinstance(result, Exception)
        for i, plan in enumerate(plans):
            with _Call(self) as ctx, self._events_muted(ctx, plan.key, _LEGACY):
                outcome = self._call_legacy_retry(plan)
            if isinstance(outcome, BackendUnavailable):
                with self._lock:
                    self._legacy_failed("register", plan.key, outcome)
                    self._stop_pass([], plans[i:], outcome, failed=plan.key)
                return False
            with self._lock:
                self._book_legacy_retry(plan, outcome)
            succeeded = succeeded or outcome == _DONE
        view = self._shared_view
        if succeeded and not every and view is not None and view.legacy_retry:
            # The legacy side took a write: it is back, so the registers kept
            # from an outage are retried too (the next round of this pass).
            self._legacy_retry_all = True
            self._legacy_retry_requested = True
        return True

    def _stop_pass(
        self,
        left: list[_CatchUp],
        plans: list[_LegacyPlan],
        exc: BackendUnavailable,
        failed: Hashable = _NOT_TRIED,
    ) -> None:
        """A pass met ``BackendUnavailable`` (under the facade lock): the steps
        left stay queued, the registers not applied become listed divergences,
        kept for retry. Asked for again only if status() now says down (so
        nothing is tried until it is back); a backend that fails while saying
        connected (read-only) is retried at the next write or read that asks.
        ``failed``: the key of the register that met it (the others were not tried)."""
        view = self._shared_view
        if view is not None:
            view.inbox.extend(step.key for step in left)
        self._legacy_undecided.update(plan.key for plan in plans)
        self._legacy_retry_deferred(repr(exc), failed)
        if self._legacy_down() is not None:
            self._legacy_retry_all = True
            self._legacy_retry_requested = True

    def _legacy_retry_deferred(self, why: str, failed: Hashable = _NOT_TRIED) -> None:
        """The registers asked for but not applied (the legacy side is down):
        listed divergences from now on, kept for retry (under the facade lock).
        ``why`` is the error of ``failed``'s register; the others were not tried."""
        keys, self._legacy_undecided = self._legacy_undecided, set()
        view = self._shared_view
        if view is None or self._finished or self._closed:
            return
        for key in keys:
            pending = view.legacy_retry.get(key)
            if pending is None:
                continue  # applied, or dropped meanwhile
            held = view.divergent.get(key)
            if held is None or held.agent is not pending[0]:
                reason = _deferred_reason(why, key, failed)
                self._diverge(view, key, pending[0], reason, pending[2])

    def _plan_legacy_retries(self, keys: set[Hashable] | None) -> list[_LegacyPlan]:
        """The registers of ``keys`` (None: every one kept) still current (under
        the facade lock); others are dropped."""
        view = self._shared_view
        if view is None or self._finished or self._closed:
            return []
        self._drain_dead()
        plans = []
        due = view.legacy_retry
        items = list(due.items()) if keys is None else [(k, due[k]) for k in keys if k in due]
        for key, (agent, mine, writer) in items:
            rec = self._records.get(key)
            if not self._retry_current(view, key, agent, rec) or not is_alive(agent):
                # Replaced, unregistered or dead meanwhile: and our older copy,
                # if one is left, is stale (catch-up removes it below).
                self._forget_legacy_register(view, key)
                continue
            assert rec is not None
            plans.append(_LegacyPlan(key, agent, mine, rec.gen, writer))
        return plans

    def _forget_legacy_register(self, view: _View, key: Hashable) -> None:
        """Drop ``key``'s legacy register (under the facade lock); an older copy
        of ours still there and no longer the record's is removed by catch-up.

        Race: the register's agent died (or its target entry was replaced or
        unregistered) before its mirror was applied (the legacy side was
        down, or it was in flight). There is nothing left to register, but
        the legacy side still holds the copy that register was to replace
        (``mine``: the facade's own superseded copy, maybe one the target
        never took, so not in ``view.mirrors``). Left, it came back at the
        next flip, and a later flag-on register of the key met it as
        "another registration". So it is listed as a divergence and removed
        by catch-up, only if the legacy backend's own view (its ``lookup()``,
        local, best effort) still shows that agent: never another one.
        """
        pending = view.legacy_retry.pop(key, None)
        rec = self._records.get(key)
        if rec is not None and rec.view is view:
            return  # the key's copy is ours and current: nothing is stale
        if pending is not None and pending[1] is not None:
            self._superseded_copy(view, key, pending[1], pending[2], rec)
        if key in view.mirrors:
            view.inbox.append(key)
            self._legacy_retry_requested = True

    def _superseded_copy(
        self, view: _View, key: Hashable, mine: Any, writer: int, rec: _Record | None
    ) -> None:
        """``_forget_legacy_register``: list ``mine``'s copy of ``key`` and mark it
        for removal by catch-up, if the legacy side still shows it (under the lock)."""
        if rec is not None and rec.agent is mine:
            return  # the record's own agent again: not superseded
        try:
            copy = self._legacy.lookup(key)  # a local lookup (see _own_divergent)
        except Exception:  # (closed, a custom backend's failure): best effort,
            return  # not provably ours, left alone (as _own_divergent)
        if copy is None or copy.agent is not mine:
            return  # gone (its agent died), or not ours: never removed
        why = (
            f"the legacy backend kept {short_repr(key)}, replaced in the target by "
            "an agent that died or left before its mirror was applied"
        )
        self._diverge(view, key, mine, why, writer)
        view.mark_stale(key, mine)  # a copy to drop: catch-up drops it (if still mine's)

    @staticmethod
    def _retry_current(view: _View, key: Hashable, agent: Any, rec: _Record | None) -> bool:
        """``view``'s register of ``agent``'s mirror of ``key`` still describes
        the target entry: it holds ``agent``, mirrored nowhere yet (pending, or
        a listed divergence of that agent)."""
        held = view.divergent.get(key)
        retry = view.legacy_retry.get(key)
        return (
            rec is not None
            and rec.view is None
            and rec.agent is agent
            and (held is None or held.agent is agent)
            and retry is not None
            and retry[0] is agent
        )

    def _call_legacy_retry(self, plan: _LegacyPlan) -> str | Exception:
        """The backend calls of one register (outside the facade lock): its outcome.

        Race: the pass is the only writer of the shared legacy side while it
        runs (flag-on writes only ask for it, flag-off writes wait for it), so
        the copy looked up here is still there when the register runs, unless
        its agent died meanwhile (then the slot is free, and ``replace`` is
        harmless). The check is the backends' own view (their ``lookup()``),
        then the register: only our own older copy (``plan.mine``) or our own
        agent is replaced, never another one. (Other processes sharing a Redis
        legacy namespace write their own keys; a key two nodes race for is the
        backend's business, as for any write.)
        """
        try:
            entry = self._target.lookup(plan.key)
            if entry is None or entry.agent is not plan.agent:
                return _GONE
            current = self._legacy.lookup(plan.key)
            if current is not None and current.agent not in (plan.agent, plan.mine):
                return _FOREIGN
            with self._events_dropped(_LEGACY):
                self._legacy.register(
                    plan.key, plan.agent, entry.metadata, replace=current is not None
                )
        except Exception as exc:  # booked below (BackendUnavailable: kept by the caller)
            return exc
        return _DONE

    def _book_legacy_retry(self, plan: _LegacyPlan, outcome: str | Exception) -> None:
        """Record the outcome of one register (under the facade lock)."""
        view = self._shared_view
        if view is None or self._finished or self._closed:
            return
        key, agent = plan.key, plan.agent
        rec = self._records.get(key)
        if not self._retry_current(view, key, agent, rec):
            # Race: a flag-on write changed the key while the register was in
            # flight (outside the lock). The copy just written is no longer
            # the record's: catch-up removes it (the next round of this pass,
            # before any later register of the key), so it cannot come back.
            if outcome == _DONE and not (rec is not None and rec.view is view):
                view.mark_stale(key, agent)
                view.inbox.append(key)
                self._legacy_retry_requested = True
            return
        assert rec is not None
        if outcome == _DONE:
            self._legacy_ok(request=False)
            del view.legacy_retry[key]
            view.divergent.pop(key, None)
            gen = self._next_gen()
            self._records[key] = _Record(view, gen, agent)
            # Race: an update made while the register was in flight may have
            # reached the target after the register read its metadata; then
            # the copy is marked one generation behind, and catch-up copies it.
            view.mirror(key, gen if rec.gen == plan.gen else plan.gen)
            if rec.gen != plan.gen:
                view.inbox.append(key)
                self._legacy_retry_requested = True
            return
        self._forget_legacy_register(view, key)
        if outcome == _FOREIGN:
            view.forget(key)  # no copy of ours is there any more
            reason = f"the legacy backend holds {short_repr(key)} for another registration"
            self._diverge(view, key, agent, reason, plan.writer)
        elif isinstance(outcome, Exception) and not isinstance(outcome, NotAlive):
            # Refused for good: it stays a listed divergence. (NotAlive: the
            # agent died, nothing to list; the copy it was to replace is.)
            self._legacy_failed("register", key, outcome)
            why = f"the legacy backend refused the mirror: {outcome}"
            self._diverge(view, key, agent, why, plan.writer)
        # _GONE: the target entry was replaced, unregistered or died meanwhile.

    # ------------------------------------------------------------------ catch-up

    def _resolve_removed(self, view: _View, key: Hashable) -> None:
        """Catch-up removed ``view``'s copy of ``key`` (under the lock): a listed
        copy other than the record's was that one (``_superseded_copy``)."""
        held = view.divergent.get(key)
        rec = self._records.get(key)
        if held is not None and (rec is None or held.agent is not rec.agent):
            del view.divergent[key]

    def _plan_catch_up(self) -> list[_CatchUp]:
        """The shared view's catch-up steps (rule 4; under the facade lock):
        its inbox, drained, each key re-checked against the record."""
        view = self._shared_view
        if view is None or self._finished or self._closed:
            return []
        steps: list[_CatchUp] = []
        seen: set[Hashable] = set()
        inbox = view.inbox
        while inbox:
            key = inbox.popleft()
            if key in seen:
                continue
            seen.add(key)
            gen = view.mirrors.get(key)
            if gen is None:
                continue  # not (or no longer) a copy of ours: nothing to catch up
            rec = self._records.get(key)
            if rec is None or rec.view is not view:
                stale = view.stale.get(key, _UNMARKED)  # unregistered, replaced or dead:
                steps.append(_CatchUp(key, gen, 0, None, stale))  # drop our copy
            elif rec.gen != gen:
                steps.append(_CatchUp(key, gen, rec.gen, rec.agent))  # new metadata
        return steps

    def _call_catch_up(self, step: _CatchUp) -> str | Exception:
        """The backend calls of one catch-up step (outside the facade lock)."""
        try:
            if step.agent is not None:
                entry = self._target.lookup(step.key)
                if entry is not None and entry.agent is step.agent:
                    with self._events_dropped(_LEGACY):
                        self._legacy.update_metadata(step.key, entry.metadata)
                    return _DONE
            # Race: as for a register (_call_legacy_retry), nothing else in this
            # process writes the shared legacy side while the pass runs, so the
            # copy removed here is the stale one of ours the plan saw (or its
            # slot, emptied by its agent's death). The copy's agent is checked
            # when the removal is decided and again just before it, here
            # (_not_ours_now). Between this check and the unregister, a write
            # of the key that bypasses the facade (another thread writing the
            # legacy store directly, or another process on a shared backend)
            # is not seen: best effort; a key raced for that way is the
            # backend's business.
            if self._not_ours_now(step):
                return _DROPPED  # no copy of ours is there any more: booked as removed
            with self._events_dropped(_LEGACY):
                self._legacy.unregister(step.key)
        except NotRegistered:  # the copy's agent died: it is gone
            return _DROPPED
        except Exception as exc:  # booked below (kept and retried)
            return exc
        return _DROPPED

    def _not_ours_now(self, step: _CatchUp) -> bool:
        """A drop's slot holds another agent than our stale copy's (outside the lock).

        Race: our copy was marked for removal while the legacy side said down;
        meanwhile its agent died and another writer took the key there, or
        replaced it (a direct write to the legacy store, another process):
        removed blindly, that registration was lost (rule 2). Not removed; a
        register of the key still to apply then finds it foreign (listed)."""
        if step.agent is not None or step.stale is _UNMARKED:
            return False  # an update's fallback, or a drop with no agent marked
        copy = self._legacy.lookup(step.key)  # (local, see _own_divergent)
        return copy is not None and copy.agent is not step.stale

    def _book_catch_up(self, step: _CatchUp, result: str | Exception) -> None:
        """Record the outcome of one catch-up step (under the facade lock)."""
        view = self._shared_view
        if view is None or self._finished or self._closed:
            return
        key = step.key
        if isinstance(result, Exception):
            # Kept: its mirror keeps the old generation, retried by a later pass.
            self._legacy_failed("catch-up", key, result)
            view.inbox.append(key)
            return
        self._legacy_ok(request=False)
        if view.mirrors.get(key) != step.gen:
            return  # changed meanwhile: its own write or booking queued what it needs
        if result == _DROPPED:
            if view.stale.get(key, _UNMARKED) is not step.stale:
                return  # marked for another agent meanwhile: that copy is still to drop
            view.forget(key)
            self._resolve_removed(view, key)
        else:
            view.mirror(key, step.new_gen)
