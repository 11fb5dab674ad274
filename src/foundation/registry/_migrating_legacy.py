"""Retried legacy mirrors of a ``MigratingRegistry`` (rule 7).

With the flag on, a register mirror that the unavailable legacy backend
refused is kept in the shared view's ``legacy_retry``. Its retry is *asked
for* without I/O and without the facade lock (by a flip, a legacy write that
succeeded, ``readiness()``/``divergences()``/``finish()``) and *applied* by
one thread at a time outside the facade lock: each retry is planned under the
lock, the backends are called outside it, and the outcome is booked under it
again. A legacy read and a flag-off write first apply the retries asked for,
so after a flip back no answer lacks a live registration made during the
outage. See rule 7 in the module documentation of
``foundation.registry._migrating``.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any, Final, NamedTuple

from foundation.errors import BackendUnavailable
from foundation.liveness import is_alive
from foundation.registry._migrating_divergences import _DivergenceBook
from foundation.registry._migrating_events import _Call
from foundation.registry._migrating_views import _Record, _View
from foundation.registry._validation import short_repr

_GONE: Final = "gone"  # the target no longer holds the entry: nothing to retry
_FOREIGN: Final = "foreign"  # the legacy side holds the key for someone else (rule 2)
_DONE: Final = "done"  # the legacy side took the copy


class _LegacyPlan(NamedTuple):
    """One retry of a refused legacy mirror, planned under the facade lock."""

    key: Hashable
    agent: Any
    mine: Any  # the agent of our older legacy copy, replaceable (rule 2), or None
    gen: int  # the record's generation when planned (a later update changes it)


class _LegacyRetries(_DivergenceBook):
    """The legacy-retry layer of ``MigratingRegistry`` (rule 7).

    The attributes below are set by ``MigratingRegistry.__init__``.
    """

    _finished: bool
    _closed: bool

    def _init_legacy_retries(self) -> None:
        """Set the retry state (called once, by ``MigratingRegistry.__init__``)."""
        # One pass at a time (whoever holds _legacy_retry_lock). Lock order:
        # _legacy_retry_lock, then the facade lock; nobody waits for the retry
        # lock while holding the facade lock (it is taken only outside it).
        self._legacy_retry_lock = threading.Lock()
        self._legacy_retry_owner: int | None = None  # thread ident running a pass
        # Retries are asked for: the next _settle_legacy (after a write, before a
        # legacy read or a flag-off write) runs them once status() says the
        # legacy backend is available.
        self._legacy_retry_requested = False

    def _request_legacy_retry(self) -> None:
        """Ask for the legacy retries, if any is due (no I/O; lock-free, or under
        the facade lock). Race: a retry kept just after this look (by a writer
        under the facade lock) is asked for by that writer's next legacy success."""
        view = self._shared_view
        if view is not None and view.legacy_retry:
            self._legacy_retry_requested = True

    def _settle_legacy(self) -> None:
        """Apply the legacy retries asked for, or wait for a pass in flight
        (never under the facade lock). The hot path is two attribute loads."""
        if not self._legacy_retry_requested and self._legacy_retry_owner is None:
            return
        me = threading.get_ident()
        if self._legacy_retry_owner == me:
            return  # re-entered (a telemetry listener of our own booking): the pass goes on
        with self._legacy_retry_lock:
            # Race: the owner is set before the request is dropped (in the pass),
            # so a reader that finds neither set comes after the whole pass.
            self._legacy_retry_owner = me
            try:
                if self._legacy_retry_requested:
                    self._run_legacy_retries()
            finally:
                self._legacy_retry_owner = None

    def _before_legacy_read(self) -> None:
        """Before a legacy read (flag off): the legacy retries asked for (a flip
        back asks for them), then the catch-up of the caller's view (rule 4):
        lock-free for a private view; the shared view only when it has
        something to catch up (under the lock)."""
        if self._legacy_retry_requested or self._legacy_retry_owner is not None:
            self._settle_legacy()
        shared = self._shared_view
        if shared is not None:
            if shared.inbox:
                # A legacy copy whose removal or update failed while the legacy
                # backend was down, then the flag flipped back: catch up now, or
                # this read would return an entry the target removed.
                with _Call(self), self._lock:
                    self._catch_up(shared)
            return
        view = self._existing_view()
        if view is not None and view.inbox:
            with _Call(self):
                self._catch_up(view)

    def _retry_legacy_now(self) -> None:
        """``readiness()``/``divergences()``/``finish()``: ask for the legacy
        retries and apply them (outside the facade lock)."""
        self._request_legacy_retry()
        self._settle_legacy()

    def _run_legacy_retries(self) -> None:
        """One pass over the shared view's legacy retries (holding the retry lock)."""
        if self._legacy_down() is not None:
            return  # still down: kept and still asked for; no I/O, no wait
        with self._lock:
            self._legacy_retry_requested = False
            plans = self._plan_legacy_retries()
        for plan in plans:
            with _Call(self) as ctx, self._events_muted(ctx, plan.key):
                outcome = self._call_legacy_retry(plan)
            if isinstance(outcome, BackendUnavailable):
                # Kept (booked nothing). Asked for again only if status() now
                # says down (so nothing is tried until it is back); a backend
                # that fails while saying connected (read-only) is retried at
                # the next legacy success, not by every read.
                self._legacy_failed("register", plan.key, outcome)
                if self._legacy_down() is not None:
                    self._legacy_retry_requested = True
                return
            with self._lock:
                self._book_legacy_retry(plan, outcome)

    def _plan_legacy_retries(self) -> list[_LegacyPlan]:
        """The retries still current (under the facade lock); resolved ones are dropped."""
        view = self._shared_view
        if view is None or self._finished or self._closed:
            return []
        self._drain_dead()
        plans = []
        for key, (agent, mine) in list(view.legacy_retry.items()):
            rec = self._records.get(key)
            if not self._retry_current(view, key, agent, rec) or not is_alive(agent):
                del view.legacy_retry[key]  # replaced, unregistered or dead meanwhile
                continue
            assert rec is not None
            plans.append(_LegacyPlan(key, agent, mine, rec.gen))
        return plans

    @staticmethod
    def _retry_current(view: _View, key: Hashable, agent: Any, rec: _Record | None) -> bool:
        """``view``'s retry of ``agent``'s mirror of ``key`` still describes the
        target entry: it holds ``agent``, mirrored nowhere, a listed divergence."""
        held = view.divergent.get(key)
        retry = view.legacy_retry.get(key)
        return (
            rec is not None
            and rec.view is None
            and rec.agent is agent
            and held is not None
            and held.agent is agent
            and retry is not None
            and retry[0] is agent
        )

    def _call_legacy_retry(self, plan: _LegacyPlan) -> str | Exception:
        """The backend calls of one retry (outside the facade lock): its outcome."""
        try:
            entry = self._target.lookup(plan.key)
            if entry is None or entry.agent is not plan.agent:
                return _GONE
            current = self._legacy.lookup(plan.key)
            if current is not None and current.agent not in (plan.agent, plan.mine):
                return _FOREIGN
            with self._events_dropped():
                self._legacy.register(
                    plan.key, plan.agent, entry.metadata, replace=current is not None
                )
        except Exception as exc:  # booked below (BackendUnavailable: kept by the caller)
            return exc
        return _DONE

    def _book_legacy_retry(self, plan: _LegacyPlan, outcome: str | Exception) -> None:
        """Record the outcome of one retry (under the facade lock)."""
        view = self._shared_view
        if view is None or self._finished or self._closed:
            return
        key, agent = plan.key, plan.agent
        rec = self._records.get(key)
        if not self._retry_current(view, key, agent, rec):
            # Race: a flag-on write changed the key while the retry was in
            # flight (outside the lock). If the copy just written is no longer
            # the record's, the catch-up of this view drops it (rule 4; it
            # re-checks the record under the lock), so it cannot come back.
            if outcome == _DONE and not (rec is not None and rec.view is view):
                view.mirrors.setdefault(key, 0)
                view.inbox.append(key)
            return
        assert rec is not None
        if outcome == _DONE:
            self._legacy_ok()
            del view.legacy_retry[key]
            view.divergent.pop(key, None)
            gen = self._next_gen()
            self._records[key] = _Record(view, gen, agent)
            # Race: an update made while the retry was in flight may have
            # reached the target after the retry read its metadata; then the
            # copy is marked one generation behind, and catch-up copies it.
            view.mirrors[key] = gen if rec.gen == plan.gen else plan.gen
            if rec.gen != plan.gen:
                view.inbox.append(key)
            return
        del view.legacy_retry[key]
        if outcome == _FOREIGN:
            reason = f"the legacy backend holds {short_repr(key)} for another registration"
            self._diverge(view, key, agent, reason)
        elif isinstance(outcome, Exception):  # refused for good: it stays a listed divergence
            self._diverge(view, key, agent, f"the legacy backend refused the mirror: {outcome}")
        # _GONE: the target entry was replaced, unregistered or died meanwhile.
