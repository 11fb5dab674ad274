"""Redis Sentinel for the one connection layer (``foundation._redis_conn``).

``_redis_conn.check_url`` and ``_redis_conn.connect`` hand a
``redis+sentinel://`` URL to this module: :func:`sentinel_spec` reads it, and
:func:`sentinel_master` builds a client of the master the Sentinels name for the
service. Its connections re-discover the master whenever they reconnect, and
one thread per process (``foundation-redis-sentinel``) watches the Sentinels so
that connections left on a former master fail their next call instead of
writing where nobody will read (see ``_sentinel_connection_class``), and
calls blocked on one fail at once (``_cut_moved``). The
failover itself is described in docs/redis.md, "Failover with Sentinel".
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any, Final

from foundation._redis_conn import (
    SENTINEL_PORT,
    SENTINEL_QUERY,
    SENTINEL_SCHEME,
    import_redis,
    log,
    redact_url,
)
from foundation.errors import InvalidConfig

__all__ = ["MASTER_MOVED", "SentinelSpec", "parse_sentinel_url", "sentinel_master", "sentinel_spec"]


class SentinelSpec:
    """What a ``redis+sentinel://`` URL says (see :func:`sentinel_spec`).

    ``unknown``: query parameters other than ``SENTINEL_QUERY`` (refused by
    :func:`connect`). (A plain class: a dataclass would cost ``import foundation``
    a millisecond.)
    """

    __slots__ = (
        "db",
        "password",
        "sentinel_password",
        "sentinel_username",
        "sentinels",
        "service",
        "unknown",
        "username",
    )

    def __init__(
        self,
        *,
        sentinels: tuple[tuple[str, int], ...],
        service: str,
        db: int,
        username: str | None,
        password: str | None,
        sentinel_username: str | None,
        sentinel_password: str | None,
        unknown: tuple[str, ...],
    ) -> None:
        self.sentinels = sentinels
        self.service = service
        self.db = db
        self.username = username
        self.password = password
        self.sentinel_username = sentinel_username
        self.sentinel_password = sentinel_password
        self.unknown = unknown

    def __repr__(self) -> str:  # never the passwords
        return f"SentinelSpec(sentinels={self.sentinels!r}, service={self.service!r}, db={self.db})"


def sentinel_spec(url: str) -> SentinelSpec:
    """The parts of a ``redis+sentinel://`` URL; ``InvalidConfig`` if malformed.

    The form is
    ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``
    followed by an optional ``?sentinel_username=U&sentinel_password=P``:

    - the hosts are the Sentinels (port 26379 by default; IPv6 in brackets);
    - ``service`` is the name the Sentinels monitor (``sentinel monitor <service> ...``);
    - ``user`` and ``password`` (percent-encoded) log in to the master, ``db``
      (default 0) is selected on it;
    - ``sentinel_username`` / ``sentinel_password`` log in to the Sentinels
      (``requirepass`` in the Sentinel configuration); without them, the
      Sentinels are contacted without a login.

    >>> spec = sentinel_spec("redis+sentinel://:pw@s1,s2:5000/cache/2")
    >>> spec.sentinels, spec.service, spec.db, spec.password
    ((('s1', 26379), ('s2', 5000)), 'cache', 2, 'pw')
    """
    shown = redact_url(url)

    def bad(why: str) -> InvalidConfig:
        return InvalidConfig(f"invalid Redis URL {shown!r}: {why}")

    if not isinstance(url, str) or not url.startswith(SENTINEL_SCHEME + "://"):
        raise bad("not a redis+sentinel:// URL")
    return parse_sentinel_url(url, bad)


_SENTINEL_FORM: Final = (
    "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]"
)


def parse_sentinel_url(url: str, bad: Callable[[str], InvalidConfig]) -> SentinelSpec:
    """``sentinel_spec`` with the caller's error builder (``bad(why)`` is raised)."""
    from urllib.parse import unquote, urlsplit

    if any(ch.isspace() for ch in url):
        raise bad("it contains whitespace")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise bad(str(exc)) from None
    if parts.fragment:
        raise bad("a #fragment is not allowed")
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    user, colon, secret = userinfo.partition(":")
    sentinels = (
        tuple(_sentinel_address(item, bad) for item in hostlist.split(",")) if hostlist else ()
    )
    if not sentinels:
        raise bad(f"no Sentinel address; the form is {_SENTINEL_FORM}")
    service, db = _service_and_db(parts.path, bad)
    query, unknown = _sentinel_query(parts.query, bad)
    return SentinelSpec(
        sentinels=sentinels,
        service=service,
        db=db,
        username=(unquote(user) or None) if at else None,
        password=unquote(secret) if at and colon else None,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password"),
        unknown=unknown,
    )


def _service_and_db(path: str, bad: Callable[[str], InvalidConfig]) -> tuple[str, int]:
    """The service name and the db of a ``redis+sentinel://`` URL's ``/service[/db]``."""
    from urllib.parse import unquote

    segments = path.split("/")[1:]  # "/service/db" -> ["service", "db"]
    if not segments or not segments[0]:
        raise bad(f"the service name is missing; the form is {_SENTINEL_FORM}")
    if len(segments) > 2:
        raise bad(f"too many path segments; the form is {_SENTINEL_FORM}")
    db = segments[1] if len(segments) == 2 and segments[1] else "0"
    if not db.isdigit():
        raise bad("the database must be a number (redis+sentinel://host:port/service/0)")
    return unquote(segments[0]), int(db)


def _sentinel_query(
    query: str, bad: Callable[[str], InvalidConfig]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The ``SENTINEL_QUERY`` parameters of ``query`` (each at most once), and the
    names of any others (refused by ``sentinel_master``)."""
    from urllib.parse import parse_qsl

    known: dict[str, str] = {}
    unknown: list[str] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in SENTINEL_QUERY:
            if key in known:
                raise bad(f"{key} is given twice")
            known[key] = value
        else:
            unknown.append(key)
    return known, tuple(unknown)


def _sentinel_address(item: str, bad: Callable[[str], InvalidConfig]) -> tuple[str, int]:
    """``(host, port)`` of one ``host[:port]`` of a Sentinel host list."""
    from urllib.parse import urlsplit

    if not item:
        raise bad("an empty Sentinel address in the host list (two commas?)")
    try:
        address = urlsplit("//" + item)
        host, port = address.hostname, address.port
    except ValueError as exc:
        raise bad(f"Sentinel address {item!r}: {exc}") from None
    if not host:
        raise bad(f"Sentinel address {item!r} has no host")
    try:
        host.encode("idna")
    except UnicodeError:
        raise bad(f"Sentinel address {item!r}: the host is not a valid host name") from None
    if port == 0:
        raise bad(f"Sentinel address {item!r}: port 0 is not a port")
    return host, SENTINEL_PORT if port is None else port


def sentinel_master(url: str, shown: str, options: dict[str, Any]) -> Any:
    """A client of the master of ``url``'s service (``url`` is a valid
    ``redis+sentinel://`` URL); ``options`` are :func:`connect`'s client options.

    The Sentinel connections have the same bounds as the master's
    (``socket_timeout`` and ``socket_connect_timeout``, no retries): a
    Sentinel that does not answer (down, frozen, unreachable) costs a discovery
    at most ``connect_timeout + op_timeout`` before the next one is asked."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    spec = sentinel_spec(url)
    if spec.unknown:
        raise InvalidConfig(
            f"invalid Redis URL {shown!r}: unknown parameter(s) {', '.join(spec.unknown)} "
            f"(a redis+sentinel:// URL accepts {' and '.join(SENTINEL_QUERY)})"
        )
    sentinel_options: dict[str, Any] = {
        "socket_timeout": options["socket_timeout"],
        "socket_connect_timeout": options["socket_connect_timeout"],
        "retry": Retry(NoBackoff(), 0),
    }
    # The Sentinels' own connections: no maintenance notifications either (connect()).
    if "maint_notifications_config" in options:
        sentinel_options["maint_notifications_config"] = options["maint_notifications_config"]
    if spec.sentinel_password is not None:
        sentinel_options["password"] = spec.sentinel_password
        sentinel_options["username"] = spec.sentinel_username
    manager = _sentinel_manager_class()(list(spec.sentinels), sentinel_kwargs=sentinel_options)
    client = manager.master_for(
        spec.service,
        redis_class=_sentinel_client_class(),
        connection_class=_sentinel_connection_class(),
        connection_pool_class=_sentinel_pool_class(),
        db=spec.db,
        username=spec.username,
        password=spec.password,
        **options,
    )
    # The watch asks the Sentinels once per round for all the pools of a group:
    # the same Sentinels (in any order), service and Sentinel login.
    client.connection_pool.foundation_watch_group = (
        tuple(sorted(spec.sentinels)),
        spec.service,
        spec.sentinel_username,
        spec.sentinel_password,
    )
    _MASTER_WATCH.add(client.connection_pool)
    return client


@functools.cache
def _sentinel_manager_class() -> type[Any]:
    """redis-py's ``Sentinel`` (the Sentinels' clients), with a discovery that

    - asks every Sentinel in turn, whatever it failed with (redis-py stops at
      an error reply, such as a server on that port that is not a Sentinel),
      the ones that failed last time (in any client: ``_LAGGING``) last;
    - moves the Sentinel that answered to the front without losing one when
      two threads discover at once (redis-py swaps two items of the shared
      list in place: two racing swaps can leave one Sentinel twice and
      another never asked again);
    - says in one line what each Sentinel did (redis-py appends the repr of
      every Sentinel's client), never a password, and raises
      ``SentinelLoginRefused`` (an ``AuthenticationError``) when every
      Sentinel refused the login.
    """
    from redis.exceptions import AuthenticationError, RedisError, ResponseError
    from redis.sentinel import MasterNotFoundError, Sentinel

    class SentinelLoginRefused(AuthenticationError):
        """Every Sentinel refused the login (``translate_error`` names it)."""

    class SentinelManager(Sentinel):
        def discover_master(self, service_name: str) -> tuple[str, int]:
            # A snapshot (another thread may reorder the list meanwhile), with
            # the Sentinels that failed their last question last.
            sentinels = sorted(self.sentinels, key=lambda s: _address(s) in _LAGGING)
            failures: dict[str, list[str]] = {}  # why -> the Sentinels that said it
            refused = 0
            for sentinel in sentinels:
                try:
                    masters: Any = sentinel.sentinel_masters()
                except (RedisError, OSError) as exc:
                    if not isinstance(exc, AuthenticationError | ResponseError):  # it answered
                        _LAGGING.add(_address(sentinel))
                    refused += isinstance(exc, AuthenticationError)
                    failures.setdefault(self._why(exc), []).append(_address(sentinel))
                    continue
                _LAGGING.discard(_address(sentinel))
                state = masters.get(service_name)
                if state and self.check_master_state(state, service_name):  # type: ignore[no-untyped-call]
                    self._prefer(sentinel, sentinels)
                    return state["ip"], state["port"]
                why = "no healthy master" if state else "does not monitor it"
                failures.setdefault(why, []).append(_address(sentinel))
            said = "; ".join(f"{', '.join(where)}: {why}" for why, where in failures.items())
            text = f"No master found for {service_name!r} ({said})"
            if refused == len(sentinels):
                raise SentinelLoginRefused(text)
            raise MasterNotFoundError(text)

        def _prefer(self, sentinel: Any, seen: list[Any]) -> None:
            # Race: a new list replaces the old one in one assignment, each a
            # permutation of all the Sentinels: a concurrent discovery's order
            # may win, but no Sentinel is ever lost or doubled.
            if seen[0] is not sentinel:
                self.sentinels = [sentinel, *(s for s in seen if s is not sentinel)]

        def _why(self, exc: BaseException) -> str:
            secret = self.sentinel_kwargs.get("password")
            if isinstance(exc, AuthenticationError):
                if not secret:
                    return "requires a login (the URL has no sentinel_password)"
                return f"refused the login: {exc}".replace(secret, "***")  # never echoed anyway
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return text.replace(secret, "***") if secret else text

    return SentinelManager


_LAGGING: Final[set[str]] = set()
"""``host:port`` of the Sentinels whose last question got no answer (timed
out, connection refused or cut, not a Redis reply; a refused login or an
error reply is an answer), in any client of the process: every discovery asks them after
the others, so a frozen Sentinel costs a timeout once, not once per client
(each client has its own Sentinel clients). One that answers again leaves it.
Race: ``add``/``discard`` are atomic; a discovery that reads a mark being
changed only asks in another order."""


def _address(sentinel: Any) -> str:
    """``host:port`` of one Sentinel's client."""
    kwargs = sentinel.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


@functools.cache
def _sentinel_client_class() -> type[Any]:
    """``redis.Redis`` whose ``close()`` also closes its Sentinel connections."""
    redis = import_redis()

    class SentinelMasterClient(redis.Redis):  # type: ignore[misc, name-defined]
        def close(self) -> None:
            # master_for() hands the client its pool, so redis-py's close() leaves
            # it open (auto_close_connection_pool is False): its sockets stayed
            # until collected, and kept the watch thread running. The pool is
            # this client's alone: closed as from_url's clients close theirs.
            try:
                super().close()
            finally:
                pool = getattr(self, "connection_pool", None)
                manager = getattr(pool, "sentinel_manager", None)
                try:
                    if pool is not None:
                        pool.disconnect()
                finally:
                    if manager is not None:
                        manager.close()

    return SentinelMasterClient


@functools.cache
def _sentinel_pool_class() -> type[Any]:
    """redis-py's ``SentinelConnectionPool`` whose full ``disconnect()`` (what a
    close does) also closes its Sentinel connections: a caller may wrap the pool
    in a client of its own (the flag store's pinned listener), whose close()
    never reaches the Sentinel manager, left with open sockets until collected.
    Its idle-only ``disconnect(inuse_connections=False)`` (what a recorded change
    of master calls) also cuts the connections in use elsewhere (``_cut_moved``)."""
    from redis.sentinel import SentinelConnectionPool

    class SentinelPool(SentinelConnectionPool):
        def disconnect(self, inuse_connections: bool = True) -> None:
            try:
                super().disconnect(inuse_connections)
            finally:
                if inuse_connections:  # not redis-py's own idle-only drop on a switch
                    self.sentinel_manager.close()
                else:
                    # What every recorded change of master calls (redis-py's
                    # discovery, the watch's _record): cut those in use too.
                    _cut_moved(self)

    return SentinelPool


def _cut_moved(pool: Any) -> None:
    """Cut the connections of ``pool`` in use on another address than its master's
    (a former master's): ``socket.shutdown``, so a call blocked on one (a tail's
    or listener's ``XREAD BLOCK``, a write awaiting its reply) fails at once
    with ``MASTER_MOVED`` (see ``SentinelConnection.read_response``) rather than
    when its block or timeout ends; the owner then reconnects to the new master
    by its usual recovery, as after a server that closed the connection.

    ``shutdown`` (unlike ``close``) leaves the file descriptor to its owner, who
    closes it (``disconnect``) when it sees the failure, so no other socket can
    take its number meanwhile.

    Races: a connection being returned at this moment: ``release`` keeps it
    only at the master's address (``owns_connection``; the new address is
    recorded before this cut), so it is dropped either way. One being dropped
    and reconnected by its owner: the socket is read before the address, and
    ``connect_to`` sets the new address before it opens the new socket, so a
    socket read here belongs to an address read after it, or is one already
    closed (``shutdown`` then fails on it, ignored; only the few instructions
    of CPython's ``shutdown`` between reading the descriptor number and the
    system call could meet a number closed and reused in between). One
    connecting to the old address just now (it discovered before the change):
    not cut, its next call fails (the ``send_packed_command`` check)."""
    import socket

    master = pool.master_address
    try:
        with pool._lock:
            in_use = list(pool._in_use_connections)
    except AttributeError:  # another redis-py: the next call's check catches it
        return
    for conn in in_use:
        sock = getattr(conn, "_sock", None)  # first the socket, then its address
        if sock is None or master is None or (conn.host, conn.port) == tuple(master):
            continue
        if getattr(conn, "pid", None) != os.getpid():
            continue  # the parent's, inherited through fork: not ours to cut
        # The base class's shutdown: an SSL socket's own also drops its TLS
        # state, which the owner's thread may be reading through. An error:
        # already closed by its owner.
        with contextlib.suppress(OSError, TypeError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


@functools.cache
def _sentinel_connection_class() -> type[Any]:
    """redis-py's ``SentinelManagedConnection``, made to follow the master.

    - A connection that is not connected reconnects through the Sentinels
      (``connect()``) before it sends: redis-py's ``send_packed_command``
      reconnects to the address it last used, so a pinned connection (a
      ``single_connection_client``: the tails and listeners' ``XREAD BLOCK``)
      cut by a failover would go back to the old master.
    - A connected one whose address is not the master's as last discovered
      (by :data:`_MASTER_WATCH`, or by another connection of its pool) drops
      itself and fails the call (``ConnectionError`` naming ``MASTER_MOVED``):
      after ``SENTINEL FAILOVER`` the old master stays a writable master until
      the Sentinels demote it (about 10 s later), and a connection left on it
      would write there, to be lost when it resyncs from the new one. Failing
      the call (rather than moving silently) makes the caller handle the switch
      as the connection cut it is: the registry re-asserts and resynchronises,
      the flag store compares versions and restores what the new master lacks.
    - A call on such a connection cut under it (``_cut_moved``: a blocking read,
      a reply awaited) fails the same way, with ``MASTER_MOVED``, not as a
      connection the server closed.
    """
    from redis.exceptions import ConnectionError
    from redis.sentinel import SentinelManagedConnection

    class SentinelConnection(SentinelManagedConnection):
        def connect(self) -> None:
            # redis-py calls connect() at every checkout from the pool (a no-op
            # when connected): only a new connection concerns the watch, so the
            # calls of a connected client never take its process-wide lock.
            fresh = self._sock is None
            super().connect()  # type: ignore[no-untyped-call]
            if fresh:
                _MASTER_WATCH.ensure_running()

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            connected: Any = self._sock
            if connected is not None:
                moved = self._moved()
                if moved is not None:
                    self.disconnect()  # type: ignore[no-untyped-call]
                    raise ConnectionError(moved)
            if connected is None:
                self.connect()  # asks the Sentinels for the master's address
            try:
                super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]
            except ConnectionError as exc:
                self._raise_if_moved(exc)  # Race: cut (_cut_moved) while sending
                raise

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().read_response(*args, **kwargs)
            except ConnectionError as exc:
                self._raise_if_moved(exc)  # cut by _cut_moved: say why
                raise

        def _raise_if_moved(self, exc: BaseException) -> None:
            """Raise ``MASTER_MOVED`` (dropping the connection) for ``exc``, a failure
            on a connection whose address is no longer the master's."""
            moved = self._moved()
            if moved is not None:
                self.disconnect()  # type: ignore[no-untyped-call]
                raise ConnectionError(moved) from exc

        def _moved(self) -> str | None:
            """Why this connection may not be used: its address is not the master's
            as last discovered; None if it is (or none is known yet)."""
            known = self.connection_pool.master_address
            if known is None or (self.host, self.port) == tuple(known):
                return None
            return (
                f"{MASTER_MOVED}: the Sentinels name {known[0]}:{known[1]}, "
                f"not {self.host}:{self.port}; the next call connects to it"
            )

    return SentinelConnection


class _MasterWatch:
    """One daemon thread (``foundation-redis-sentinel``) that asks the Sentinels
    every ``WATCH_INTERVAL`` for the master of the Sentinel pools that have a
    connected connection, and records it in each pool (which drops its idle
    connections to a former master and cuts those in use: ``_record``). It
    ends when no pool has a connection
    (closed clients), and starts again with the next connection made.

    The pools are grouped by what a discovery depends on (the Sentinels, the
    service, the Sentinel login: ``foundation_watch_group``): one discovery per
    group and round, however many clients there are, through the Sentinel
    clients of one of its pools (so with that client's timeouts).

    A Sentinel that does not answer costs this thread, never a caller, up to
    ``connect_timeout + op_timeout``, once: the Sentinel that answers is asked
    first afterwards. A failed discovery changes nothing: the connections stay
    where they are until their own calls fail.
    """

    def __init__(self) -> None:
        import threading
        import weakref

        self._lock = threading.Lock()
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.rounds = 0
        """Rounds completed since the process started (for tests and diagnosis)."""

    def add(self, pool: Any) -> None:
        with self._lock:
            self._pools.add(pool)
        self.ensure_running()

    def ensure_running(self) -> None:
        """Start the thread unless it runs (called after each new connection)."""
        import threading

        # Under the lock: the thread decides to end under it too, after seeing no
        # connected connection, so a connection made meanwhile is never unwatched.
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # gone after a fork
                self._thread = threading.Thread(
                    target=self._run, name="foundation-redis-sentinel", daemon=True
                )
                self._thread.start()

    def after_fork(self) -> None:
        """In a forked child: the parent's thread and lock state do not apply."""
        import threading

        self._lock = threading.Lock()
        self._thread = None
        self._wake = threading.Event()

    def _run(self) -> None:
        while True:
            try:
                with self._lock:
                    live = [pool for pool in self._pools if _has_connection(pool)]
                    if not live:
                        self._thread = None
                        return
                for group in _groups(live):
                    self._check(group)
            except Exception:  # never dies: the next round tries again
                log.exception("watching the Redis Sentinels failed; retrying")
            self.rounds += 1
            self._wake.wait(WATCH_INTERVAL)

    @staticmethod
    def _check(group: list[Any]) -> None:
        """One discovery for ``group`` (pools of one service and Sentinels),
        recorded in each of its pools."""
        asking = group[0]
        before = {tuple(p.master_address) for p in group if p.master_address is not None}
        try:
            now = asking.get_master_address()  # records it in ``asking``
        except Exception as exc:
            why = str(exc) or type(exc).__name__
            log.debug("Sentinel discovery for %r failed: %s", asking.service_name, why)
            return
        finally:
            if not _has_connection(asking):
                # Race: closed during the discovery, which reopened a Sentinel
                # connection after close() shut them: shut it.
                asking.sentinel_manager.close()
        for pool in group[1:]:
            _record(pool, now)
        if before - {tuple(now)}:
            log.warning(
                "Redis Sentinel: the master of %r is now %s:%s (was %s); connections move to it",
                asking.service_name,
                *now,
                ", ".join(f"{host}:{port}" for host, port in sorted(before - {tuple(now)})),
            )


def _groups(pools: list[Any]) -> list[list[Any]]:
    """``pools`` grouped by ``foundation_watch_group`` (a pool without one alone)."""
    groups: dict[object, list[Any]] = {}
    for pool in pools:
        groups.setdefault(getattr(pool, "foundation_watch_group", id(pool)), []).append(pool)
    return list(groups.values())


def _record(pool: Any, address: tuple[str, int]) -> None:
    """Record ``address`` as ``pool``'s master, as redis-py's own discovery does
    (``SentinelConnectionPoolProxy.get_master_address``): a change drops the
    pool's idle connections and cuts the ones in use on another address
    (``SentinelPool.disconnect``, ``_cut_moved``): their current or next call
    fails with ``MASTER_MOVED``.

    Race: a connection of the pool may have discovered a newer address since
    this round's discovery; it is then overwritten for one round at most: its
    connections are cut or fail one call (``MASTER_MOVED``), rediscover, and
    the next round records the newer address again."""
    proxy = getattr(pool, "proxy", None)
    if proxy is None or not hasattr(proxy, "master_address"):  # another redis-py
        pool.get_master_address()
        return
    if proxy.master_address != address:
        proxy.master_address = address
        pool.disconnect(inuse_connections=False)


def _has_connection(pool: Any) -> bool:
    """Whether ``pool`` has a connected connection (idle or in use) of this process.

    A pool inherited through ``fork`` holds the parent's sockets until the child
    uses it (redis-py then resets it): those are not the child's connections."""
    if getattr(pool, "pid", None) not in (None, os.getpid()):
        return False
    try:
        conns = [*pool._in_use_connections, *pool._available_connections]
    except (AttributeError, RuntimeError):  # another redis-py, or a change under us
        return True
    return any(getattr(conn, "_sock", None) is not None for conn in conns)


MASTER_MOVED: Final = "the master moved (a Sentinel failover)"

WATCH_INTERVAL: Final = 0.5
"""Seconds between two discoveries of the master by :data:`_MASTER_WATCH`."""

_MASTER_WATCH: Final = _MasterWatch()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_MASTER_WATCH.after_fork)
