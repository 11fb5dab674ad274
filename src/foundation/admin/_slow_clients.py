"""Slow and idle clients: a deadline for the whole request, a cap on connections.

uvicorn's keep-alive timeout starts only after a first response, and every
byte received stops it, so a client that connects and sends nothing, half a
request head, or a complete head then its body a byte at a time, is held
forever; enough of them ("slowloris") exhaust the process's file descriptors
or, with the cap below, lock every other client out. :func:`protocol_class`
returns uvicorn's h11 protocol with two additions:

- a connection whose request (head and body) is not complete
  ``header_timeout`` seconds after it opened (or after the first byte of a
  later request, once a keep-alive pause ended) is closed. Its answer may have
  been sent already (an early error, e.g. 405, to a POST whose body still
  trickles): the body is bounded anyway. A complete request is never cut,
  however long its answer takes (the page's event stream). The pause between
  two requests stays uvicorn's keep-alive timeout;
- beyond ``max_connections`` open connections, a new one is closed at once,
  before a byte of it is read, so its descriptor is released right away. A
  WARNING on ``foundation.admin`` says so when the cap is first hit, then at
  most once a minute with the count closed meanwhile.

Example:
    >>> cls = protocol_class(header_timeout=10.0, max_connections=100)
    >>> issubclass(cls, H11Protocol), cls.header_timeout
    (True, 10.0)
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from foundation.errors import InvalidConfig

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "check_header_timeout",
    "check_max_connections",
    "protocol_class",
]

log = logging.getLogger("foundation.admin")

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 1000
WARNING_INTERVAL = 60.0  # seconds between two WARNINGs about the cap


def check_header_timeout(value: object) -> float:
    """``header_timeout`` as a float: a finite number of seconds > 0.

    Example:
        >>> check_header_timeout(2)
        2.0
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidConfig(f"header_timeout is a number of seconds, not {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise InvalidConfig(f"header_timeout is a finite number of seconds > 0, not {value!r}")
    return float(value)


def check_max_connections(value: object) -> int:
    """``max_connections`` as an int >= 1; None: :func:`default_max_connections`.

    Example:
        >>> check_max_connections(50)
        50
    """
    if value is None:
        return default_max_connections()
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfig(f"max_connections is an int, not {type(value).__name__}")
    if value < 1:
        raise InvalidConfig(f"max_connections is at least 1, not {value}")
    return value


def default_max_connections() -> int:
    """1,000, or half the soft open-file limit when that is lower (``ulimit -n
    1024``: 512), leaving descriptors to the rest of the process."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no getrlimit (Windows)
        return DEFAULT_MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY or soft < 2:
        return DEFAULT_MAX_CONNECTIONS
    return min(DEFAULT_MAX_CONNECTIONS, soft // 2)


class _Refusals:
    """Connections closed at the cap, counted for the rate-limited WARNING.
    One per server; used on its event loop's thread only (no lock)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.count = 0  # closed since the last WARNING
        self.warned_at: float | None = None

    def refused(self) -> None:
        self.count += 1
        now = time.monotonic()
        if self.warned_at is not None and now - self.warned_at < WARNING_INTERVAL:
            return
        if self.warned_at is None:
            log.warning(
                "the admin server has %d connections open (max_connections): new ones "
                "are closed at once until some end (a client whose request, head and "
                "body, is not complete after header_timeout is closed)",
                self.cap,
            )
        else:
            log.warning(
                "the admin server is at max_connections=%d again: %d connections "
                "closed at once since the last warning",
                self.cap,
                self.count,
            )
        self.warned_at, self.count = now, 0


class _GuardedH11Protocol(H11Protocol):
    header_timeout: ClassVar[float]
    max_connections: ClassVar[int]
    refusals: ClassVar[_Refusals]
    _head_timer: asyncio.TimerHandle | None = None  # armed while a request is incomplete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # adds self to self.connections
        if len(self.connections) > self.max_connections:
            # Discarded now (connection_lost discards it again) so a burst of
            # refusals does not count against the next connections.
            self.connections.discard(self)
            self.refusals.refused()
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # also stops uvicorn's keep-alive timer
        if self.transport.is_closing():
            self._disarm()
        elif self._incomplete():
            # Part of a request: the deadline armed at the connection or at the
            # request's first byte runs on; these bytes do not extend it. The
            # first bytes after a keep-alive pause (uvicorn stopped its timer
            # on them) arm it.
            if self._head_timer is None:
                self._arm()
        elif self.conn.their_state is h11.IDLE:
            # These bytes ended a body after its answer was sent (an early
            # error): h11 started the next cycle and uvicorn armed no timer (it
            # stopped its keep-alive timer on them). The idle connection gets a
            # fresh deadline, as a new one does.
            self._disarm()
            self._arm()
        else:  # DONE (its answer may take long: never cut), MUST_CLOSE, CLOSED, ERROR
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may parse pipelined requests buffered meanwhile
        # A pipelined request left incomplete in the buffer (its head done, its
        # body not) stopped uvicorn's keep-alive timer: its deadline starts now.
        if self._head_timer is None and not self.transport.is_closing() and self._incomplete():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _incomplete(self) -> bool:
        """Whether a request is under way and not all received: bytes of its
        head, or its head and not all its body (``SEND_BODY``)."""
        state = self.conn.their_state
        return state is h11.SEND_BODY or (state is h11.IDLE and bool(self.conn.trailing_data[0]))

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        # Race: the deadline and the last bytes of the request can be due in
        # the same loop iteration. asyncio runs the read first, and
        # data_received cancels this handle, which then never runs; another
        # loop may order them otherwise, so the state is checked again here: a
        # request completed meanwhile keeps its connection (IDLE here is a
        # connection with no request yet, or a partial head). Bytes still in
        # the kernel at this point are lost with the connection, as for any
        # client at a deadline (the client sees a close, before any answer
        # unless an early one, which HTTP clients retry for idempotent requests).
        state = self.conn.their_state
        if state not in (h11.IDLE, h11.SEND_BODY) or self.transport.is_closing():
            return
        log.debug(
            "closed a connection from %s: no complete request (head and body) after %g s",
            self.client,
            self.header_timeout,
        )
        self.transport.close()


def protocol_class(*, header_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a request deadline (head and body) and a connection cap,
    for ``uvicorn.Config(http=...)``: one class per server (it holds the
    server's count of refusals). h11 whatever ``http="auto"`` would pick
    (httptools when installed): the hooks used here are h11's."""

    class AdminH11Protocol(_GuardedH11Protocol):
        pass

    AdminH11Protocol.header_timeout = header_timeout
    AdminH11Protocol.max_connections = max_connections
    AdminH11Protocol.refusals = _Refusals(max_connections)
    return AdminH11Protocol
