"""Legacy views of a ``MigratingRegistry``: whose legacy copy mirrors what (rules 3 to 5).

A *view* is what one caller sees of the legacy backend (a thread's private
store, or the one shared store); a *record* says which view's copy mirrors
the target's entry for a key, at which generation. This layer finds the
caller's view, catches it up with the changes other threads made (rule 4),
tells a view that a record changed (rule 3) and applies the target's deaths
to the records (rule 5). See "Vocabulary" and "Rules" in the module
documentation of ``foundation.registry._migrating``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from foundation.errors import BackendUnavailable, NotRegistered
from foundation.registry._migrating_events import _LEGACY, _MAX_KEPT, _EventRouting
from foundation.registry._types import Divergence, Registry
from foundation.registry._validation import short_repr

_log = logging.getLogger("foundation.registry")

PURGE_AT_LEAST: Final = 1024
"""A view's divergent copies are purged of dead ones (without a ``divergences()``
call) once they reach twice the number left by the last purge, or this many."""


def reported_state(status: Callable[[], Any] | None) -> str | None:
    """``"disconnected"`` or ``"degraded"`` if a backend's ``status()`` (no I/O)
    says it cannot be written now; None otherwise, or without ``status()``."""
    if status is None:
        return None
    try:
        state = getattr(status(), "state", None)
    except Exception:  # closed or odd: let the write itself decide
        return None
    return state if state in ("disconnected", "degraded") else None


class _View:
    """One legacy view: a thread's private store, or the shared legacy store."""

    __slots__ = (
        "copy_op",
        "divergent",
        "inbox",
        "kept_dead",
        "legacy_retry",
        "mirrors",
        "private",
        "purge_at",
        "retry",
        "stale",
        "thread",
    )

    def __init__(self, thread: threading.Thread | None) -> None:
        self.thread = thread
        self.private = thread is not None
        self.mirrors: dict[Hashable, int] = {}
        # key -> the agent of a copy of ours in ``mirrors`` that catch-up is to
        # remove (the shared view only: never set in a private view; set by
        # ``mark_stale``, dropped with the mirror).
        self.stale: dict[Hashable, Any] = {}
        self.divergent: dict[Hashable, _Divergent] = {}
        # len(divergent) at which _diverge purges its dead copies (_DivergenceBook)
        self.purge_at = PURGE_AT_LEAST
        self.inbox: deque[Hashable] = deque()
        # Keys (oldest first) whose dead copy a catch-up left in this private
        # store for its withheld death (_catch_up_key); dropped by a later
        # catch-up once the death is no longer withheld (_drop_kept_dead).
        self.kept_dead: dict[Hashable, None] = {}
        # key -> seq of the queued register op that wrote this view's current
        # copy (rule 6); present only while that op is queued.
        self.copy_op: dict[Hashable, int] = {}
        # key -> (agent, metadata) of a current copy whose mirror (register,
        # update, or REMOVED: unregister) the target could not take because it
        # was unavailable; retried when it is back (rule 6).
        self.retry: dict[Hashable, tuple[Any, Mapping[str, Any] | None]] = {}
        # key -> (agent, replaceable, writer) of a target entry (flag on) whose
        # mirror this shared view's unavailable legacy backend refused; retried
        # when it is back. ``replaceable``: the agent of our older copy there, if
        # any; ``writer``: the ident of the thread whose write it mirrors.
        self.legacy_retry: dict[Hashable, tuple[Any, Any, int]] = {}

    def mark_stale(self, key: Hashable, agent: Any) -> None:
        """Our copy of ``key``, ``agent``'s, is due for removal by catch-up."""
        self.mirrors.setdefault(key, 0)
        self.stale[key] = agent

    def mirror(self, key: Hashable, gen: int) -> None:
        """Our copy of ``key`` mirrors the record at ``gen`` (no longer stale)."""
        self.mirrors[key] = gen
        self.stale.pop(key, None)

    def forget(self, key: Hashable) -> None:
        """No copy of ours of ``key`` is here any more (nor one to remove)."""
        self.mirrors.pop(key, None)
        self.stale.pop(key, None)

    def stale_copy(self, key: Hashable, agent: Any) -> bool:
        """``agent``'s copy of ``key`` is the stale one of ours due for removal."""
        return key in self.mirrors and key in self.stale and self.stale[key] is agent

    def ended(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()

    def ident(self, writer: int | None = None) -> int:
        """The thread a divergence of this view names: a private view's own;
        in the shared view, ``writer`` (the thread whose write it mirrors) if
        known, else the calling thread."""
        if self.thread is not None and self.thread.ident is not None:
            return self.thread.ident
        return threading.get_ident() if writer is None else writer


class _Divergent(NamedTuple):
    agent: Any
    divergence: Divergence


class _Record(NamedTuple):
    view: _View | None  # None: the target entry is mirrored in no legacy view
    gen: int
    agent: Any


class _LegacyViews(_EventRouting):
    """The view layer of ``MigratingRegistry``.

    The attributes below are set by ``MigratingRegistry.__init__``.
    """

    _legacy: Registry
    _target: Registry
    _shared_view: _View | None  # None: a per-thread legacy, one view per thread in _views
    _views: dict[int, _View]  # thread ident -> that thread's private view
    _records: dict[Hashable, _Record]
    _gen: int  # the last generation handed out (_next_gen)
    _lock: threading.RLock  # the facade lock
    _legacy_status: Callable[[], Any] | None  # the legacy backend's status(), if any
    _legacy_warned: bool  # a "legacy mirror failed" WARNING is out (until a success)
    _legacy_retry_requested: bool  # legacy retries are asked for (rule 7, _migrating_legacy)
    _legacy_retry_all: bool  # and every kept one is due, not only the new ones

    if TYPE_CHECKING:  # as _LegacyRetries defines it

        def _forget_legacy_register(self, view: _View, key: Hashable) -> None: ...

    def _view(self) -> _View:
        """The caller's legacy view, created if needed. Called under the lock only."""
        shared = self._shared_view
        if shared is not None:
            return shared
        ident = threading.get_ident()
        current = threading.current_thread()
        view = self._views.get(ident)
        if view is None or view.thread is not current:  # a reused ident is a new thread
            view = _View(current)
            self._views[ident] = view
        return view

    def _existing_view(self) -> _View | None:
        """The caller's private view if it has one (lock-free; never creates)."""
        view = self._views.get(threading.get_ident())
        if view is not None and view.thread is threading.current_thread():
            return view
        return None

    def _catch_up(self, view: _View) -> None:
        """Apply the changes other threads made to this view's mirrored keys (rule 4).

        A private view: runs in the view's own thread only, so ``view.mirrors``
        and the (local) store are touched by one thread. The inbox is drained
        *before* each record is read; a writer updates the record *before*
        pushing, so a change this pass misses is pushed again and seen by the
        next pass. The shared view's legacy backend may be remote: it is never
        called here (this may run under the facade lock); a pass is asked for
        instead, which catches it up outside the lock (``_migrating_legacy``).

        Best effort: a key the legacy backend refuses (unreachable) stays in
        ``view.mirrors`` at its old generation and goes back in the inbox, so
        a later pass retries it; the caller's own call is never failed by it.
        """
        inbox = view.inbox
        if not inbox:
            return
        if not view.private:
            self._legacy_retry_requested = True  # applied outside the facade lock
            return
        down = self._legacy_down()
        if down is not None:  # no I/O, no wait: the keys stay queued for a later pass
            self._legacy_failed("catch-up", None, down)
            return
        retry: list[Hashable] = []
        try:
            while True:
                try:
                    key = inbox.popleft()
                except IndexError:
                    break
                try:
                    self._catch_up_key(view, key)
                except Exception as exc:  # retried by a later pass, after this one ends
                    self._legacy_failed("catch-up", key, exc)
                    retry.append(key)
                    if isinstance(exc, BackendUnavailable):
                        return  # one wait per pass at most: the rest stays queued
        finally:
            inbox.extend(retry)
        self._drop_kept_dead(view)
        if not retry:
            self._legacy_ok()

    def _legacy_down(self) -> str | None:
        """The legacy backend's own report that it cannot be written now (no I/O)."""
        state = reported_state(self._legacy_status)
        return None if state is None else f"the legacy backend is {state}"

    def _legacy_failed(self, what: str, key: Hashable | None, exc: BaseException | str) -> None:
        """Log a legacy mirror that failed or was deferred: one WARNING until the
        next success (an outage would otherwise log one per key per write)."""
        about = "" if key is None else f" of {short_repr(key)}"
        if self._legacy_warned:
            _log.debug("MigratingRegistry: legacy %s%s failed: %s", what, about, exc)
            return
        self._legacy_warned = True
        _log.warning(
            "MigratingRegistry: legacy %s%s failed: %s; mirroring to the legacy backend is "
            "deferred and retried when it is back (listed by divergences())",
            what,
            about,
            short_repr(exc),
        )

    def _legacy_ok(self, *, request: bool = True) -> None:
        """A legacy mirror succeeded: say so once after a failure. ``request``:
        ask for a pass for what the shared view has left (a pass itself does
        not: it goes on with what it planned, and looks again at its end)."""
        if self._legacy_warned:
            self._legacy_warned = False
            _log.info("MigratingRegistry: mirroring to the legacy backend resumed")
        shared = self._shared_view
        if request and shared is not None and (shared.legacy_retry or shared.inbox):
            # The legacy side is back: ask for the registers it refused to be
            # retried, and the catch-up it missed (rule 7); applied outside the
            # facade lock.
            self._legacy_retry_all = True
            self._legacy_retry_requested = True

    def _catch_up_key(self, view: _View, key: Hashable) -> None:
        legacy = self._legacy
        gen = view.mirrors.get(key)
        if gen is None:
            return  # not (or no longer) a mirror here: nothing to catch up
        rec = self._records.get(key)
        # The mirror is forgotten only once its legacy copy is gone, so that a
        # refused unregister is retried rather than leaving an untracked copy.
        if rec is None or rec.view is not view:
            # Unregistered, replaced by another thread, or dead: drop the stale
            # copy. But a dead one whose death the listeners were not told
            # (withheld: the store answering tells it) is left as the bare store
            # leaves it (it reads as absent): taken again, the store tells the
            # death itself, before the new "registered" (a silent drop lost it).
            # Kept only while that death is withheld (_drop_kept_dead): bounded.
            if self._death_withheld(key) and legacy.lookup(key) is None:
                view.kept_dead.pop(key, None)
                view.kept_dead[key] = None  # (the newest last)
            else:
                with self._events_dropped(_LEGACY):
                    legacy.unregister(key)
            view.mirrors.pop(key, None)
        elif rec.gen != gen:
            entry = self._target.lookup(key)
            if entry is None or entry.agent is not rec.agent:
                with self._events_dropped(_LEGACY):
                    legacy.unregister(key)
                view.mirrors.pop(key, None)
            else:
                try:
                    with self._events_dropped(_LEGACY):
                        legacy.update_metadata(key, entry.metadata)
                    view.mirrors[key] = rec.gen
                except NotRegistered:  # the private copy's agent died
                    view.mirrors.pop(key, None)

    def _drop_kept_dead(self, view: _View) -> None:
        """Drop the dead copies of ``view`` (a private one, in its own thread)
        left for a death no longer withheld (told, or dropped from the bounded
        ``_withheld``): as a catch-up drops any other, oldest first. The rest
        are few: all of them (not only the oldest) are looked at once they
        pass ``_MAX_KEPT`` by a tenth, so ``kept_dead`` stays below that."""
        kept = view.kept_dead
        if not kept:
            return
        legacy = self._legacy
        for key in self._no_longer_withheld(kept):
            try:
                # Not if the key was taken again since (a mirror, or a live copy).
                if key not in view.mirrors and legacy.lookup(key) is None:
                    with self._events_dropped(_LEGACY):
                        legacy.unregister(key)
            except Exception as exc:  # retried by a later pass, as a catch-up's
                self._legacy_failed("catch-up", key, exc)
                return
            del kept[key]

    def _no_longer_withheld(self, kept: dict[Hashable, None]) -> list[Hashable]:
        """The keys of ``kept`` whose death is no longer withheld: the oldest,
        up to the first still withheld; all of them past the bound."""
        if len(kept) > _MAX_KEPT + _MAX_KEPT // 10:
            return [k for k in kept if not self._death_withheld(k)]  # (whole: rare)
        gone = []
        for key in kept:
            if self._death_withheld(key):
                break
            gone.append(key)
        return gone

    def _tell(self, view: _View | None, key: Hashable, caller: _View) -> None:
        """Tell ``view`` that the record of ``key`` changed (rule 3)."""
        if view is not None and view is not caller and view.private and not view.ended():
            view.inbox.append(key)

    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    def _drain_dead(self) -> None:
        dead = self._dead
        while True:
            try:
                key, agent = dead.popleft()
            except IndexError:
                return
            rec = self._records.get(key)
            if rec is not None and rec.agent is agent:
                del self._records[key]
                self._dead_record(rec.view, key, agent)

    def _dead_record(self, view: _View | None, key: Hashable, agent: Any) -> None:
        """The record of ``key`` (mirrored in ``view``) was dropped: ``agent`` died."""
        if view is not None:
            if view.private:
                if not view.ended():
                    view.inbox.append(key)
            else:
                view.forget(key)
            return
        shared = self._shared_view
        pending = None if shared is None else shared.legacy_retry.get(key)
        if shared is not None and pending is not None and pending[0] is agent:
            # Race: its deferred legacy mirror (rule 7) was never applied (the
            # legacy side was down): the copy it was to replace is stale, and
            # is listed and removed (_forget_legacy_register).
            self._forget_legacy_register(shared, key)
