"""Divergence bookkeeping of a ``MigratingRegistry``: writes the other side refused.

A divergence is listed on the view that holds the refused copy
(``view.divergent``), counted, and emitted as the telemetry event
``registry.divergence``. It is resolved when the copy is unregistered or
replaced, its agent dies, or its thread ends (``_purge``). See "Divergence"
under "Vocabulary" in ``foundation.registry._migrating``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any, Final

from foundation import telemetry
from foundation.liveness import is_alive
from foundation.registry._migrating_views import _Divergent, _LegacyViews, _View
from foundation.registry._types import Divergence
from foundation.registry._validation import short_repr

MAX_REASON: Final = 300
"""The longest ``Divergence.reason`` (longer ones are cut, ending in ``...``)."""


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
        view.divergent[key] = _Divergent(agent, div)
        self._detected += 1
        if telemetry.has_listeners("registry.divergence"):
            # Emitted once the facade lock is released (a listener may call back).
            self._emit_later(
                "registry.divergence",
                {"registry": self, "key": key, "thread": div.thread, "reason": reason},
            )

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
