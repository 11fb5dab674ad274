"""The admin app under uvicorn: in the foreground (``serve``) or on a thread (``AdminServer``)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from types import FrameType, TracebackType
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette

from foundation._cli._signals import STOP_SIGNALS, raising_handler
from foundation.admin._app import create_app
from foundation.admin._auth import parse_tokens
from foundation.admin._slow_clients import (
    DEFAULT_HEADER_TIMEOUT,
    check_header_timeout,
    check_max_connections,
    protocol_class,
)
from foundation.admin._state import AdminState, RegistryLike
from foundation.errors import Closed, InvalidConfig
from foundation.flags import FeatureFlags, Migration

__all__ = ["AdminServer", "is_loopback", "parse_bind", "serve"]

log = logging.getLogger("foundation.admin")


def parse_bind(bind: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:8800"`` for IPv6) as ``(host, port)``.

    Example:
        >>> parse_bind("127.0.0.1:8800"), parse_bind("[::1]:0")
        (('127.0.0.1', 8800), ('::1', 0))
    """
    if not isinstance(bind, str):
        raise InvalidConfig(f"bind is a str HOST:PORT, not {type(bind).__name__}")
    host, sep, port = bind.rpartition(":")
    if not sep or not host:
        raise InvalidConfig(f"bind is HOST:PORT, not {bind!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        raise InvalidConfig(f"bind is HOST:PORT, not {bind!r}") from None
    if not 0 <= number <= 65535:
        raise InvalidConfig(f"port {number} is outside 0..65535")
    return host, number


def is_loopback(host: str) -> bool:
    """Whether ``host`` names a loopback address only (``0.0.0.0`` and ``::`` do not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name could resolve anywhere


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, started: threading.Event, state: AdminState) -> None:
        super().__init__(config)
        self._started_event = started
        self._state = state
        self.stop_signal: int | None = None  # the first SIGINT/SIGTERM/SIGHUP that stopped it
        self.signals: tuple[int, ...] = ()  # the signals that stop it (_signals_to_take)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # End the event streams first: uvicorn waits for open responses to finish.
        self._state.hub.close()
        await super().shutdown(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._started_event.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, for ``self.signals`` only (see :func:`_signals_to_take`);
        uvicorn took SIGINT and SIGTERM whatever their handler."""
        taken: dict[int, Any] = {}
        try:
            for sig in self.signals:
                taken[sig] = signal.signal(sig, self.handle_exit)
            yield
        finally:
            for sig, handler in taken.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn re-raises the signal after its graceful shutdown (ending the
        # process); serve() returns normally instead (the signal kept in
        # stop_signal). A second Ctrl-C forces it.
        if self.stop_signal is None:
            self.stop_signal = sig
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def _signals_to_take() -> tuple[int, ...]:
    """SIGINT, SIGTERM and SIGHUP, those still at their default: ``SIG_DFL`` or the
    handler that raises (Python's ``KeyboardInterrupt`` for SIGINT, the
    ``foundation`` command's for SIGTERM and SIGHUP). One the program ignores
    (``nohup``, a background job's SIGINT) or handles itself is left to it. Read
    before ``asyncio.run``, which puts a SIGINT handler of its own in place. None
    off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return ()
    return tuple(
        sig
        for sig in STOP_SIGNALS  # SIGINT, SIGTERM, SIGHUP (where the platform has it)
        if signal.getsignal(sig) is signal.SIG_DFL or signal.getsignal(sig) is raising_handler(sig)
    )


_BACKLOG = 128


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio sets TCP_NODELAY
    # only on sockets whose proto says TCP. Without it uvicorn's two writes of a response
    # (headers, body) meet Nagle + delayed ACK: ~40 ms per request on Linux.
    try:
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # EMFILE
    except OSError as exc:
        raise InvalidConfig(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise InvalidConfig(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


class AdminServer:
    """The admin app served by uvicorn on a background thread.

    ``start()`` returns once the socket accepts connections (``url`` then has
    the real port, also for ``bind="127.0.0.1:0"``); ``close()`` ends every
    event stream, stops the server and joins its thread. The live objects stay
    the caller's to close.

    ``header_timeout`` (seconds, default 10) closes a connection that has not
    sent a complete request (head and body) that long after it opened, or
    after the first byte of a later one; ``max_connections``
    (default 1,000, or half ``ulimit -n`` if lower) closes new connections at
    once beyond that many (see :mod:`foundation.admin._slow_clients`).

    Raises (from the constructor):
        InvalidConfig: a bad ``bind``, ``header_timeout``, ``max_connections``
            or ``token`` (see :func:`parse_tokens`), or a non-loopback ``bind``
            without a token (``None``, or an empty list or mapping).
    """

    def __init__(
        self,
        *,
        flags: FeatureFlags | None = None,
        migration: Migration | None = None,
        registry: RegistryLike | None = None,
        supervisors: Iterable[Any] = (),
        token: str | Iterable[str] | Mapping[str, str] | None = None,
        read_only: bool = False,
        bind: str = "127.0.0.1:8800",
        metrics: Any = None,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        max_connections: int | None = None,
    ) -> None:
        host, port = parse_bind(bind)
        self._header_timeout = check_header_timeout(header_timeout)
        self._max_connections = check_max_connections(max_connections)
        loopback = is_loopback(host)
        if isinstance(token, Iterable) and not isinstance(token, str | Mapping):
            token = list(token)  # parsed here and again by create_app: an iterator only once
        # Not `token is None`: [], {} or () configure no token either, and off loopback
        # would serve every read to anyone (with writes off).
        if not loopback and not parse_tokens(token).configured:
            raise InvalidConfig(
                f"refusing to serve the admin page on non-loopback {host!r} without a token "
                "(give token=..., or bind 127.0.0.1)"
            )
        self.app: Starlette = create_app(
            flags=flags,
            migration=migration,
            registry=registry,
            supervisors=supervisors,
            token=token,
            read_only=read_only,
            public_reads=loopback,  # reads need the token off loopback
            metrics=metrics,
        )
        self._host, self._port = host, port
        self._thread: threading.Thread | None = None
        self._server: _Server | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._closed = False
        self.url = ""

    @property
    def state(self) -> AdminState:
        state: AdminState = self.app.state.admin
        return state

    def _config(self) -> uvicorn.Config:
        return uvicorn.Config(
            self.app,
            lifespan="off",
            ws="none",
            access_log=False,
            log_config=None,  # a library never reconfigures the process's logging
            timeout_graceful_shutdown=2,
            # h11 with a request-head deadline and a connection cap (slow clients).
            http=protocol_class(
                header_timeout=self._header_timeout, max_connections=self._max_connections
            ),
            # The listen backlog _bind gives: uvicorn's 2048 would also let asyncio
            # accept up to 2048 sockets at once before the cap can close any.
            backlog=_BACKLOG,
        )

    def start(self, timeout: float = 30.0) -> Self:
        """Listen and serve on a daemon thread; return once accepting connections.

        Idempotent while it serves (``with server.start():`` starts it once).

        Raises:
            InvalidConfig: the address cannot be listened on, or it did not start.
            Closed: after :meth:`close` (a server is not restarted).
        """
        if self._closed:
            raise Closed(f"this AdminServer is closed (it served {self.url or 'nothing'})")
        if self._thread is not None and self._thread.is_alive():
            return self
        sock = _bind(self._host, self._port)
        port = sock.getsockname()[1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"http://{host}:{port}/"
        self._server = _Server(self._config(), self._started, self.state)

        def run() -> None:
            try:
                assert self._server is not None
                asyncio.run(self._server.serve(sockets=[sock]))
            except BaseException as exc:  # SystemExit from uvicorn included
                self._failure = exc
                log.exception("admin server stopped with an error")
            finally:
                sock.close()
                self._started.set()  # wake start() if it never came up

        thread = threading.Thread(target=run, name="foundation-admin", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # the thread limit: release the port; a later start() retries
            sock.close()
            raise InvalidConfig(f"the admin server did not start: {exc!r}") from exc
        self._thread = thread
        if not self._started.wait(timeout) or self._failure is not None:
            self.close()
            raise InvalidConfig(f"the admin server did not start: {self._failure!r}")
        return self

    def close(self) -> None:
        """End event streams, stop the server, join its thread. Idempotent."""
        self._closed = True
        self.state.close()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def serve(
    *,
    flags: FeatureFlags | None = None,
    migration: Migration | None = None,
    registry: RegistryLike | None = None,
    supervisors: Iterable[Any] = (),
    token: str | Iterable[str] | Mapping[str, str] | None = None,
    read_only: bool = False,
    bind: str = "127.0.0.1:8800",
    metrics: Any = None,
    on_ready: Any = None,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_connections: int | None = None,
) -> int | None:
    """Serve the admin page in the foreground until SIGINT (Ctrl-C), SIGTERM or SIGHUP.

    Returns the number of the signal that stopped it (None: stopped
    otherwise), after a graceful shutdown (open event streams are cut after
    2 s): the ``foundation admin`` command exits as any command that signal
    stopped. ``on_ready(url)`` is called once the socket accepts connections;
    ``header_timeout`` and ``max_connections`` are :class:`AdminServer`'s.
    Only a signal at its default action (or at Python's ``KeyboardInterrupt``
    handler) is taken over while serving: one the program ignores or handles
    itself is left to it (``serve`` then runs until one of the others).

    Raises:
        InvalidConfig: a bad ``bind``, ``header_timeout`` or ``max_connections``,
            a non-loopback ``bind`` without a token, or the address cannot be
            listened on.
    """
    server = AdminServer(
        flags=flags,
        migration=migration,
        registry=registry,
        supervisors=supervisors,
        token=token,
        read_only=read_only,
        bind=bind,
        metrics=metrics,
        header_timeout=header_timeout,
        max_connections=max_connections,
    )
    sock = _bind(server._host, server._port)
    port = sock.getsockname()[1]
    host = f"[{server._host}]" if ":" in server._host else server._host
    server.url = f"http://{host}:{port}/"
    started = threading.Event()
    uv = _Server(server._config(), started, server.state)
    uv.signals = _signals_to_take()

    async def main() -> None:
        async def announce() -> None:
            await asyncio.get_running_loop().run_in_executor(None, started.wait)
            if on_ready is not None and uv.started:
                on_ready(server.url)

        waiter = asyncio.create_task(announce())
        try:
            await uv.serve(sockets=[sock])
        finally:
            started.set()
            await waiter
            server.state.close()

    try:
        asyncio.run(main())
    finally:
        sock.close()
    return uv.stop_signal
