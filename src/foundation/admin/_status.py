"""What the admin server tells about its backends: ``GET /api/status`` and the page's banner.

Per component (the registry, the flag store): its connection state, since
when this server has seen it, the last backend error (cut to
``ERROR_LIMIT`` characters) and whether it is degraded; overall
``degraded`` is True while any component is. A Redis outage degrades the
service without stopping it (reads come from the mirror and the node copy),
so ``/healthz`` stays a liveness probe and this is the report.

While a component can lose its backend (a ``RedisRegistry``, a
``RedisObserver``, a store with ``status()`` or ``stale``: a ``SQLiteFlagStore``
whose file was deleted or replaced while in use), a ``foundation-admin-status``
thread reads it every ``POLL`` seconds, remembers when its state changed
(``since``) and publishes a ``status`` event to the page on every change (of
state, pending kill switches, read-only, or the cause of the last error).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from foundation._flap import cause_of
from foundation._redis_conn import tls_failure
from foundation.errors import Closed, FoundationError
from foundation.metrics import connection_state

__all__ = [
    "ERROR_LIMIT",
    "LOCAL",
    "POLL",
    "FlagSync",
    "StatusBoard",
    "error_cause",
    "flag_sync",
    "registry_status",
    "store_status",
]

log = logging.getLogger("foundation.admin")

POLL: Final = 0.5
"""Seconds between two reads of the components' states by the status thread."""
ERROR_LIMIT: Final = 300
"""Longest ``last_error`` the API shows (cut with an ellipsis; see ``_bounded``)."""

LOCAL: Final = "local"
"""The state of a component with no backend connection to lose (in-process, SQLite)."""


_URL_QUERY: Final = re.compile(r"(\brediss?(?:\+sentinel)?://[^\s?]*)\?[^\s]*")
_RAW_TAIL: Final = re.compile(r": Error \d+ connecting to \S+\. .*\Z", re.DOTALL)
"""redis-py's own words after a TLS message, which repeat the reason it names."""
_HEAD_MIN: Final = 60
"""Characters of a long message's head ("Redis at URL failed while ...") kept
before its TLS part."""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _bounded(text: object) -> str | None:
    """``text`` in at most ``ERROR_LIMIT`` characters, keeping what names the fix.

    A backend error reads "Redis at URL failed while OP: DETAIL". Cutting its
    end alone could drop the detail (a TLS URL with its file paths is 200
    characters before it). So, over the limit: for a TLS failure, redis-py's
    repeat of the reason goes; then the URL's query (TLS options) becomes "?…";
    then the head is cut before the TLS part (which says what to fix); then the end.

        >>> print(_bounded("Redis at rediss://h:1/0?ssl_ca_certs=/" + "d" * 300 + "/ca.pem "
        ...                "failed while connecting: TLS handshake failed (x)"))
        Redis at rediss://h:1/0?… failed while connecting: TLS handshake failed (x)
    """
    if not isinstance(text, str):
        return None
    if len(text) <= ERROR_LIMIT:
        return text
    tls = tls_failure(text)
    if tls is not None:
        text = text[: len(text) - len(tls)] + _RAW_TAIL.sub("", tls)
    if len(text) > ERROR_LIMIT:
        text = _URL_QUERY.sub("\\1?\u2026", text)
        tls = tls_failure(text)
    if tls is not None and len(text) > ERROR_LIMIT:
        head = text[: len(text) - len(tls)]
        text = _cut(head, max(ERROR_LIMIT - len(tls), _HEAD_MIN)) + tls
    return _cut(text, ERROR_LIMIT)


def error_cause(error: object) -> str | None:
    """The kind of a backend error, without what varies between two retries.

    "Redis at URL failed while OP: CAUSE: detail" gives CAUSE: an outage that
    turns into a TLS failure (Redis restarted with a certificate the clients do
    not trust) keeps its state (``disconnected``) but changes its cause, and the
    page must say so; a new operation failing the same way (the lease, then the
    change stream) is no news.

        >>> error_cause("Redis at redis://h:1/0 failed while renewing the lease: "
        ...             "unreachable: Error 111 connecting to h:1. Connection refused.")
        'unreachable'
        >>> error_cause("Redis at rediss://h:1/0 failed while reading: TLS certificate "
        ...             "verification failed (certificate has expired): renew it")
        'TLS certificate verification failed (certificate has expired)'
    """
    if not isinstance(error, str):
        return None
    return cause_of(error)[:ERROR_LIMIT]  # the one reading of a cause (flap damping's too)


# ------------------------------------------------------------------ components


def registry_status(registry: object) -> dict[str, Any]:
    """The registry's block (without ``since``): kind, state, connected, stale, last error."""
    report = connection_state(registry)
    if report is None:
        return {
            "kind": type(registry).__name__,
            "state": LOCAL,
            "connected": None,
            "stale": False,
            "last_error": None,
            "degraded": False,
        }
    return {
        "kind": type(registry).__name__,
        "state": report.state,
        "connected": report.connected,
        "stale": report.stale,
        "last_error": _bounded(report.last_error),
        "degraded": not report.connected or report.stale,
    }


def store_status(store: object) -> dict[str, Any]:
    """The flag store's block (without ``since``): its ``status()`` fields and a state.

    ``state``: ``"stale"`` (answers come from the node copy), ``"pending"``
    (connected, kill switches not yet committed), ``"connected"``, ``"closed"``,
    ``"error"`` (``status()`` failed: its node copy cannot be read), or
    ``"local"`` for a store without ``status()`` (memory, SQLite: every write
    that returned is committed), unless it says it is ``stale`` (a SQLite store
    whose file was deleted or replaced while in use answers from the old file
    for good: ``"stale"``, degraded, with its ``stale_since``, as
    ``last_error`` its ``stale_reason``, and ``reopen_needed`` True: every
    write fails, kill switches included, until it is reopened). Also
    ``stale_since`` (wall-clock time the store went stale, else None),
    ``read_only`` (Redis is a read-only replica: flag writes fail; degraded)
    and ``copy_in_memory`` (the node copy's file failed: the copy is not
    durable; degraded), when the store reports them.
    """
    status = getattr(store, "status", None)
    out: dict[str, Any] = {"kind": type(store).__name__}
    if not callable(status):
        return _unreported(out, store)
    try:
        report = status()
    except Closed:
        return _no_report(out, "closed")
    except FoundationError as exc:  # its node copy cannot be read: say so, not a 500
        return _no_report(out, "error", last_error=_bounded(str(exc)))
    return _reported(out, store, report)


def _unreported(out: dict[str, Any], store: object) -> dict[str, Any]:
    """The block of a store without ``status()``: local, or stale if it says so."""
    if getattr(store, "stale", False) is not True:
        return _no_report(out, LOCAL, degraded=False)
    reason = getattr(store, "stale_reason", None)
    since = getattr(store, "stale_since", None)
    # Stale for good: every write refused (FlagError), kill switches included, until
    # the store is reopened; the page words it so (not as a Redis store's outage).
    return _no_report(
        out,
        "stale",
        stale=True,
        stale_since=since,
        last_error=_bounded(reason),
        reopen_needed=True,
    )


def _no_report(
    out: dict[str, Any], state: str, *, degraded: bool = True, **more: Any
) -> dict[str, Any]:
    """The block of a store that gives no ``status()`` report (none, closed, failing)."""
    return {**out, "state": state, "pending": 0, "pending_flags": [], **more, "degraded": degraded}


def _reported(out: dict[str, Any], store: object, report: object) -> dict[str, Any]:
    """The block built from a store's ``status()`` report."""
    fields = {
        k: getattr(report, k, None)
        for k in ("connected", "stale", "version", "pending", "restores", "resyncs", "stale_since")
    }
    pending = int(fields["pending"] or 0)
    state = "stale" if fields["stale"] else ("pending" if pending else "connected")
    read_only = bool(getattr(report, "read_only", False))
    in_memory = bool(getattr(report, "copy_in_memory", False))
    return {
        **out,
        **fields,
        "pending": pending,
        "pending_flags": _pending_flags(store, report) if pending else [],
        "read_only": read_only,
        "copy_in_memory": in_memory,
        "last_error": _bounded(getattr(report, "last_error", None)),
        "state": state,
        "degraded": state != "connected" or read_only or in_memory,
    }


def _pending_flags(store: object, report: object) -> list[str]:
    """The flags of pending kill switches: the report's ``pending_flags``, else ``pending()``."""
    names = getattr(report, "pending_flags", None)
    if names is not None:
        return sorted(str(n) for n in names)
    return sorted(flag_sync(store).pending)


@dataclass(frozen=True, slots=True)
class FlagSync:
    """Where a flag store's writes stand: ``stale`` (it answers from its node
    copy) and the flags of kill switches not yet committed (``pending``)."""

    stale: bool
    pending: frozenset[str]

    def of(self, flag: str) -> str:
        """``"pending"``, ``"stale"`` or ``"committed"`` for one flag (see ``flag_sync``)."""
        if flag in self.pending:
            return "pending"
        return "stale" if self.stale else "committed"


def flag_sync(store: object) -> FlagSync:
    """How far the flag states this node serves are committed to the store.

    A flag is ``pending`` while a kill switch on it waits to be committed
    (this node serves it off; other nodes still serve the old state);
    ``stale`` while the store answers from its node copy (other nodes' changes
    may be missing); ``committed`` otherwise. Stores without ``status()``
    commit every write before it returns.
    """
    status, pending = getattr(store, "status", None), getattr(store, "pending", None)
    if not callable(status):
        return FlagSync(getattr(store, "stale", False) is True, frozenset())
    try:
        report = status()
        names = getattr(report, "pending_flags", None)  # one read of the copy: consistent
        if names is None:
            ops = pending() if callable(pending) else []
            names = [f for op in ops for f in getattr(op, "flags", ())]
    except (Closed, FoundationError):
        return FlagSync(True, frozenset())  # a closed or broken copy: nothing is known fresh
    return FlagSync(bool(getattr(report, "stale", False)), frozenset(str(f) for f in names))


def _watchable(registry: object, store: object) -> bool:
    """Whether a component can lose its backend (then the status thread runs)."""
    has_state = registry is not None and connection_state(registry) is not None
    return has_state or callable(getattr(store, "status", None)) or hasattr(store, "stale")


# ------------------------------------------------------------------ the board


class StatusBoard:
    """The status block, with ``since`` per component; publishes changes.

    ``report()`` reads every component now. ``publish(report)`` is called (on
    the status thread) whenever a component's state or pending count changed.
    ``close()`` stops the thread.
    """

    def __init__(
        self,
        *,
        registry: object,
        store: object,
        publish: Callable[[Mapping[str, Any]], None],
        poll: float = POLL,
    ) -> None:
        self._registry = registry
        self._store = store
        self._publish = publish
        self._poll = poll
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[tuple[Any, ...], float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if _watchable(registry, store):
            self.report()  # the first states, seen from now
            self._thread = threading.Thread(
                target=self._run, name="foundation-admin-status", daemon=True
            )
            self._thread.start()

    def report(self) -> dict[str, Any]:
        """The status block now: ``{"degraded", "at", "registry", "flag_store"}``.

        A change it is the first to see is published (whoever reads first stamps
        ``since`` and tells the page; the status thread then sees no change).
        """
        block, changed = self._read()
        if changed:
            self._publish(block)
        return block

    def _read(self) -> tuple[dict[str, Any], bool]:
        """The status block and whether a component changed since the last read."""
        # Race: the status thread and requests read at once. Reading and stamping
        # under one lock keeps each component's (state, since) pair whole and in
        # time order (a reader that read first can never stamp an older state
        # over a newer one); the first reader to see a change stamps it.
        with self._lock:
            now = time.time()
            parts: dict[str, dict[str, Any] | None] = {
                "registry": None if self._registry is None else registry_status(self._registry),
                "flag_store": None if self._store is None else store_status(self._store),
            }
            changes = [self._stamp(n, p, now) for n, p in parts.items() if p is not None]
        degraded = any(p is not None and p["degraded"] for p in parts.values())
        return {"degraded": degraded, "at": now, **parts}, any(changes)

    def _stamp(self, name: str, part: dict[str, Any], now: float) -> bool:
        """Set ``part["since"]`` (holding the lock); True if the part changed since the
        last read (its state, its pending count, whether Redis is read-only, or the
        cause of its last error: see ``error_cause``)."""
        key = (
            part["state"],
            part.get("pending", 0),
            part.get("read_only", False),
            error_cause(part.get("last_error")),
        )
        seen = self._seen.get(name)
        if seen is None or seen[0][0] != key[0]:
            self._seen[name] = (key, now)  # a new state: since now
        elif seen[0] != key:
            self._seen[name] = (key, seen[1])  # the same state, a new pending count
        part["since"] = None if part["state"] == LOCAL else self._seen[name][1]
        return seen is not None and seen[0] != key

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.report()
            except Exception:  # the thread must not die: log and read again next turn
                log.exception("admin: could not read the components' status")

    def close(self) -> None:
        """Stop the status thread (idempotent)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
