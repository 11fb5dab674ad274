"""Staleness, flaps, listener faults and the read-only-replica state of the Redis flag store."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from foundation import _flap
from foundation._redis_conn import error_kind, tls_failure
from foundation.errors import BackendUnavailable
from foundation.flags._redis_store._core import _StoreCore
from foundation.flags._redis_store._shared import _read_only_error, listener_log, log


class _Health(_StoreCore):
    """Stale / in sync, flap damping, faults and read-only transitions, reported once each."""

    def _mark_stale(self, exc: Exception) -> bool:
        """Stale, ``exc`` the last error; True if this is the transition (report it once).

        Race: the listener's fault and a writer's refused kill switch at once:
        the lock makes one of them the transition. The time of the transition
        is set first, so a status() that says stale has its stale_since.
        """
        with self._lock:
            first = self._stale_since is None  # first since "in sync"
            if first:
                self._stale_since = time.time()
            self._last_error = str(exc)
            self._note_failure(exc)
            self._synced.clear()
        return first

    def _note_failure(self, exc: Exception, *, timed_out: bool | None = None) -> None:
        """Remember when Redis last failed the store and whether by a timeout
        (``timed_out``, else told from ``exc``'s cause): ``kill_switch`` commits a
        kill switch while stale unless Redis timed out and answered nothing since."""
        if timed_out is None:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            timed_out = error_kind(cause) == "timeout"
        self._failed_timed_out = timed_out
        self._failed_at = time.monotonic()

    def _went_stale(self, exc: Exception, what: str) -> None:
        """``_mark_stale``, reported (a log line and an event) on the transition."""
        if self._mark_stale(exc):
            self._report_stale(exc, what)

    def _report_stale(self, exc: Exception, what: str) -> None:
        """The stale transition: a WARNING (DEBUG within a flap) and an event.

        Race: a resync may complete between ``_mark_stale`` and the drop below
        (a writer's refused kill switch): the damper then sees the drop after
        that return, and up again at the resync the writer asked for.
        """
        with self._lock:
            flap = self._damper.drop(str(exc))
        if flap == "first":
            log.warning(
                "flag store %r: Redis at %s failed again, with the same error, right after "
                "the store came back in sync (%s): a fault that cuts some of its connections "
                "only (CLIENT KILL, client eviction: maxmemory-clients); the store goes on "
                "resyncing by itself; its stale and in-sync lines are logged at DEBUG until "
                "it stays in sync %.0f s",
                self.namespace, self._url, exc, _flap.FLAP_WINDOW,
            )  # fmt: skip
        log.log(
            logging.WARNING if flap == "usual" else logging.DEBUG,
            "flag store %r %s Redis at %s (%s); serving the node copy (stale)",
            self.namespace, what, self._url, exc,
        )  # fmt: skip
        self._event("stale", error=str(exc))

    def _flap_again(self, exc: Exception, what: str) -> None:
        """A listener fault while stale in a flap: another cause ends the flap and is
        said as a new outage (the flap's drop was at DEBUG); the same one, once the
        flap window has passed with no return to sync, ends it at WARNING."""
        with self._lock:
            same = self._damper.again(str(exc))
            lingers = self._damper.lingers() if same else None
        if not same:
            log.warning(
                "flag store %r %s Redis at %s (%s); serving the node copy (stale)",
                self.namespace, what, self._url, exc,
            )  # fmt: skip
        elif lingers is not None:
            log.warning(
                "flag store %r: still not in sync with Redis at %s %.0f s after the last of "
                "%d repeated failure(s) (%s); serving the node copy (stale); retrying with "
                "backoff",
                self.namespace, self._url, lingers.seconds, lingers.drops, exc,
            )  # fmt: skip

    def _flap_over(self) -> None:
        """Say that a flap ended (in sync ``FLAP_WINDOW`` s): its resyncs were logged
        at DEBUG, so without this line the log would end at the flap's WARNING."""
        if not self._damper.flapping or not self._synced.is_set():
            return  # (the listener's hot path: cheap checks without the lock)
        with self._lock:
            over = self._damper.over()
        if over is not None:
            log.info(
                "flag store %r: in sync with Redis at %s for %.0f s since the last of %d "
                "repeated failure(s) (%s): the flap is over",
                self.namespace, self._url, over.seconds, over.drops, over.cause,
            )  # fmt: skip

    def _fault(self, exc: Exception) -> None:
        """Log a listener fault, mark the store stale (one event per transition)."""
        first = self._mark_stale(exc)
        if _read_only_error(exc):
            self._note_read_only(True, str(exc))
        tls = tls_failure(str(exc)) if isinstance(exc, BackendUnavailable) else None
        if tls is not None and tls != self._tls_warned:
            # An outage that turns into a TLS failure (a certificate the clients
            # do not trust) needs an operator: once at WARNING, until in sync.
            self._tls_warned = tls
            log.warning("flag store %r: %s; retrying with backoff", self.namespace, exc)
        elif isinstance(exc, BackendUnavailable):
            listener_log.debug("flag listener %r: %s", self.namespace, exc)
        else:  # not an outage: corrupt data, a broken copy, a bug; keep the traceback
            listener_log.error(
                "flag listener %r failed; retrying with backoff", self.namespace, exc_info=exc
            )
        # An outage, or anything else that stops the listener (corrupt data,
        # a bug): either way answers come from the copy, but say which.
        lost = "lost" if isinstance(exc, BackendUnavailable) else "cannot follow"
        if first:
            self._report_stale(exc, lost)
        elif self._damper.flapping:
            self._flap_again(exc, lost)
        # Drop sockets that may be dead: the next attempt starts on fresh ones.
        # Race: a writer may be mid-call on a socket of _client's pool (e.g. in
        # its own timeout against a frozen Redis): closing it under the writer
        # turned that writer's "no answer in time" into "Bad file descriptor".
        # Only idle sockets go; a writer's own error handling drops its socket.
        if self._listen_client is not None:
            with contextlib.suppress(Exception):
                self._listen_client.connection_pool.disconnect()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.connection_pool.disconnect(inuse_connections=False)
        if self._listen_client is not None:
            with contextlib.suppress(Exception):
                self._listen_client.connection.disconnect()

    def _check_memory_policy(self, client: Any) -> None:
        """Redis answered: may it evict our keys? (``EvictionCheck``; a refused INFO
        fails nothing.) Race: Redis freezing (or going) just then. The timeout is
        this step's failure, like any other step's of a (re)sync: raised, not
        swallowed only for ``ROLE`` right after to wait a second timeout."""
        with self._translated("reading INFO memory"):
            self._memory_policy.check(client, raise_unreachable=True)

    def _check_role(self) -> bool:
        """Whether Redis is a read-only replica now (``ROLE``); noted, see ``_note_read_only``.

        A server that refuses ``ROLE`` (ACL, a proxy) keeps the last known answer.
        """
        client = self._ensure_clients()
        try:
            with self._translated("reading the server's role"):
                role = client.execute_command("ROLE")
        except BackendUnavailable as exc:
            if error_kind(exc.__cause__ or exc) not in ("NOPERM", "response"):
                raise  # unreachable: the resync fails and is retried
            return self._read_only
        replica = bool(role) and str(role[0]) in ("slave", "replica")
        self._note_read_only(replica, "ROLE: replica" if replica else None)
        return replica

    def _note_read_only(self, read_only: bool, cause: str | None = None) -> None:
        """Record whether Redis is a read-only replica: a log line and an event per
        transition (``read_only``, then ``writable``)."""
        if self._read_only == read_only:
            return  # no transition (checked again under the lock)
        with self._lock:  # Race: a writer and the listener noting it at once: one report
            if self._read_only == read_only:
                return
            self._read_only = read_only
        if read_only:
            log.warning(
                "flag store %r: Redis at %s is a read-only replica (%s); flag writes fail "
                "until it accepts writes (kill switches are applied locally and committed then)",
                self.namespace, self._url, cause,
            )  # fmt: skip
            self._event("read_only", error=cause)
        else:
            log.warning(
                "flag store %r: Redis at %s accepts writes again", self.namespace, self._url
            )
            self._event("writable")
