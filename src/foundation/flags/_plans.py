"""The migration plans recorded in a flag store, read for the flag metadata
(``foundation.flags._metadata``) of both OpenFeature bridges: ``FoundationProvider``
(``foundation.openfeature``) and the admin server's OFREP endpoints
(``foundation.admin``). One reader, so the two describe a flag alike.

``read_plans`` is the first read (a store that cannot answer: a WARNING, no
plans). ``PlanRefresher`` keeps them current afterwards, never on the caller's
path: no store records a plan with an event of its own, so it reads them again
when the flags change (``changed()``, from a ``FeatureFlags.subscribe``
listener: a plan is recorded before its migration's first step switches its
flags, here or in any process sharing the store) and when a ``RedisFlagStore``
is back in sync after an outage (telemetry ``foundation.flags.in_sync`` of that
store). Reads run on a worker thread of its own, at most one per ``interval``
(events meanwhile coalesce into one read after it). A plan recorded and never
stepped shows at the next change of the flags (or outage, or restart).

Stdlib only: imported by the ``admin`` and ``openfeature`` extras alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from foundation import telemetry
from foundation.errors import Closed, FoundationError
from foundation.flags._redis_store import RedisFlagStore
from foundation.flags._sqlite_store import SQLiteFlagStore

if TYPE_CHECKING:
    from foundation.flags._migration import MigrationPlan
    from foundation.flags._store import FlagStore

__all__ = ["CLOSE_WAIT", "INTERVAL", "PlanRefresher", "is_about", "read_plans"]

INTERVAL = 1.0
"""Seconds at least between two re-reads of one ``PlanRefresher``."""
CLOSE_WAIT = 1.0
"""Seconds ``PlanRefresher.close()`` waits for a re-read under way."""

Plans = dict[str, "MigrationPlan"]


def read_plans(store: FlagStore, logger: logging.Logger, prefix: str = "") -> Plans | None:
    """``store.plans()``; None, after a WARNING on ``logger``, when the store cannot
    answer (``BackendUnavailable``, an unreadable record).

    Raises:
        errors.Closed: the store is closed.

    Example:
        >>> from foundation.flags import MemoryFlagStore
        >>> store = MemoryFlagStore()
        >>> read_plans(store, logging.getLogger("demo"))
        {}
        >>> store.close()
    """
    try:
        return dict(store.plans())
    except Closed:
        raise
    except FoundationError as exc:
        logger.warning("%smigration plans not read from %r: %s", prefix, store, exc)
        return None


def is_about(store: object, data: Mapping[str, Any]) -> bool:
    """Whether a store health event's ``data`` names ``store``'s backend: a
    ``RedisFlagStore``'s namespace and (redacted) URL, a ``SQLiteFlagStore``'s path.

    Example:
        >>> is_about(object(), {"namespace": "foundation"})
        False
    """
    if isinstance(store, RedisFlagStore):
        # The event names the store by its URL as the store shows it (redacted:
        # its repr's), kept in _url (one package: typed, so a rename fails mypy
        # here, not silently): one namespace on two servers is two stores.
        return bool(data.get("namespace") == store.namespace and data.get("url") == store._url)
    if isinstance(store, SQLiteFlagStore):
        return bool(data.get("path") == store.path)
    return False


class PlanRefresher:
    """Reads ``store.plans()`` again on a worker thread (named ``name``) after
    ``changed()`` or the store's ``in_sync``, and hands each successful read to
    ``on_plans`` (under this object's lock, never after ``close()``: keep it quick).

    Use: ``attach()``, the first read (``read_plans``), ``ready(failed=...)``;
    ``changed()`` from a flags listener; ``close()``. Events before ``ready``
    are read after it (listen first: a change between the read and the
    subscription is not lost). A failed re-read keeps what the caller has and
    logs one WARNING per run of failures (``ready(failed=True)`` counts as the
    first); a read that succeeds re-arms it.
    """

    def __init__(
        self,
        store: FlagStore,
        on_plans: Callable[[Plans], None],
        *,
        logger: logging.Logger,
        name: str,
        prefix: str = "",
        interval: float = INTERVAL,
    ) -> None:
        self._store = store
        self._on_plans = on_plans
        self._log = logger
        self._name = name
        self._prefix = prefix
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set by close(): ends a wait for the interval
        self._ready = False  # the first read is done: the worker may read after it
        self._dirty = False  # a change came since the worker's last read began
        self._closed = False
        self._warned = False  # a WARNING was logged for the current run of failures
        self._start_warned = False  # one for the current run of failed thread starts
        self._last = -float("inf")  # time.monotonic() when the last read began
        self._thread: threading.Thread | None = None
        self._detach: Callable[[], None] | None = None

    def attach(self) -> None:
        """Listen to ``in_sync`` of a ``RedisFlagStore`` (other stores emit none)."""
        if isinstance(self._store, RedisFlagStore):
            self._detach = telemetry.attach("foundation.flags.in_sync", self._on_in_sync)

    def ready(self, *, failed: bool) -> None:
        """The first read is done (``failed``: it logged its WARNING); a change
        told meanwhile is read now."""
        with self._lock:
            self._ready = True
            self._warned = failed
            self._start_if_due()

    def changed(self) -> None:
        """The flags changed: read the plans again (soon; never in this call)."""
        with self._lock:
            self._dirty = True
            self._start_if_due()

    def _on_in_sync(self, name: str, data: Mapping[str, Any]) -> None:
        # On the store's listener thread: only flag the work and wake the worker.
        # Race: another store object on the same namespace and URL (another
        # FeatureFlags in this process) emits the same event: one read more, at
        # most one per interval.
        if is_about(self._store, data):
            self.changed()

    def _start_if_due(self) -> None:
        """Start the worker (under ``_lock``) unless it runs already: the running
        one reads again for the changes flagged meanwhile (coalesced)."""
        if self._ready and self._dirty and not self._closed and self._thread is None:
            thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:
                # The thread limit: on a listener's thread this must not raise, nor
                # leave an unstarted thread behind (it would block every later start
                # and make close() join one never started). _dirty stays set: the
                # next change tries again. One WARNING per run of failures: a storm
                # of changes at the limit does not log (I/O) once per change here.
                if not self._start_warned:
                    self._start_warned = True
                    self._log.warning(
                        "%smigration plans not re-read (no worker thread): %s", self._prefix, exc
                    )
                return
            self._start_warned = False
            self._thread = thread

    def _run(self) -> None:
        # Race: a change landing during a read (or the wait before it) sets _dirty
        # again: this loop reads once more (never a second worker); one landing
        # after the check below finds _thread cleared under the same lock and
        # starts a new worker.
        while True:
            with self._lock:
                if self._closed or not self._dirty:
                    self._thread = None
                    return
                delay = self._last + self._interval - time.monotonic()
                if delay <= 0:
                    self._dirty = False  # changes from here on: one read more
                    self._last = time.monotonic()
            if delay > 0:
                self._stop.wait(delay)  # the rate bound; close() ends it at once
                continue
            self._read_once()

    def _read_once(self) -> None:
        try:
            plans = dict(self._store.plans())
        except Closed:  # the flags closed before their user: nothing to read any more
            return
        except FoundationError as exc:  # BackendUnavailable: keep the metadata there is
            with self._lock:
                warn, self._warned = not self._warned, True
            if warn:
                self._log.warning(
                    "%smigration plans not re-read from %r: %s", self._prefix, self._store, exc
                )
            return
        except Exception:  # never let the worker die on a bug
            self._log.exception("%smigration plans not re-read from %r", self._prefix, self._store)
            return
        with self._lock:
            self._warned = False
            # Race: close() meanwhile: the closed user's metadata is left alone.
            if self._closed:
                return
            try:
                self._on_plans(plans)
                return
            except Exception as exc:  # a bug there must not end the worker (jammed for good)
                failure = exc
        self._log.error("%smigration plans not handed on", self._prefix, exc_info=failure)

    def close(self) -> None:
        """Detach and wait for a read under way, at most ``CLOSE_WAIT``. Idempotent."""
        with self._lock:
            self._closed = True
            detach, self._detach = self._detach, None
            thread = self._thread
        self._stop.set()
        if detach is not None:
            detach()  # an event in flight past this sees _closed and starts nothing
        if thread is not None and thread is not threading.current_thread():
            # Bounded: a read on a frozen Redis may take more than one store
            # timeout (a reconnection first). A worker left running is a daemon
            # that hands nothing on after close (see _read_once) and ends with
            # the read.
            thread.join(CLOSE_WAIT)
