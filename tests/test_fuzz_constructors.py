"""Fuzzing the constructors: bad options are refused at the call, and leave nothing running.

Hypothesis calls the constructor of every registry backend (``MemoryRegistry``,
``ThreadLocalRegistry``, ``MigratingRegistry``, ``RedisRegistry`` on a real
redis-server), of ``FeatureFlags`` and ``Flag``, and of every flag store
(memory, SQLite, Redis) with options of the wrong type and out of range mixed
with good ones. The contract (docs/contract.md, "Failure behaviour" and
"Errors"): the call succeeds, or raises ``TypeError``, ``ValueError`` or a
``foundation.errors`` type with a bounded message; and a refused constructor
leaves no thread running and no Redis connection open (a constructor that
succeeded is closed, and then leaves nothing either).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundation import (
    FeatureFlags,
    Flag,
    MemoryRegistry,
    MigratingRegistry,
    SQLiteFlagStore,
    ThreadLocalRegistry,
)
from foundation.errors import FoundationError, InvalidConfig
from foundation.flags import MemoryFlagStore
from foundation.liveness import MonitorManager
from tests.redis_support import RedisServer

MESSAGE_LIMIT = 1000
SETTLE_S = 10.0  # how long a closed object's threads may take to end (they are joined)

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# Wrong types and out-of-range values for any option, each a value a user could pass.
HOSTILE: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63,
    10**400,
    0.0,
    -0.5,
    math.nan,
    math.inf,
    1e308,
    "",
    "x",
    "\ud800",
    "\0",
    b"bytes",
    [],
    ["role", 1],
    {"a": 1},
    object(),
    threading.TIMEOUT_MAX * 10,
]


def _hostile(index: int) -> Any:
    return HOSTILE[index]


hostile = st.integers(0, len(HOSTILE) - 1).map(_hostile)


def option(*good: Any) -> st.SearchStrategy[Any]:
    """A good value half of the time, a hostile one otherwise."""
    return st.one_of(st.sampled_from(good), hostile)


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def _no_thread_left(before: set[threading.Thread], what: str) -> None:
    deadline = time.monotonic() + SETTLE_S
    while True:
        extra = [t for t in _threads() - before if t.is_alive()]
        if not extra:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: threads left running: {[t.name for t in extra]}")
        time.sleep(0.01)  # sleep-ok: polling with a deadline for joined threads to be gone


def _construct(make: Callable[[], Any], close: Callable[[Any], None] | None = None) -> None:
    """Call ``make()``: an object (closed here) or one of the allowed errors, and no
    thread left behind either way."""
    before = _threads()
    message = ""
    try:
        made = make()
    except (TypeError, ValueError, FoundationError) as exc:  # anything else fails the test
        message = str(exc)
    else:
        (close or (lambda obj: obj.close()))(made)
    assert len(message) < MESSAGE_LIMIT, f"{len(message)} chars: {message[:200]}"
    _no_thread_left(before, "constructor")


@pytest.fixture(autouse=True)
def _warm() -> None:
    # Threads started once per process on first use (none expected; a baseline anyway).
    MemoryRegistry().close()


# ------------------------------------------------------------------ registries


@FUZZ
@given(
    indexed=option((), ("role",), ["a", "b"]),
    node=option("local", "n1"),
    manager=st.booleans(),
)
def test_memory_registry_options(indexed: Any, node: Any, manager: bool) -> None:
    own = MonitorManager(name="fuzz") if manager else None
    try:
        _construct(lambda: MemoryRegistry(indexed=indexed, node=node, manager=own))
        _construct(lambda: MemoryRegistry(indexed, manager=indexed))  # wrong kind of manager
    finally:
        if own is not None:
            own.close()


@FUZZ
@given(indexed=option((), ("role",)))
def test_thread_local_registry_options(indexed: Any) -> None:
    _construct(lambda: ThreadLocalRegistry(indexed=indexed))


@FUZZ
@given(
    legacy=st.sampled_from(["thread_local", "memory", "same", "hostile"]),
    target=st.sampled_from(["memory", "thread_local", "hostile"]),
    flags_kind=st.sampled_from(["flags", "closed", "hostile"]),
    flag=option("use_ets_agent_registry", "beta", "nope"),
    bad=hostile,
)
def test_migrating_registry_options(
    legacy: str, target: str, flags_kind: str, flag: Any, bad: Any
) -> None:
    flags = FeatureFlags([Flag("use_ets_agent_registry"), Flag("beta")])
    made: list[Any] = []

    def side(kind: str) -> Any:
        if kind == "hostile":
            return bad
        if kind == "same":
            return made[-1] if made else bad
        backend = MemoryRegistry() if kind == "memory" else ThreadLocalRegistry()
        made.append(backend)
        return backend

    try:
        t = side(target)
        lg = side(legacy)
        if flags_kind == "closed":
            flags.close()
        f = bad if flags_kind == "hostile" else flags
        _construct(lambda: MigratingRegistry(lg, t, f, flag=flag))
    finally:
        for backend in made:
            backend.close()
        flags.close()


# ------------------------------------------------------------------ flags and stores


@FUZZ
@given(
    name=option("beta", "color"),
    default=option(False, True, "red"),
    description=option("", "about"),
    variants=option(None, {"red": "#f00", "blue": "#00f"}, {"n": 1}),
    store=st.sampled_from(["none", "memory", "closed", "hostile"]),
    declared_shape=st.sampled_from(["list", "one", "hostile", "duplicate"]),
)
def test_flag_and_feature_flags_options(
    name: Any, default: Any, description: Any, variants: Any, store: str, declared_shape: str
) -> None:
    def make() -> FeatureFlags:
        flag = Flag(name, default=default, description=description, variants=variants)
        declared: Any = {
            "list": [flag],
            "one": flag,
            "hostile": [flag, name],
            "duplicate": [flag, flag],
        }[declared_shape]
        given_store: Any = None
        if store in ("memory", "closed"):
            given_store = MemoryFlagStore()
            if store == "closed":
                given_store.close()
        elif store == "hostile":
            given_store = name
        return FeatureFlags(declared, store=given_store)

    _construct(make)


@FUZZ
@given(history_limit=option(None, 1, 500))
def test_memory_flag_store_options(history_limit: Any) -> None:
    _construct(lambda: MemoryFlagStore(history_limit=history_limit))


@pytest.fixture
def sqlite_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "a-dir").mkdir()
    # A hostile path such as "x" is a relative file name: made here, not in
    # the directory the tests were started from.
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_sqlite_flag_store_options(sqlite_dir: Path) -> None:
    paths = [
        sqlite_dir / "flags.sqlite3",
        str(sqlite_dir / "flags.sqlite3"),
        sqlite_dir / "a-dir",  # a directory
        sqlite_dir / "missing" / "flags.sqlite3",
    ]

    @FUZZ
    @given(
        path=st.one_of(st.sampled_from(paths), hostile),
        busy_timeout=option(5.0, 1),
        poll_interval=option(0.02, 1),
        history_limit=option(None, 10),
    )
    def run(path: Any, busy_timeout: Any, poll_interval: Any, history_limit: Any) -> None:
        _construct(
            lambda: SQLiteFlagStore(
                path,
                busy_timeout=busy_timeout,
                poll_interval=poll_interval,
                history_limit=history_limit,
            )
        )

    run()


# ------------------------------------------------------------------ Redis


def _clients(server: RedisServer) -> int:
    """Connected clients of ``server``, this probe's own connection left out."""
    import redis

    probe = redis.Redis.from_url(server.url)
    try:
        return int(probe.info("clients")["connected_clients"]) - 1
    finally:
        probe.close()


def _no_connection_left(server: RedisServer, before: int) -> None:
    deadline = time.monotonic() + SETTLE_S
    while _clients(server) > before:
        if time.monotonic() > deadline:
            pytest.fail(f"Redis connections left open: {_clients(server)} > {before}")
        time.sleep(0.01)  # sleep-ok: polling with a deadline for the server to see the close


def _redis_urls(server: RedisServer) -> list[str]:
    return [
        server.url,
        server.url,
        "redis://127.0.0.1:1/0",  # nothing listens: refused at once
        "http://127.0.0.1:1/",
        "redis://127.0.0.1:99999/0",
        "redis://127.0.0.1:6379/x",
        "redis://[::1",
    ]


def test_redis_registry_options(redis_server: RedisServer, tmp_path: Path) -> None:
    from foundation import RedisRegistry

    urls = _redis_urls(redis_server)
    clients = _clients(redis_server)

    @FUZZ
    @given(
        url=st.one_of(st.sampled_from(urls), hostile),
        namespace=option(f"fuzz-{os.getpid()}", "n:1"),
        indexed=option((), ("role",)),
        lease_ttl=option(5.0, 1),
        heartbeat=option(None, 0.5),
        node=option(None, "node-a"),
        op_timeout=option(2.0, 0.5),
        stream_maxlen=option(10_000, 100),
    )
    def run(**options: Any) -> None:
        url = options.pop("url")
        _construct(lambda: RedisRegistry(url, **options))
        _no_connection_left(redis_server, clients)

    run()


def test_redis_flag_store_options(redis_server: RedisServer, tmp_path: Path) -> None:
    from foundation import RedisFlagStore

    urls = _redis_urls(redis_server)
    clients = _clients(redis_server)

    @FUZZ
    @given(
        url=st.one_of(st.sampled_from(urls), hostile),
        namespace=option(f"fuzz-{os.getpid()}", "n:1"),
        timeout=option(2.0, 0.5),
        resync_interval=option(5.0, 1),
        cache_path=option(None, False, tmp_path / "copy"),
        hold_kill_switches=option(True, False),
        history_limit=option(None, 100),
    )
    def run(**options: Any) -> None:
        url = options.pop("url")
        _construct(lambda: RedisFlagStore(url, **options))
        _no_connection_left(redis_server, clients)

    run()


# ------------------------------------------------------------------ what the fuzzing found


@pytest.mark.parametrize(
    "make",
    [
        lambda: MemoryRegistry(node="\ud800"),
        lambda: MemoryRegistry(indexed=["role", "\udcff"]),
        lambda: ThreadLocalRegistry(indexed=["\ud800"]),
    ],
    ids=["memory node", "memory indexed", "thread_local indexed"],
)
def test_a_lone_surrogate_in_a_backend_name_is_invalid_config_on_every_backend(
    make: Callable[[], Any],
) -> None:
    # Accepted before by the in-memory backends (RedisRegistry refused both):
    # a registry that could never move to Redis, with an index no key can match.
    before = _threads()
    with pytest.raises(InvalidConfig, match="valid Unicode"):
        make()
    _no_thread_left(before, "refused constructor")
