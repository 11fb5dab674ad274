"""Flag stores by URL, for tools (the ``foundation`` command, the admin server).

``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (the SQLAlchemy
convention: the path is what follows ``sqlite:///``) or a bare file path
    a ``SQLiteFlagStore``. A file that does not exist is ``InvalidConfig``
    unless ``create=True``: a typo must not create an empty store. Without
    ``create``, an existing file that is not a flag store (another
    application's database, an empty file) or a corrupt one is ``FlagError``,
    found by reading it only: nothing is written to it.
``redis://host:port/db?namespace=NS`` (also ``rediss://``, ``unix://``, ``redis+sentinel://``)
    a ``RedisFlagStore`` of namespace ``NS`` (default ``foundation``). It uses
    this machine's default node copy of that deployment when one exists (a
    service ran here with the same URL and namespace), else none: while Redis
    is unreachable the store then starts from the copy (``stale``) and reads
    answer from it. A kill switch during an outage waits in that copy, as on
    any node, to be committed by this store when Redis returns, unless
    ``hold_kill_switches=False`` refuses it (what a short-lived command such as
    ``foundation flags disable`` does). A namespace holding no
    flag data is ``InvalidConfig`` unless ``create=True``.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn

from foundation._redis_conn import check_url, redact_url
from foundation.errors import BackendUnavailable, InvalidConfig
from foundation.flags._store import FlagStore

__all__ = ["open_store"]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")


def open_store(
    url: str, *, create: bool = False, timeout: float = 2.0, hold_kill_switches: bool = True
) -> FlagStore:
    """The flag store at ``url`` (see the module docs); the caller closes it.

    ``hold_kill_switches`` goes to a ``RedisFlagStore`` (the other stores
    commit every write at once).

    Raises:
        InvalidConfig: a malformed URL, an unknown scheme, or a store that does
            not exist (and ``create`` is False).
        FlagError: the file is not a flag store (corrupt, not SQLite, a TOML file...).
        BackendUnavailable: Redis cannot be reached.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "flags.db")
        >>> open_store(f"sqlite:///{path}")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        foundation.errors.InvalidConfig: no flag store at '...flags.db' (the file does not exist...)
        >>> store = open_store(f"sqlite:///{path}", create=True)
        >>> store
        SQLiteFlagStore('...flags.db')
        >>> store.close()
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidConfig(f"a flag store URL must be a non-empty string, not {url!r}")
    if url.startswith(_REDIS_SCHEMES):
        return _open_redis(
            url, create=create, timeout=timeout, hold_kill_switches=hold_kill_switches
        )
    if url.startswith("sqlite://"):
        if not url.startswith("sqlite:///"):
            raise InvalidConfig(f"a SQLite store URL is sqlite:///path, not {url!r}")
        path = url[len("sqlite:///") :]
    elif "://" in url:
        from foundation._redis_conn import redact_url

        scheme = url.split("://", 1)[0]
        # Redacted: a Redis URL with a misspelt scheme (REDIS://:pw@...) holds a password.
        raise InvalidConfig(
            f"unknown flag store scheme {scheme + '://'!r} in "
            f"{redact_url(url)!r}: use sqlite:///path or redis://host:port/db"
        )
    else:
        path = url
    if not path:
        raise InvalidConfig(f"no file path in flag store URL {url!r}")
    return _open_sqlite(path, create=create)


def _open_sqlite(path: str, *, create: bool) -> FlagStore:
    from foundation.flags._sqlite_store import SQLiteFlagStore

    if os.path.isdir(path):
        raise InvalidConfig(f"{path!r} is a directory, not a flag store file")
    # Race: the file may appear or vanish between this check and the open; the
    # check is only to keep a typo from creating an empty store.
    if not create and not os.path.exists(path):
        raise InvalidConfig(
            f"no flag store at {path!r} (the file does not exist; "
            "an application creates it by constructing FeatureFlags on it)"
        )
    if not create:
        _check_is_flag_store(path)
    return SQLiteFlagStore(path)


_SQLITE_HEADER = b"SQLite format 3\0"


def _check_is_flag_store(path: str) -> None:
    """FlagError unless the file at ``path`` is a Foundation flag store, found by
    reading it only: ``SQLiteFlagStore`` creates its tables in any SQLite file
    (IF NOT EXISTS), so another application's database, or an empty file, would
    otherwise get Foundation's schema written into it.

    Race: the file may be replaced between this check and the store's open; the
    check only keeps a wrong path from being written to, as the existence check
    above keeps a typo from creating a store.
    """
    import sqlite3

    from foundation.errors import FlagError, bounded_repr
    from foundation.flags._sqlite_store import SCHEMA_VERSION

    shown = bounded_repr(path)  # messages stay short, whatever the path

    def not_a_store(why: object) -> FlagError:
        return FlagError(
            f"{shown} is not a usable flag store: not a Foundation flag store ({why}); "
            "no command creates or converts one: an application creates it by "
            "constructing FeatureFlags on it"
        )

    try:
        with open(path, "rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise FlagError(f"cannot open flag store {shown}: {exc}") from exc
    if header != _SQLITE_HEADER:
        raise not_a_store("an empty file" if not header else "not a SQLite file")
    try:
        row = _read_schema(path)
    except sqlite3.OperationalError as exc:  # locked, busy, unreadable: not a verdict
        raise FlagError(f"cannot read flag store {shown}: {exc}") from exc
    except sqlite3.Error as exc:
        # SQLite's header, then pages SQLite cannot read ("database disk image is
        # malformed", "file is not a database"): a damaged file, maybe a flag store
        # with its flags and history. Never suggest an application create one there.
        raise FlagError(
            f"{shown} is not a usable flag store: a SQLite file that is corrupt or not "
            f"readable as SQLite ({exc}); it was left as it is: restore it from a backup, "
            "or salvage its rows with the sqlite3 shell's .recover"
        ) from exc
    if row is None:
        raise not_a_store("a SQLite database without Foundation's tables")
    if row[0] != SCHEMA_VERSION:
        raise FlagError(
            f"{shown} uses flag store schema {row[0]!r}; "
            f"this version of Foundation reads schema {SCHEMA_VERSION!r}"
        )


def _read_schema(path: str) -> tuple[object, ...] | None:
    """The flag store schema row of the SQLite file at ``path`` (None: no
    Foundation tables), read only: nothing is written to the file, whatever it
    holds (a database in WAL mode gets its -wal and -shm files, as from any
    reader). Raises ``sqlite3.Error``."""
    import sqlite3
    from pathlib import Path

    uri = Path(path).absolute().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    try:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'foundation_meta'"
        ).fetchone()
        if not has_meta:
            return None
        row: tuple[object, ...] | None = conn.execute(
            "SELECT value FROM foundation_meta WHERE key = 'schema'"
        ).fetchone()
        return row
    finally:
        conn.close()


def _split_namespace(url: str) -> tuple[str, str]:
    """(the URL without its ``namespace`` parameter, that namespace or "foundation")."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    namespaces = [v for k, v in query if k == "namespace"]
    if len(namespaces) > 1:
        raise InvalidConfig(f"one namespace per flag store URL, not {namespaces!r}")
    namespace = namespaces[0] if namespaces else "foundation"
    rest = urlencode([(k, v) for k, v in query if k != "namespace"])
    return urlunsplit(parts._replace(query=rest)), namespace


def _no_flag_store(store: Any, namespace: str, shown: str) -> NoReturn:
    """The error of a namespace with no flag data: a typo (``InvalidConfig``), or
    ``BackendUnavailable`` on a read-only replica, which holds only its master's
    keys (a demoted master: the nodes cannot write their flags there again)."""
    if store.status().read_only:
        raise BackendUnavailable(
            f"no flag store in namespace {namespace!r} at {shown}, a read-only replica: "
            "it holds only what its master holds (point the URL at the master)"
        )
    raise InvalidConfig(
        f"no flag store in namespace {namespace!r} at {shown} "
        "(no flag data; add ?namespace=NS to the URL to name another)"
    )


def _open_redis(url: str, *, create: bool, timeout: float, hold_kill_switches: bool) -> FlagStore:
    from foundation.flags._node_cache import default_cache_path
    from foundation.flags._redis_store import RedisFlagStore

    check_url(url, store=True)  # InvalidConfig for a malformed URL, before it is taken apart
    plain, namespace = _split_namespace(url)
    copy = default_cache_path(namespace, plain)
    # Only an existing copy: a tool run on a machine without a service leaves no file.
    # Race: the copy may vanish meanwhile; the store then creates an empty one,
    # which it removes again if Redis is unreachable (nothing to serve).
    store = RedisFlagStore(
        plain,
        namespace=namespace,
        timeout=timeout,
        cache_path=copy if copy.exists() else None,
        hold_kill_switches=hold_kill_switches,
    )
    try:
        # Started from the copy (Redis unreachable): the copy proves the store exists.
        if not create and not store.stale and not store._has_data():
            _no_flag_store(store, namespace, redact_url(plain))
    except BaseException:
        store.close()
        raise
    return store
