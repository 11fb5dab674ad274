"""Divergence bookkeeping of a ``MigratingRegistry``: writes the other side refused.

A divergence is listed on the view that holds the refused copy
(``view.divergent``), counted, and emitted as the telemetry event
``registry.divergence``. It is resolved when the copy is unregistered or
replaced, its agent dies, or its thread ends (``_purge``). See "Divergence"
under "Vocabulary" in ``foundation.registry._migrating``.

Dead copies are also purged without a ``divergences()`` call, by ``_diverge``
once a view's divergent copies reach twice the number left by its last purge
(``_purge_dead_copies``), so memory follows the live copies while the other
side is down, however many short-lived agents come and go meanwhile.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any, Final

from foundation import telemetry
from foundation.liveness import is_alive
from foundation.registry._migrating_views import PURGE_AT_LEAST, _Divergent, _LegacyViews, _View
from foundation.registry._types import Divergence
from foundation.registry._validation import short_repr

MAX_REASON: Final = 300
"""The longest ``Divergence.reason`` (longer ones are cut, ending in ``...``)."""


def _seen_dead(agent: Any) -> bool:
    """``agent`` is known dead. An ``is_alive`` that cannot answer (an
    ``OSProcess`` whose ``/proc`` entry is unreadable: no fd left) is not
    proof: the copy is kept, as a live one (never raised into a booking)."""
    try:
        return not is_alive(agent)
    except Exception:
        return False


class _DivergenceBook(_LegacyViews):
    """The divergence layer of ``MigratingRegistry``.

    ``_detected`` is set by ``MigratingRegistry.__init__``.
    """

    _detected: int  # divergences detected since construction, resolved ones included

    if TYPE_CHECKING:  # as MigratingRegistry defines it, and _LegacyRetries

        def _check_open(self) -> None: ...

        def _emit_later(self, name: str, data: Mapping[str, Any]) -> None: ...

        def _dead_copy(self, view: _View, key: Hashable, held: _Divergent) -> None: ...

    def _diverge(
        self, view: _View, key: Hashable, agent: Any, reason: str, writer: int | None = None
    ) -> None:
        """List ``agent``'s copy of ``key`` in ``view`` as divergent. ``writer``:
        the thread whose write it was, when booked by another (a pump, a pass)."""
        if len(reason) > MAX_REASON:  # bounded, whatever the key, entry or error it names
            reason = reason[: MAX_REASON - 3] + "..."
        div = Divergence(key, view.ident(writer), reason)
        held = view.divergent[key] = _Divergent(agent, div)
        self._detected += 1
        if telemetry.has_listeners("registry.divergence"):
            # Emitted once the facade lock is released (a listener may call back).
            self._emit_later(
                "registry.divergence",
                {"registry": self, "key": key, "thread": div.thread, "reason": reason},
            )
        if len(view.divergent) >= view.purge_at:  # (one comparison per divergence)
            self._purge_dead_copies(view, held)

    def _purge_dead_copies(self, view: _View, keep: _Divergent) -> None:
        """``_purge`` of ``view``'s dead copies, by ``_diverge`` once
        ``view.divergent`` reaches ``view.purge_at`` (under the facade lock,
        which every ``_diverge`` holds, as ``divergences()`` does around
        ``_purge``). Without it, a program churning short-lived agents while
        the other side was down kept every dead copy, and its kept retry,
        until the next ``divergences()`` call. The next threshold is twice
        what is left (at least ``PURGE_AT_LEAST``): O(1) amortised per
        divergence. A copy whose agent runs stays listed, whatever its number.

        ``keep``, the copy being booked, is left to the caller's booking (it
        may keep its retry next, ``_book_unregister``); the next round sees it.

        Race: a death reported concurrently (a backend's monitor thread queues
        it in ``_dead``, applied at the next write) is not drained here, since
        the caller may be in the middle of a booking that read the records: a
        record whose agent just died may still be there, so ``_dead_copy`` may
        list the removal of a superseded entry whose agent is dead too, itself
        a dead copy dropped by the next round (or ``divergences()``, which
        drains first). An agent seen alive here that dies right after stays
        listed until the next round; a copy is dropped only once its agent was
        seen dead, exactly as ``_purge`` does.
        """
        divergent = view.divergent
        view.purge_at = sys.maxsize  # _dead_copy may _diverge into this view: no nested round
        try:
            dead = [(k, d) for k, d in divergent.items() if d is not keep and _seen_dead(d.agent)]
            for key, held in dead:
                if divergent.get(key) is held:  # not replaced by a _dead_copy of this round
                    del divergent[key]
                    self._dead_copy(view, key, held)  # its kept retry, as _purge settles it
        finally:
            view.purge_at = max(PURGE_AT_LEAST, 2 * len(divergent))

    def _purge(self) -> None:
        """Resolve divergences whose copy died or whose thread ended; forget ended
        views. A dead copy's kept retry is settled by ``_dead_copy`` (rule 6)."""
        views = list(self._views.items())
        for ident, view in views:
            if view.ended():
                view.divergent.clear()
                if self._views.get(ident) is view:
                    del self._views[ident]
        for view in self._all_views():
            for key, d in list(view.divergent.items()):
                if not is_alive(d.agent):
                    del view.divergent[key]
                    self._dead_copy(view, key, d)
            view.purge_at = max(PURGE_AT_LEAST, 2 * len(view.divergent))  # (_diverge's round)

    def _all_views(self) -> list[_View]:
        views = list(self._views.values())
        if self._shared_view is not None:
            views.append(self._shared_view)
        return views

    def _divergences(self) -> list[Divergence]:
        self._check_open()
        self._drain_dead()
        self._purge()
        found = [d.divergence for v in self._all_views() for d in v.divergent.values()]
        return found + self._stale_shared_copies()

    def _stale_shared_copies(self) -> list[Divergence]:
        """Shared legacy copies the target no longer matches, whose catch-up failed
        (the legacy backend was down; the caller ran a pass first): listed."""
        view = self._shared_view
        if view is None or not view.inbox:
            return []
        listed = set(view.divergent)
        keys = [k for k in dict.fromkeys(view.inbox) if k not in listed]
        reason = "the legacy backend still holds a stale copy (its catch-up failed; retried)"
        return [Divergence(k, view.ident(), reason) for k in keys]

    def _problems(self) -> list[str]:
        return [
            f"registry divergence: key {short_repr(d.key)} in thread {d.thread}: {d.reason}"
            for d in self._divergences()
        ]
