"""The one Redis connection layer of Foundation (``RedisRegistry`` and ``RedisFlagStore``).

What every Redis-backed class shares, so both answer a fault identically:

- :func:`import_redis`: the optional ``redis`` extra, imported lazily (importing
  Foundation never needs it); ``ImportError`` naming ``foundation[redis]``.
- :func:`check_url` / :func:`redact_url`: URL validation (``InvalidConfig``)
  and the form used in messages and logs (password replaced by ``***``).
- :func:`connect`: a client with bounded timeouts and no hidden retries,
  validated by ``PING`` (which also ``SELECT``\\ s the database). A
  ``redis+sentinel://`` URL gives a client of the master Redis Sentinel names
  for a service (see :func:`check_url` and ``foundation._redis_sentinel``):
  every new connection asks the Sentinels for the master's address, so after
  a failover the next attempt reaches the new master.
- :func:`translate_error` / :func:`translated`: every redis-py failure becomes
  ``errors.BackendUnavailable`` (connection refused or reset, timeouts, protocol
  errors, and the error replies of an unhealthy server: ``READONLY``,
  ``LOADING``, ``MASTERDOWN``, ``BUSY``, ``OOM``, ``TRYAGAIN``,
  ``CLUSTERDOWN``, auth failures, any other error reply), except a
  configuration mistake (``DB index is out of range``), which is
  ``errors.InvalidConfig``. No redis-py exception leaves a public call.
- Background loops retry with :class:`foundation._retry.RetryBackoff`
  (full-jitter exponential backoff), the library's one retry policy.

``NOSCRIPT`` needs no mapping: redis-py's ``Script`` objects reload a script the
server does not know (after a restart or ``SCRIPT FLUSH``) and retry once, and a
pipeline loads its scripts before every ``execute`` (``tests/redis/test_conn.py``
checks both after a server restart).

Example:
    >>> redact_url("redis://app:s3cret@cache:6379/0")
    'redis://app:***@cache:6379/0'
    >>> check_url("redis://cache:6379/x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidConfig: invalid Redis URL ...: the database must be a number ...
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from foundation import telemetry
from foundation.errors import BackendUnavailable, FoundationError, InvalidConfig

if TYPE_CHECKING:
    from urllib.parse import SplitResult

__all__ = [
    "BOUND_QUERY",
    "REDIS_ERROR_KINDS",
    "ROUND_TRIP_EVENT",
    "STORE_QUERY",
    "check_url",
    "connect",
    "error_kind",
    "import_redis",
    "raised_inside_redis_py",
    "redact_url",
    "redis_errors",
    "redis_py_failure",
    "report_round_trip",
    "translate_error",
    "translated",
    "url_query_keys",
]

log = logging.getLogger("foundation.redis")

INSTALL_HINT: Final = (
    "Foundation's Redis backends need the redis extra: pip install 'foundation[redis]'"
)

_SCHEMES: Final = ("redis", "rediss", "unix")
SENTINEL_SCHEME: Final = "redis+sentinel"
SENTINEL_PORT: Final = 26379
SENTINEL_QUERY: Final = ("sentinel_username", "sentinel_password")
"""Query parameters a ``redis+sentinel://`` URL may hold (the Sentinels' own login)."""
_SECRET_QUERY: Final = ("password", "sentinel_password")

REDIS_ERROR_KINDS: Final[Mapping[str, str]] = {
    # error-reply code (the first word of the reply) -> what it means for us
    "READONLY": "the server is a read-only replica (a failover demoted it?)",
    "LOADING": "the server is loading its dataset into memory",
    "MASTERDOWN": "the replica lost its link to the master",
    "BUSY": "the server is busy running a script or function",
    "OOM": "the server is out of memory (maxmemory reached, noeviction)",
    "TRYAGAIN": "the cluster is resharding; try again",
    "CLUSTERDOWN": "the cluster is down",
    "NOAUTH": "the server requires a password",
    "WRONGPASS": "the server refused the credentials",
    "NOPERM": "the ACL user lacks a permission",
    "NOSCRIPT": "the server does not know the script (it restarted)",
    "EXECABORT": "a transaction was aborted",
    "UNBLOCKED": "a blocking read was cut off (the server changed role, master -> replica?)",
}
"""Error-reply codes of an unhealthy (not misconfigured) server and what they mean.

Each is ``BackendUnavailable``; so is any other error reply (``"response"``)."""

_DB_RANGE = "DB index is out of range"
_DEMOTED = "The previous master is now a slave"
"""redis-py's ``SentinelManagedConnection`` error for a ``READONLY`` reply of the master
it knew (the connection is dropped; the next one asks the Sentinels again)."""


def import_redis() -> ModuleType:
    """The ``redis`` module; ``ImportError`` naming ``foundation[redis]`` if missing."""
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - the extra is installed in dev
        raise ImportError(INSTALL_HINT) from exc
    return redis


def redact_url(url: str) -> str:
    """``url`` with its passwords replaced by ``***`` (for messages and logs): the
    one of the user part, and the ``password`` / ``sentinel_password`` query
    parameters.

    >>> redact_url("rediss://:pw@h:1/2")
    'rediss://:***@h:1/2'
    >>> redact_url("redis://h:1/0")
    'redis://h:1/0'
    >>> redact_url("redis+sentinel://app:pw@s1:26379,s2/cache/0?sentinel_password=x")
    'redis+sentinel://app:***@s1:26379,s2/cache/0?sentinel_password=***'
    """
    from urllib.parse import unquote_plus, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is not None:
            netloc = parts.netloc.rpartition("@")[2]
            user = f"{parts.username}:***@" if parts.username else ":***@"
            url = urlunsplit(parts._replace(netloc=user + netloc))
    except ValueError:
        return "<unparsable url>"
    head, sep, query = url.partition("?")
    if not sep:
        return url
    query, hash_, fragment = query.partition("#")
    # A key counts as it is read (parse_qsl: percent-decoded, "+" a space), in
    # any case: "sentinel%5Fpassword=x" is the Sentinel password too.
    items = query.split("&")
    for i, item in enumerate(items):
        key, eq, _value = item.partition("=")
        if eq and unquote_plus(key).strip().lower() in _SECRET_QUERY:
            items[i] = key + "=***"
    return head + sep + "&".join(items) + hash_ + fragment


BOUND_QUERY: Final = (
    "socket_timeout",
    "socket_connect_timeout",
    "timeout",
    "retry_on_timeout",
    "retry_on_error",
)
"""Query parameters redis-py reads that :func:`check_url` refuses: each would
override the bounds :func:`connect` sets (a URL's options win over the
client's in ``from_url``: ``?socket_timeout=600`` made every call wait up to
ten minutes, ``timeout`` failed every connection with a ``TypeError``,
``retry_on_*`` asked for the retries the library turns off). The bounds are
set once, by the Redis-backed classes' own option (``op_timeout`` or ``timeout``)."""

STORE_QUERY: Final = "namespace"
"""The query parameter a flag store URL adds (``open_store``): the store's namespace."""

_URL_QUERY: Final = frozenset(
    {
        # What redis-py's ``from_url`` converts itself (``URL_QUERY_ARGUMENT_PARSERS``
        # of redis-py 5 to 8; those of the installed version are added at run time).
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_read_size",
        "socket_keepalive",
        "retry_on_timeout",
        "retry_on_error",
        "max_connections",
        "health_check_interval",
        "ssl_check_hostname",
        "ssl_include_verify_flags",
        "ssl_exclude_verify_flags",
        "ssl_min_version",
        "timeout",
        "protocol",
        "legacy_responses",
        # Connection options redis-py passes on as the text given (strings).
        "username",
        "password",
        "client_name",
        "lib_name",
        "lib_version",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_password",
        "ssl_ciphers",
    }
)
"""Query parameters of a ``redis://``, ``rediss://`` or ``unix://`` URL: those
redis-py's ``from_url`` reads. Any other would reach a redis-py connection's
constructor as an unexpected keyword (a ``TypeError`` at the first command)."""


@functools.cache
def url_query_keys() -> frozenset[str]:
    """The query parameters :func:`check_url` accepts in a ``redis://`` URL."""
    try:
        from redis.connection import URL_QUERY_ARGUMENT_PARSERS
    except ImportError:  # pragma: no cover - the extra is installed in dev
        return _URL_QUERY
    return _URL_QUERY | frozenset(URL_QUERY_ARGUMENT_PARSERS)


def check_url(url: str, *, store: bool = False) -> None:
    """Raise ``InvalidConfig`` unless ``url`` is a usable redis-py URL.

    Accepted: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS),
    ``unix:///path/to/socket[?db=N]`` and, for Redis Sentinel,
    ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``
    with optional ``?sentinel_username=U&sentinel_password=P`` (see
    ``foundation._redis_sentinel.sentinel_spec``; any other parameter is
    refused); ``db`` is a non-negative integer. The query of a
    ``redis://``, ``rediss://`` or ``unix://`` URL holds only parameters
    redis-py reads (:func:`url_query_keys`, such as ``ssl_ca_certs``), except
    those that would override the library's bounds (:data:`BOUND_QUERY`:
    ``socket_timeout``, ``socket_connect_timeout``, ``timeout``,
    ``retry_on_timeout``, ``retry_on_error``; the bound is the caller's
    ``op_timeout``); with ``store=True`` (a flag store URL) also one
    non-empty ``namespace``. Whether
    the server has that database is known only by connecting (:func:`connect`).

    >>> check_url("unix:///run/redis.sock?db=1")
    >>> check_url("redis://cache:6379/0?namespace=shop", store=True)
    >>> check_url("http://cache:6379")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidConfig: invalid Redis URL ...: the scheme must be redis://, ...
    >>> check_url("redis://cache:6379/0?foo=1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidConfig: invalid Redis URL ...: unknown query parameter 'foo' ...
    """
    from urllib.parse import parse_qs

    if not isinstance(url, str) or not url:
        raise InvalidConfig(f"a Redis URL must be a non-empty str, not {url!r}")
    shown = redact_url(url)

    def bad(why: str) -> InvalidConfig:
        return InvalidConfig(f"invalid Redis URL {shown!r}: {why}")

    try:
        url.encode("utf-8")  # it goes over the wire (host names, service, login)
    except UnicodeEncodeError:  # bytes that are not UTF-8 on a command line
        raise bad("it is not valid UTF-8 text") from None
    if url.startswith(SENTINEL_SCHEME + "://"):
        from foundation._redis_sentinel import parse_sentinel_url

        spec = parse_sentinel_url(url, bad)
        # Refused here, as a plain URL's are (connect() refuses them too).
        unknown = [key for key in spec.unknown if not (store and key == STORE_QUERY)]
        if unknown:
            raise bad(_sentinel_unknown(unknown, store))
        if store:
            from urllib.parse import urlsplit

            _check_store_namespace(urlsplit(url).query, bad)
        return
    parts, port = _split_url(url, bad)
    _check_query_keys(parts.query, store, bad)
    query = parse_qs(parts.query)
    dbs = query.get("db", [])
    for db in dbs:
        if not db.isdigit():
            raise bad("the database must be a number (?db=0)")
    if parts.scheme == "unix":
        if not parts.path:
            raise bad("a unix:// URL needs the socket path (unix:///path/to/socket)")
        return
    _check_host_url(parts.path, port, dbs, bad)


def _check_query_keys(query: str, store: bool, bad: Callable[[str], InvalidConfig]) -> None:
    """``bad(why)`` for a query parameter redis-py does not read (``namespace``
    only when ``store``), or an empty or repeated ``namespace``."""
    from urllib.parse import parse_qsl

    known = url_query_keys()
    for key, _value in parse_qsl(query, keep_blank_values=True):
        if key in BOUND_QUERY:
            raise bad(_bound_refused(key))
        if key in known or (store and key == STORE_QUERY):
            continue
        if key == STORE_QUERY:
            raise bad(_NO_NAMESPACE)
        also = "; a flag store URL also takes ?namespace=NS" if store else ""
        raise bad(
            f"unknown query parameter {key[:60]!r} (the query holds redis-py's connection "
            f"options only, such as db, ssl_ca_certs or health_check_interval{also})"
        )
    if store:
        _check_store_namespace(query, bad)


_NO_NAMESPACE: Final = (
    "unknown query parameter 'namespace': a Redis connection has no namespace "
    "(only a flag store URL takes ?namespace=); give the registry's namespace "
    "on its own (namespace=NS; on the command line --namespace NS)"
)


def _bound_refused(key: str) -> str:
    """Why the query parameter ``key`` (one of :data:`BOUND_QUERY`) is refused."""
    return (
        f"query parameter {key!r} is not accepted: Foundation bounds every Redis call "
        "itself (socket connect and read timeouts, no redis-py retries); set the bound "
        "with the library's own option instead (RedisRegistry's op_timeout, "
        "RedisFlagStore's and RedisObserver's timeout)"
    )


def _sentinel_unknown(keys: list[str], store: bool) -> str:
    """Why a ``redis+sentinel://`` URL's query parameters ``keys`` are refused."""
    bound = [key for key in keys if key in BOUND_QUERY]
    if bound:
        return _bound_refused(bound[0])
    if keys == [STORE_QUERY]:
        return _NO_NAMESPACE
    takes = " and ".join(SENTINEL_QUERY) + (" (a flag store URL also namespace)" if store else "")
    names = ", ".join(repr(key[:60]) for key in keys)
    return f"unknown query parameter(s) {names} (a redis+sentinel:// URL accepts {takes})"


def _check_store_namespace(query: str, bad: Callable[[str], InvalidConfig]) -> None:
    """``bad(why)`` unless a flag store URL's ``namespace`` is given at most once, non-empty."""
    from urllib.parse import parse_qsl

    names = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == STORE_QUERY]
    if len(names) > 1:
        raise bad(f"one namespace per flag store URL, not {len(names)}")
    if names and not names[0]:
        raise bad("?namespace= is empty: name the flag store namespace (or leave it out)")


def _split_url(url: str, bad: Callable[[str], InvalidConfig]) -> tuple[SplitResult, int | None]:
    """``url``'s parts and port, checking its scheme and characters (``bad(why)`` raised)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise bad(str(exc)) from None
    # redis-py matches the scheme case-sensitively.
    if parts.scheme not in _SCHEMES or not url.startswith(parts.scheme + "://"):
        raise bad("the scheme must be redis://, rediss://, unix:// or redis+sentinel://")
    if any(ch.isspace() for ch in url):
        raise bad("it contains whitespace")
    if parts.hostname:
        try:
            parts.hostname.encode("idna")  # what the resolver will be given
        except UnicodeError:
            raise bad("the host is not a valid host name") from None
    return parts, port


def _check_host_url(
    path: str, port: int | None, dbs: list[str], bad: Callable[[str], InvalidConfig]
) -> None:
    """Check the port and ``/db`` path of a ``redis://`` or ``rediss://`` URL."""
    if port == 0:
        raise bad("port 0 is not a port")
    if path not in ("", "/") and not dbs:
        db = path[1:]
        if not db.isdigit():
            raise bad("the database must be a number (redis://host:port/0)")


def redis_errors() -> tuple[type[BaseException], ...]:
    """The exception types :func:`translated` turns into Foundation errors."""
    redis = import_redis()
    return (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)


def raised_inside_redis_py(exc: BaseException) -> bool:
    """True when ``exc`` (not a redis-py exception type) was raised by redis-py's
    own code: its innermost traceback frame is in the ``redis`` package.

    redis-py has internal races (a pooled connection cut by another thread
    during an outage can fail ``can_read`` with ``TypeError``, for instance);
    such an error is a backend failure, so it is translated like one. An
    exception raised by our code or a caller's callback is never matched.
    """
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(_redis_package_dir())


def redis_py_failure(exc: BaseException) -> BaseException:
    """A redis-py ``ConnectionError`` standing for ``exc``, an internal failure of
    redis-py (see :func:`raised_inside_redis_py`), so it is handled as a fault."""
    failure: BaseException = import_redis().exceptions.ConnectionError(
        f"redis-py failed internally: {type(exc).__name__}: {exc}"
    )
    failure.__cause__ = exc
    return failure


@functools.cache
def _redis_package_dir() -> str:
    location: str = import_redis().__file__ or ""
    return os.path.dirname(location) + os.sep


def error_kind(exc: BaseException) -> str:
    """A short name for the failure: an error-reply code of ``REDIS_ERROR_KINDS``
    (``"READONLY"``, ``"OOM"``, ...), ``"DBRANGE"``, ``"connection"``, ``"timeout"``,
    ``"protocol"``, ``"auth"``, ``"response"`` or ``"other"``."""
    redis = import_redis()
    ex = redis.exceptions
    text = str(exc)
    if _DB_RANGE in text:
        return "DBRANGE"
    return _reply_code_kind(exc, ex, text) or _exception_kind(exc, ex, text)


def _reply_code_kind(exc: BaseException, ex: Any, text: str) -> str | None:
    """The ``REDIS_ERROR_KINDS`` code an error reply names, or None."""
    code = text.split(" ", 1)[0] if text else ""
    if isinstance(exc, ex.ResponseError | ex.BusyLoadingError) and code in REDIS_ERROR_KINDS:
        return code
    if isinstance(exc, ex.ResponseError):
        return _wrapped_reply_code(text)
    return None


def _wrapped_reply_code(text: str) -> str | None:
    """The ``REDIS_ERROR_KINDS`` code inside a wrapped error reply's ``text``, or None."""
    # A script's error reply wraps the command's ("ERR ... script: ... READONLY ...").
    for known in REDIS_ERROR_KINDS:
        if f"-{known} " in text or f" {known} " in text or text.startswith(known):
            return known
    return None


def _exception_kind(exc: BaseException, ex: Any, text: str) -> str:
    """The kind of ``exc`` from its redis-py exception class (``ex``: redis.exceptions)."""
    specific: tuple[tuple[type[BaseException], str], ...] = (
        (ex.BusyLoadingError, "LOADING"),
        (ex.ReadOnlyError, "READONLY"),
        (ex.OutOfMemoryError, "OOM"),
        (ex.MasterDownError, "MASTERDOWN"),
        (ex.TryAgainError, "TRYAGAIN"),
        (ex.ClusterDownError, "CLUSTERDOWN"),
        (ex.NoScriptError, "NOSCRIPT"),
        (ex.NoPermissionError, "NOPERM"),
        (ex.AuthenticationError, "auth"),
        (ex.AuthorizationError, "auth"),
        (ex.AuthenticationWrongNumberOfArgsError, "auth"),
        (ex.TimeoutError, "timeout"),
        (ex.InvalidResponse, "protocol"),
        (ex.ResponseError, "response"),
    )
    for cls, kind in specific:
        if isinstance(exc, cls):
            return kind
    if isinstance(exc, ex.ConnectionError) and "protocol error" in text.lower():
        return "protocol"
    if isinstance(exc, ex.ConnectionError) and _DEMOTED in text:
        return "READONLY"  # a Sentinel client's READONLY reply, turned into a reconnect
    if isinstance(exc, ex.ConnectionError | OSError):
        return "connection"
    return "other"


def translate_error(exc: BaseException, *, url: str, doing: str) -> FoundationError:
    """The Foundation error for a redis-py failure ``exc`` met while ``doing``.

    ``url`` must already be redacted. ``InvalidConfig`` for a database index the
    server does not have; ``BackendUnavailable`` for everything else.

    >>> import redis
    >>> err = redis.exceptions.ReadOnlyError("You can't write against a read only replica.")
    >>> print(translate_error(err, url="redis://h:1/0", doing="registering 'a'"))
    ... # doctest: +NORMALIZE_WHITESPACE
    Redis at redis://h:1/0 failed while registering 'a': READONLY, the server is a
    read-only replica (a failover demoted it?): You can't write against a read only replica.
    """
    kind = error_kind(exc)
    if kind == "DBRANGE":
        return InvalidConfig(
            f"Redis at {url}: the database index is out of range for this server "
            f"({exc}); check the /db part of the URL"
        )
    detail = str(exc) or type(exc).__name__
    if kind in REDIS_ERROR_KINDS:
        why = f"{kind}, {REDIS_ERROR_KINDS[kind]}: {detail}"
    elif kind == "auth" and type(exc).__name__ == "SentinelLoginRefused":
        why = (
            "the Sentinels refused the login (check the URL's sentinel_username and "
            f"sentinel_password): {detail}"
        )
    elif kind == "auth":
        why = f"the server refused the credentials (check the URL's user and password): {detail}"
    elif kind == "timeout":
        why = f"no answer in time: {detail}"
    elif kind == "protocol":
        why = f"the server does not speak the Redis protocol (is this a Redis port?): {detail}"
    elif kind == "connection" and type(exc).__name__ == "MasterNotFoundError":
        # redis-py appends the repr of each Sentinel's client (a screenful per
        # Sentinel): the URL already names them, keep its first part.
        import re

        detail, _, per_sentinel = detail.partition(" : ")
        failures = re.findall(r"> - ([\w:.]+)", per_sentinel)
        if failures:
            detail += f" ({', '.join(failures)})"
        why = (
            "no Sentinel answered with a healthy master for the service (Sentinels "
            f"unreachable, or a failover in progress): {detail}"
        )
    elif kind == "connection":
        why = f"unreachable: {detail}"
    else:
        why = f"{type(exc).__name__}: {detail}"
    return BackendUnavailable(f"Redis at {url} failed while {doing}: {why}")


ROUND_TRIP_EVENT: Final = "foundation.redis.round_trip"
"""Telemetry event of one timed block of Redis calls:
``{"seconds": float, "ok": bool, "doing": str, "url": str}`` (``url`` redacted)."""

_BLOCKING: Final = frozenset({"following the change stream", "reading the change stream"})
"""``doing`` texts of blocking reads (``XREAD BLOCK``): their wait is not a round trip."""


def report_round_trip(began: float, *, ok: bool, doing: str, url: str) -> None:
    """Emit ``ROUND_TRIP_EVENT`` for a call started at ``time.perf_counter()`` == ``began``.

    Callers check ``telemetry.has_listeners(ROUND_TRIP_EVENT)`` before timing;
    blocking reads (``doing`` in ``_BLOCKING``) are not reported.
    """
    if doing not in _BLOCKING:
        seconds = time.perf_counter() - began
        telemetry.emit(ROUND_TRIP_EVENT, {"seconds": seconds, "ok": ok, "doing": doing, "url": url})


@contextmanager
def translated(url: str, doing: str) -> Iterator[None]:
    """Run a block of Redis calls; a redis-py (or socket) failure is re-raised as
    ``translate_error(exc, url=url, doing=doing)`` from it. ``url`` is redacted.

    With a ``foundation.redis.round_trip`` telemetry listener attached, the
    block is timed (``time.perf_counter``) and reported; otherwise it costs
    one dictionary lookup."""
    if telemetry.has_listeners(ROUND_TRIP_EVENT) and doing not in _BLOCKING:
        with _translated_and_timed(url, doing):
            yield
        return
    try:
        yield
    except Exception as exc:
        error = _translation(exc, url, doing)
        if error is None:
            raise  # ours or a caller's: unchanged
        raise error from exc


@contextmanager
def _translated_and_timed(url: str, doing: str) -> Iterator[None]:
    """:func:`translated` with a listener attached: the block is also timed and reported."""
    began = time.perf_counter()
    ok = False
    try:
        yield
        ok = True
    except Exception as exc:
        error = _translation(exc, url, doing)
        if error is None:
            raise  # ours or a caller's: unchanged
        raise error from exc
    finally:
        report_round_trip(began, ok=ok, doing=doing, url=url)


def _translation(exc: Exception, url: str, doing: str) -> FoundationError | None:
    """The Foundation error :func:`translated` raises for ``exc``; None to let it pass
    (a Foundation error already, or an exception of ours or a caller's)."""
    if isinstance(exc, FoundationError):
        return None
    if isinstance(exc, redis_errors()):
        return translate_error(exc, url=url, doing=doing)
    if raised_inside_redis_py(exc):
        return translate_error(redis_py_failure(exc), url=url, doing=doing)
    return None


def client_name(name: str) -> str:
    """``name`` as Redis accepts a client name: it refuses spaces and anything outside
    printable ASCII (which a node name or a namespace may hold), so each such
    character becomes ``_``; cut to 200 characters.

    >>> client_name("foundation-flags[prod eu/ü]")
    'foundation-flags[prod_eu/_]'
    """
    return "".join(c if "!" <= c <= "~" else "_" for c in name[:200])


def _no_maintenance_notifications() -> dict[str, Any]:
    """redis-py's option turning its "maintenance notifications" off, where it has them.

    Since redis-py 7 every new RESP3 connection asks for them by default
    (``CLIENT MAINT_NOTIFICATIONS ON``: one more round trip per connection, an
    error reply on servers that lack the command), and a server that sends
    them (a managed Redis during maintenance) makes redis-py relax the socket
    timeout to 10 s: past ``op_timeout``, the bound every call of ours keeps.
    Our own reconnection (failover, restart) needs none of it.
    """
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:  # redis-py before the feature: nothing to turn off
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def connect(
    url: str,
    *,
    op_timeout: float,
    connect_timeout: float | None = None,
    name: str | None = None,
    decode_responses: bool = False,
) -> Any:
    """A ``redis.Redis`` for ``url``, validated by ``PING`` (and ``SELECT`` of the db).

    Every call is bounded by ``op_timeout`` seconds (connecting by
    ``connect_timeout``, default ``op_timeout``); redis-py's own retries are off
    (the caller's loops retry with :class:`foundation._retry.RetryBackoff`). ``name`` is the
    ``CLIENT SETNAME`` shown by ``CLIENT LIST``, made acceptable to Redis (see
    :func:`client_name`).

    A ``redis+sentinel://`` URL gives a client of the service's master
    (``redis.sentinel.Sentinel(...).master_for(service)``, the same options):
    each new connection asks the Sentinels, in turn, for the master's address
    (``op_timeout`` per Sentinel), so a connection cut by a failover reconnects
    to the new master; a ``READONLY`` reply (a demoted master) drops the
    connection, which is then re-discovered the same way. No Sentinel reachable,
    or none knowing a healthy master, is ``BackendUnavailable`` naming the
    service and the Sentinels (the redacted URL).

    Raises:
        ImportError: the ``redis`` extra is missing.
        InvalidConfig: a malformed URL, or a database index the server does not have.
        BackendUnavailable: any other failure (unreachable, not Redis, refused login,
            an unhealthy server's error reply).
    """
    check_url(url)
    if not op_timeout > 0:
        raise InvalidConfig("op_timeout must be a positive number of seconds")
    redis = import_redis()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    shown = redact_url(url)
    options: dict[str, Any] = {
        "socket_timeout": op_timeout,
        "socket_connect_timeout": op_timeout if connect_timeout is None else connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "client_name": None if name is None else client_name(name),
        "decode_responses": decode_responses,
        **_no_maintenance_notifications(),
    }
    try:
        if url.startswith(SENTINEL_SCHEME + "://"):
            from foundation._redis_sentinel import sentinel_master

            client = sentinel_master(url, shown, options)
        else:
            client = redis.Redis.from_url(url, **options)
    except InvalidConfig:
        raise  # already names the (redacted) URL
    except (ValueError, TypeError) as exc:
        raise InvalidConfig(f"invalid Redis URL {shown!r}: {exc}") from None
    except redis_errors() as exc:  # pragma: no cover - from_url does no I/O today
        raise translate_error(exc, url=shown, doing="connecting") from exc
    try:
        with translated(shown, "connecting"):
            client.ping()
    except BaseException:
        client.close()
        raise
    return client
