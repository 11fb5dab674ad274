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
  ``CLUSTERDOWN``, auth failures, a server at ``maxclients`` refusing a new
  connection (``MAXCLIENTS``), any other error reply), except a
  configuration mistake (``DB index is out of range``), which is
  ``errors.InvalidConfig``. No redis-py exception leaves a public call.
- TLS (``rediss://``): :func:`connect` loads the URL's TLS files first
  (``InvalidConfig`` naming the option when one cannot be used); a failed
  handshake (certificate verification, a client certificate the server
  requires, a port that does not speak TLS) is ``BackendUnavailable`` whose
  message says what is wrong and which URL option to check (``docs/redis.md``).
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
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from foundation import telemetry
from foundation.errors import BackendUnavailable, FoundationError, InvalidConfig

if TYPE_CHECKING:
    from urllib.parse import SplitResult

__all__ = [
    "BOUND_QUERY",
    "FIXED_QUERY",
    "REDIS_ERROR_KINDS",
    "ROUND_TRIP_EVENT",
    "STORE_QUERY",
    "NoAnswerWindow",
    "check_url",
    "connect",
    "error_kind",
    "import_redis",
    "raised_inside_redis_py",
    "redact_url",
    "redis_errors",
    "redis_py_failure",
    "report_round_trip",
    "tls_failure",
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
_SECRET_QUERY: Final = ("password", "sentinel_password", "ssl_password")

REDIS_ERROR_KINDS: Final[Mapping[str, str]] = {
    # error-reply code (the first word of the reply; MAXCLIENTS: the text of the
    # reply to a connection the server refuses) -> what it means for us
    "READONLY": "the server is a read-only replica (a failover demoted it?)",
    "LOADING": "the server is loading its dataset into memory",
    "MASTERDOWN": "the replica lost its link to the master",
    "BUSY": "the server is busy running a script or function",
    "OOM": "the server is out of memory (maxmemory reached, with nothing it may evict)",
    "TRYAGAIN": "the cluster is resharding; try again",
    "CLUSTERDOWN": "the cluster is down",
    "NOAUTH": "the server requires a password",
    "WRONGPASS": "the server refused the credentials",
    "NOPERM": "the ACL user lacks a permission",
    "NOSCRIPT": "the server does not know the script (it restarted)",
    "EXECABORT": "a transaction was aborted",
    "UNBLOCKED": "a blocking read was cut off (the server changed role, master -> replica?)",
    "MAXCLIENTS": (
        "the server refuses new connections, it has maxclients clients already (the "
        "connections already open keep working; raise maxclients or close idle clients)"
    ),
}
"""Error-reply codes of an unhealthy (not misconfigured) server and what they mean.

Each is ``BackendUnavailable``; so is any other error reply (``"response"``)."""

_DB_RANGE = "DB index is out of range"
_MAXCLIENTS = "max number of clients reached"
"""A new connection's first reply when the server has ``maxclients`` clients
(redis-py raises it as a ``ConnectionError``: the server closes the socket)."""
_CLOSED_BY_SERVER = "Connection closed by server"
"""redis-py's text for a connection the server hung up (EOF while reading)."""
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
    one of the user part, and the ``password`` / ``sentinel_password`` /
    ``ssl_password`` (a TLS key's) query parameters.

    >>> redact_url("rediss://:pw@h:1/2")
    'rediss://:***@h:1/2'
    >>> redact_url("redis://h:1/0")
    'redis://h:1/0'
    >>> redact_url("redis+sentinel://app:pw@s1:26379,s2/cache/0?sentinel_password=x")
    'redis+sentinel://app:***@s1:26379,s2/cache/0?sentinel_password=***'
    >>> redact_url("rediss://h:1/0?ssl_keyfile=/k.pem&ssl_password=x")
    'rediss://h:1/0?ssl_keyfile=/k.pem&ssl_password=***'
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

FIXED_QUERY: Final = ("protocol", "legacy_responses", "max_connections")
"""Query parameters redis-py reads that :func:`check_url` accepts only at redis-py's
defaults: ``protocol=2`` and ``legacy_responses`` true (every reader of
Foundation reads RESP2 reply shapes: with ``protocol=3`` or
``legacy_responses=false`` ``XREAD`` answers a map, and the flag store's
listener failed on every reply, serving its node copy, stale, from a healthy
server), and no ``max_connections`` (a node holds several connections at once:
with ``max_connections=1`` every heartbeat and write of a ``RedisRegistry``
failed with "Too many connections" on a healthy server)."""

_FALSE: Final = ("0", "F", "FALSE", "N", "NO")
"""What redis-py's ``to_bool`` reads as false in a URL query."""


def _fixed_refused(key: str, value: str) -> str | None:
    """Why ``key=value`` (``key`` one of :data:`FIXED_QUERY`) is refused; None if it
    is redis-py's default."""
    if key == "max_connections":
        return (
            f"query parameter max_connections={value[:20]!r} is not accepted: a Redis "
            "node of Foundation holds several connections at once (its writes, its "
            "lease, its tail) and sizes them itself; a cap fails its calls with "
            "'Too many connections' on a healthy server; leave it out"
        )
    if key == "protocol" and value.strip() == "2":
        return None
    if key == "legacy_responses" and value.strip().upper() not in _FALSE:
        return None
    return (
        f"query parameter {key}={value[:20]!r} is not accepted: Foundation reads Redis "
        "replies in their RESP2 shapes (redis-py's defaults, protocol=2 and "
        "legacy_responses=true); leave it out"
    )


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
    ``op_timeout``), and those of :data:`FIXED_QUERY` other than at redis-py's
    defaults (``protocol`` other than 2, ``legacy_responses=false``, any
    ``max_connections``); with ``store=True`` (a flag store URL) also one
    non-empty ``namespace``. TLS options (``ssl_*``) only in a ``rediss://``
    URL; ``ssl_cert_reqs`` is ``none``, ``optional`` or ``required``. Whether
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
        _check_sentinel_url(url, store, bad)
        return
    parts, port = _split_url(url, bad)
    _check_query_keys(parts.query, store, bad)
    query = parse_qs(parts.query)
    _check_tls_query(parts.scheme, query, bad)
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
    for key, value in parse_qsl(query, keep_blank_values=True):
        refused = _query_key_refused(key, value, known, store)
        if refused is not None:
            raise bad(refused)
    if store:
        _check_store_namespace(query, bad)


def _check_sentinel_url(url: str, store: bool, bad: Callable[[str], InvalidConfig]) -> None:
    """``check_url`` for a ``redis+sentinel://`` URL."""
    from foundation._redis_sentinel import parse_sentinel_url

    spec = parse_sentinel_url(url, bad)
    # Refused here, as a plain URL's are (connect() refuses them too).
    unknown = [key for key in spec.unknown if not (store and key == STORE_QUERY)]
    if unknown:
        raise bad(_sentinel_unknown(unknown, store))
    if store:
        from urllib.parse import urlsplit

        _check_store_namespace(urlsplit(url).query, bad)


def _query_key_refused(key: str, value: str, known: Collection[str], store: bool) -> str | None:
    """Why the query parameter ``key=value`` is refused (None: accepted)."""
    if key in BOUND_QUERY:
        return _bound_refused(key)
    if key in FIXED_QUERY:
        return _fixed_refused(key, value)
    if key in known or (store and key == STORE_QUERY):
        return None
    if key == STORE_QUERY:
        return _NO_NAMESPACE
    also = "; a flag store URL also takes ?namespace=NS" if store else ""
    return (
        f"unknown query parameter {key[:60]!r} (the query holds redis-py's connection "
        f"options only, such as db, ssl_ca_certs or health_check_interval{also})"
    )


_CERT_REQS: Final = ("none", "optional", "required")
"""The values redis-py takes for ``ssl_cert_reqs``."""


def _check_tls_query(
    scheme: str, query: dict[str, list[str]], bad: Callable[[str], InvalidConfig]
) -> None:
    """``bad(why)`` for TLS options (``ssl_*``) outside a ``rediss://`` URL (redis-py
    would fail every connection with a ``TypeError``) or an unknown ``ssl_cert_reqs``."""
    tls = sorted(key for key in query if key.startswith("ssl_"))
    if tls and scheme != "rediss":
        raise bad(
            f"{tls[0]!r} is a TLS option: it needs a rediss:// URL (a {scheme}:// "
            "connection is plain text)"
        )
    for value in query.get("ssl_cert_reqs", []):
        if value not in _CERT_REQS:
            raise bad(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}, not {value[:40]!r}")


_NO_NAMESPACE: Final = (
    "unknown query parameter 'namespace': a Redis connection has no namespace; "
    "give it on its own: namespace=NS to RedisRegistry or RedisFlagStore, "
    "--namespace NS on the command line (only a store URL for open_store() or "
    "--store takes ?namespace=NS)"
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
    if isinstance(exc, ex.ResponseError) and _in_script_acl(text):
        return "NOPERM"  # a command inside a script refused by the ACL: "ERR ...", no code
    if isinstance(exc, ex.ResponseError):
        return _wrapped_reply_code(text)
    return None


_SCRIPT_ACL: Final = (
    "The user executing the script ",  # 7.0: "... can't run this command or subcommand"
    "ACL failure in script: ",  # >= 7.2: "... User u has no permissions to run the 'xadd' command"
)
"""How an ACL refusal inside a Lua script starts (an ``ERR`` reply: redis-py drops the
``ERR``; in a pipeline, after ``Command # 1 (EVALSHA ...) of pipeline caused error: ``),
ending ``script: <sha>, on @user_script:<line>.``"""
_SCRIPT_MODULES: Final = (
    "foundation.registry._redis._scripts",
    "foundation.registry._redis._chunked_reads",
    "foundation.flags._redis_store._scripts",
)
"""The modules whose ``str`` constants are the library's Lua scripts (see :func:`_acl_refused`)."""


def _in_script_acl(text: str) -> bool:
    return any(start in text for start in _SCRIPT_ACL)


def _acl_refused(detail: str) -> str:
    """What an ACL refusal ``detail`` (a ``NOPERM`` reply, or a script's) refused:
    ``" (the command XADD, inside a Lua script)"``, or ``""`` if it does not say.

    Redis 7.0 names no command for a refusal inside a script, only the script's
    SHA1 and line: the command is read from that line of the library's script.

    >>> _acl_refused("this user has no permissions to run the 'watch' command")
    ' (the command WATCH)'
    >>> _acl_refused("this user has no permissions to access one of the keys used as arguments")
    ' (a key outside its key patterns)'
    """
    import re

    in_script = _in_script_acl(detail)
    where = ", inside a Lua script" if in_script else ""
    if "access" in detail and ("key" in detail or "channel" in detail):
        what = "channel" if "channel" in detail else "key"
        return f" (a {what} outside its {what} patterns{where})"
    named = re.search(r"permissions to run the '([^']+)' command", detail)
    if named:
        return f" (the command {named[1].upper()}{where})"
    at = re.search(r"script: ([0-9a-f]{40}), on @user_script:(\d+)", detail)
    if not in_script or at is None:
        return ""
    return _script_line_refused(at[1], int(at[2]))


def _script_line_refused(sha: str, line: int) -> str:
    """What line ``line`` of the library's script ``sha`` calls, as
    :func:`_acl_refused` says it (Redis 7.0 names only the script and line)."""
    import re

    lines = _script_sources().get(sha, "").splitlines()
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    called = re.findall(r"redis\.p?call\(\s*'([A-Za-z]+)'", text)
    if not called:
        return f" (a command at line {line} of a Lua script)"
    names = " or ".join(dict.fromkeys(name.upper() for name in called))
    return f" (the command {names}, inside a Lua script)"


@functools.cache
def _script_sources() -> dict[str, str]:
    """The library's Lua scripts by SHA1 (each also in its ``no-writes`` form)."""
    import hashlib
    import importlib

    from foundation.registry._redis._readscript import NO_WRITES

    found: dict[str, str] = {}
    for name in _SCRIPT_MODULES:
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, str) and "redis.call(" in value:
                for text in (value, NO_WRITES + value, NO_WRITES + value.lstrip("\n")):
                    found[hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()] = text
    return found


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
    if isinstance(exc, ex.ConnectionError):
        return _connection_error_kind(text)
    if isinstance(exc, OSError):
        return "connection"
    return "other"


def _connection_error_kind(text: str) -> str:
    """The kind of a redis-py ``ConnectionError`` from its text."""
    if "protocol error" in text.lower():
        return "protocol"
    if _MAXCLIENTS in text:
        return "MAXCLIENTS"  # "-ERR max number of clients reached", then the server hangs up
    if _DEMOTED in text:
        return "READONLY"  # a Sentinel client's READONLY reply, turned into a reconnect
    return "connection"


def translate_error(exc: BaseException, *, url: str, doing: str) -> FoundationError:
    """The Foundation error for a redis-py failure ``exc`` met while ``doing``.

    ``url`` must already be redacted. ``InvalidConfig`` for a database index the
    server does not have; ``BackendUnavailable`` for everything else. A TLS
    failure's message says what failed and what to check (``TLS certificate
    verification failed (certificate has expired): ...``).

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
        refused = _acl_refused(detail) if kind == "NOPERM" else ""
        why = f"{kind}, {REDIS_ERROR_KINDS[kind]}{refused}: {detail}"
    elif kind == "auth" and type(exc).__name__ == "SentinelLoginRefused":
        why = (
            "the Sentinels refused the login (check the URL's sentinel_username and "
            f"sentinel_password): {detail}"
        )
    elif kind == "auth":
        why = _auth_why(url, detail)
    elif (tls := _tls_why(exc, url, doing)) is not None:
        why = f"{tls}: {detail}"
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
    elif kind == "connection" and doing == "connecting" and _plain_to_tls(url, detail):
        why = (
            "the server closed the connection at once (if that port speaks TLS only, "
            f"the URL needs rediss://): {detail}"
        )
    elif kind == "connection":
        why = _connection_why(detail)
    else:
        why = f"{type(exc).__name__}: {detail}"
    return BackendUnavailable(f"Redis at {url} failed while {doing}: {why}")


def _connection_why(detail: str) -> str:
    """What a connection failure ``detail`` means. A connection the server hung up
    says why it may have (the server may be up and have cut this client only)."""
    if _CLOSED_BY_SERVER in detail:
        return (
            "unreachable: the server closed the connection (it stopped or restarted, or it "
            "cut this client: CLIENT KILL, a reply past its client-output-buffer-limit, "
            f"maxmemory-clients): {detail}"
        )
    return f"unreachable: {detail}"


# ------------------------------------------------------------------ TLS

_VERIFY_EXPIRED: Final = frozenset({9, 10})  # X509_V_ERR_CERT_NOT_YET_VALID, _HAS_EXPIRED
_VERIFY_HOST: Final = frozenset({62, 64})  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH
_VERIFY_ISSUER: Final = frozenset({2, 18, 19, 20, 21})  # unknown issuer, self-signed
_CLIENT_CERT_REFUSED: Final = (
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
)
_NOT_TLS: Final = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG")


def _tls_why(exc: BaseException, url: str, doing: str) -> str | None:
    """What a TLS failure behind ``exc`` means for an operator, or None if it is not one.

    redis-py wraps the ``ssl`` error in its ``ConnectionError`` (the original is
    the ``__context__``); the message names the URL option to check. A
    ``rediss://`` connect that times out gets a hint: the handshake is part of it.
    """
    import sys

    ssl = sys.modules.get("ssl")  # no ssl module loaded: no TLS failure possible
    if ssl is not None:
        seen: BaseException | None = exc
        for _ in range(6):  # redis-py's wrapper, ours (redis_py_failure): a short chain
            if seen is None:
                break
            if isinstance(seen, ssl.SSLCertVerificationError):
                return _verify_failed(seen)
            if isinstance(seen, ssl.SSLEOFError):
                # Race: with TLS 1.3 the client ends its handshake first; a server
                # refusing its certificate (or the lack of one) sends an alert and
                # closes. Reading first gets the alert (below), writing first an EOF.
                return (
                    "TLS: the server closed the connection in or right after the handshake "
                    "(it stopped, or it requires a client certificate and none, or one it "
                    "does not trust, was given: check ssl_certfile and ssl_keyfile)"
                )
            if isinstance(seen, ssl.SSLError):
                return _handshake_failed(seen)
            if isinstance(seen, FileNotFoundError) and url.startswith("rediss://"):
                return (
                    "a TLS file of the URL is missing (check ssl_ca_certs, ssl_certfile, "
                    "ssl_keyfile)"
                )
            seen = seen.__cause__ or seen.__context__
    if url.startswith("rediss://") and doing == "connecting" and "Timeout connecting" in str(exc):
        return (
            "no answer in time to the TLS handshake (a frozen or overloaded server, or a "
            "port that does not speak TLS: use redis:// for a plain-text port)"
        )
    return None


def tls_failure(message: str) -> str | None:
    """The TLS part (``"TLS ..."`` to the end) of a message :func:`translate_error`
    wrote for a TLS failure, or None for any other message.

    Background loops log a failure that repeats during an outage at DEBUG; one
    that becomes a TLS failure (a server restarted with a certificate the
    clients do not trust) needs an operator, so they log it at WARNING once.

    >>> tls_failure("Redis at rediss://h:1/0 failed while connecting: TLS handshake failed (X): y")
    'TLS handshake failed (X): y'
    >>> tls_failure("Redis at redis://h:1/0 failed while connecting: unreachable: refused")
    """
    head, sep, rest = message.partition(" failed while ")
    at = rest.find(": TLS")
    if not sep or not head.startswith("Redis at ") or at < 0:
        return None
    return rest[at + 2 :]


def _verify_failed(exc: Any) -> str:
    """The text of an ``ssl.SSLCertVerificationError`` (the server's certificate)."""
    code = getattr(exc, "verify_code", None)
    message = getattr(exc, "verify_message", None) or exc.reason or "unknown reason"
    head = f"TLS certificate verification failed ({message})"
    if code in _VERIFY_EXPIRED:
        return f"{head}: the server's certificate is outside its validity dates; renew it"
    if code in _VERIFY_HOST:
        return (
            f"{head}: the server's certificate does not name the host of the URL; connect "
            "by a name it lists, or set ssl_check_hostname=false"
        )
    if code in _VERIFY_ISSUER:
        return (
            f"{head}: the server's certificate is not signed by a CA the client trusts; "
            "give the CA that signed it as ssl_ca_certs"
        )
    return head


def _handshake_failed(exc: Any) -> str:
    """The text of an ``ssl.SSLError`` other than a verification failure."""
    reason = str(exc.reason or exc)
    if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED" or "PEER_DID_NOT_RETURN" in reason:
        return (
            "TLS: the server requires a client certificate (it runs with "
            "tls-auth-clients): check ssl_certfile and ssl_keyfile"
        )
    if reason in _CLIENT_CERT_REFUSED:
        return (
            f"TLS: the server refused the client certificate ({reason}): it requires a "
            "client certificate signed by a CA it trusts; check ssl_certfile and ssl_keyfile"
        )
    if reason in _NOT_TLS:
        return (
            f"TLS handshake failed ({reason}): the port does not speak TLS "
            "(a plain-text port needs redis://)"
        )
    if exc.library in ("PEM", "X509") or "PEM lib" in str(exc):
        return (
            f"TLS files could not be loaded ({reason}): check ssl_ca_certs, ssl_certfile, "
            "ssl_keyfile and ssl_password"
        )
    return f"TLS handshake failed ({reason})"


def _auth_why(url: str, detail: str) -> str:
    """What a refused login means. ``url`` is redacted: a password shows as ``***``.

    A URL without a password on a server that now requires one (``requirepass``
    or an ACL set while the clients ran) said "refused the credentials (check
    the URL's user and password)", of credentials the URL never gave.

    >>> _auth_why("redis://h:1/0", "Authentication required.")
    ... # doctest: +ELLIPSIS
    'the server requires a password and the URL gives none (...): Authentication required.'
    """
    if any(mark in url for mark in (":***@", "?password=***", "&password=***")):
        return f"the server refused the credentials (check the URL's user and password): {detail}"
    return (
        "the server requires a password and the URL gives none (requirepass or an ACL "
        f"set on the server? give it as redis://[user]:password@host): {detail}"
    )


def _plain_to_tls(url: str, detail: str) -> bool:
    """A ``redis://`` connect the server cut at once: what a TLS-only port does."""
    return url.startswith("redis://") and (
        "Connection reset by peer" in detail or "Connection closed by server" in detail
    )


def _no_key_password() -> bytes:
    """``ssl_password`` when the URL gives none: an encrypted key then fails to load
    instead of OpenSSL prompting for its passphrase on the terminal (a hang)."""
    return b""


def _tls_files_check(url: str, shown: str) -> None:
    """``InvalidConfig`` unless the TLS files of a ``rediss://`` URL load (no I/O but files).

    The same steps as redis-py's ``SSLConnection`` (which repeats them for every
    new connection, so files rotated on disk are read again): the CA
    (``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_ca_data``), the client
    certificate and key (``ssl_certfile``, ``ssl_keyfile``, ``ssl_password``),
    ``ssl_ciphers``. Nothing the server does can fix these.
    """
    import ssl
    from urllib.parse import parse_qs, unquote, urlsplit

    # redis-py reads the first value of each parameter, unquoted once more.
    query = {k: unquote(v[0]) for k, v in parse_qs(urlsplit(url).query).items() if v}

    def bad(why: str) -> InvalidConfig:
        return InvalidConfig(f"Redis at {shown}: TLS configuration: {why}")

    files = [
        ("ssl_ca_certs", query.get("ssl_ca_certs")),
        ("ssl_certfile", query.get("ssl_certfile")),
    ]
    files.append(("ssl_keyfile", query.get("ssl_keyfile")))
    for name, path in files:
        if path is not None and not os.path.isfile(path):
            raise bad(f"{name} {path!r} does not exist or is not a file")
    ca_path = query.get("ssl_ca_path")
    if ca_path is not None and not os.path.isdir(ca_path):
        raise bad(f"ssl_ca_path {ca_path!r} is not a directory")
    cert, key = query.get("ssl_certfile"), query.get("ssl_keyfile")
    if key is not None and cert is None:
        raise bad("ssl_keyfile needs ssl_certfile (the client certificate)")
    context = ssl.create_default_context()
    if cert is not None:
        asked = []

        def no_password() -> bytes:
            asked.append(True)
            return b""

        given = query.get("ssl_password")
        try:
            context.load_cert_chain(cert, key, password=no_password if given is None else given)
        except (ssl.SSLError, OSError) as exc:
            if asked:
                raise bad(f"ssl_keyfile {key or cert!r} is encrypted: give ssl_password") from None
            raise bad(
                f"the client certificate or key cannot be used (ssl_certfile {cert!r}, "
                f"ssl_keyfile {key!r}): not PEM, a key that does not match the "
                f"certificate, or a wrong ssl_password ({getattr(exc, 'reason', None) or exc})"
            ) from None
    ca, ca_data = query.get("ssl_ca_certs"), query.get("ssl_ca_data")
    if ca is not None or ca_path is not None or ca_data is not None:
        try:
            context.load_verify_locations(cafile=ca, capath=ca_path, cadata=ca_data)
        except (ssl.SSLError, OSError, ValueError) as exc:
            where = f"ssl_ca_certs {ca!r}" if ca is not None else "ssl_ca_path / ssl_ca_data"
            raise bad(
                f"{where} holds no usable PEM certificate ({getattr(exc, 'reason', None) or exc})"
            ) from None
    ciphers = query.get("ssl_ciphers")
    if ciphers:
        try:
            context.set_ciphers(ciphers)
        except ssl.SSLError:
            raise bad(f"ssl_ciphers {ciphers[:80]!r} selects no cipher") from None


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


def _client_options(
    url: str,
    shown: str,
    *,
    op_timeout: float,
    connect_timeout: float | None,
    name: str | None,
    decode_responses: bool,
) -> dict[str, Any]:
    """``connect``'s redis-py options: the bounds, no retries, the name, TLS."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options: dict[str, Any] = {
        "socket_timeout": op_timeout,
        "socket_connect_timeout": op_timeout if connect_timeout is None else connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "client_name": None if name is None else client_name(name),
        "decode_responses": decode_responses,
        **_no_maintenance_notifications(),
    }
    if url.startswith("rediss://"):
        _tls_files_check(url, shown)
        # An encrypted key without ssl_password must fail, not prompt on the
        # terminal (OpenSSL's default): a URL's own ssl_password wins (from_url).
        options["ssl_password"] = _no_key_password
    return options


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
        InvalidConfig: a malformed URL, a database index the server does not have, or
            a ``rediss://`` URL's TLS file that cannot be loaded (missing, not PEM, a key
            not matching its certificate, an encrypted key without ``ssl_password``).
        BackendUnavailable: any other failure (unreachable, not Redis, refused login,
            an unhealthy server's error reply, a TLS handshake that fails on what the
            server presents or requires).
    """
    check_url(url)
    if not op_timeout > 0:
        raise InvalidConfig("op_timeout must be a positive number of seconds")
    redis = import_redis()
    shown = redact_url(url)
    options = _client_options(
        url,
        shown,
        op_timeout=op_timeout,
        connect_timeout=connect_timeout,
        name=name,
        decode_responses=decode_responses,
    )
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


class NoAnswerWindow:
    """When a write should fail at once: Redis let a call time out moments ago.

    The one rule behind the fast failures of ``RedisRegistry`` and
    ``RedisFlagStore``. Writes are serialised, so on a frozen Redis (it accepts
    connections and answers nothing) each queued writer would wait a timeout of
    its own, the k-th of k writers k timeouts. Instead, a write that asks less
    than ``window`` seconds after a call timed out (``timed_out``), with no
    answer from Redis since (``answered``), fails at once (``is_open``). Recovery
    needs nothing from the caller: any answer, or ``window`` seconds without a
    new timeout, lets writes try Redis again. ``first_report`` is True once per
    outage (an outage ends when Redis answers), for the operator's log line.

    Race: the times are plain float stores from any thread, no lock. An answer
    noted just after a look costs one write a fast failure (the outage it asked
    during); a timeout noted just after it lets one more write wait its timeout.

    >>> w = NoAnswerWindow()
    >>> w.is_open(1.0)
    False
    >>> w.timed_out("Timeout reading from socket")
    >>> w.is_open(60.0), w.first_report(), w.first_report()
    (True, True, False)
    >>> w.answered(); w.is_open(60.0)
    False
    """

    __slots__ = ("_lock", "_reported", "error", "last_ok", "last_timeout")

    def __init__(self) -> None:
        self.last_ok = 0.0  # monotonic: the last call Redis answered
        self.last_timeout = 0.0  # monotonic: the last call it did not answer in time
        self.error = ""  # that timeout's error, for the fast failures' messages
        self._reported = False  # this outage's fast failures were reported
        self._lock = threading.Lock()

    def answered(self) -> None:
        """Redis answered a call: the outage, if any, is over."""
        self.last_ok = time.monotonic()
        self._reported = False

    def timed_out(self, error: str, at: float | None = None) -> None:
        """A call got no answer in time (``at``: when, if taken before other steps)."""
        self.error = error
        self.last_timeout = time.monotonic() if at is None else at

    def is_open(self, window: float) -> bool:
        """Whether a write should fail at once (a timeout less than ``window`` s ago,
        no answer since). Two attribute loads and a compare while Redis answers."""
        failed = self.last_timeout
        return failed > self.last_ok and time.monotonic() - failed < window

    def first_report(self) -> bool:
        """True for the first caller of this outage (two failing at once: one)."""
        with self._lock:
            first, self._reported = not self._reported, True
        return first
