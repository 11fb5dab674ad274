"""``CLIENT PAUSE <ms> WRITE`` (what Redis does during ``FAILOVER``): reads answer.

Redis pauses every Lua script not declared ``#!lua flags=no-writes`` (Redis >=
7). The registry's one read script, ``SNAPSHOT``, is run in that form on Redis
7 (``_readscript``), so an observer's first snapshot and a node's resync answer
during the pause; writes still wait, and fail typed after ``op_timeout``. The
plain form (what Redis 6.2 runs: it knows no such line) is what a server that
does not tell its version gets, and the pause holds it back as before.

Each scenario runs in a plain interpreter (``run_scenario``) against a
redis-server of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foundation.registry._redis._observer import RedisObserver
from tests.faults._subprocess import run_scenario
from tests.redis.conftest import MakeRegistry
from tests.redis_support import RedisServer

_PAUSED = """
from foundation import errors, spawn_thread
from foundation.registry._redis import RedisRegistry
from foundation.registry._redis._observer import RedisObserver
from foundation._demo._redis_server import RedisServerProcess

server = RedisServerProcess()
server.start()
stop = threading.Event()
try:
    reg = RedisRegistry(server.url, namespace="p", lease_ttl=60.0, op_timeout=0.5)
    reg.register("a", spawn_thread(stop.wait), {"n": 1})
    reg.register("b", spawn_thread(stop.wait), {"n": 2})
    # The scripts must be loaded during the pause too (as after a failover).
    server.command("SCRIPT", "FLUSH")
    # An hour (UNPAUSE ends it): the writes below must meet the pause however
    # slow the machine (30 s once, a bound a loaded machine could pass).
    server.command("CLIENT", "PAUSE", "3600000", "WRITE")

    # A new observer's first snapshot answers (the CLI's `agents` commands).
    obs = RedisObserver(server.url, namespace="p", timeout=0.5)
    threads = library_threads()
    assert keys(obs) == ["a", "b"], keys(obs)
    assert obs.lookup("a").metadata == {"n": 1}, obs.lookup("a")

    # The node's resync (its snapshot) answers; its reads answer from the mirror.
    with reg._sh.wlock:
        reg._tail.resync()
    assert reg._sh.scripts["snapshot"].flagged is True
    assert keys(reg) == ["a", "b"], keys(reg)
    assert reg.lookup("b").metadata == {"n": 2}, reg.lookup("b")

    # Writes wait for the pause: typed, after about op_timeout.
    got = typed(lambda: reg.register("d", spawn_thread(stop.wait), {}))
    assert got.startswith("BackendUnavailable"), got
    got = typed(lambda: reg.update_metadata("a", {"n": 9}))
    assert got.startswith("BackendUnavailable"), got
    # A new node must write its lease first: it cannot start.
    got = typed(lambda: RedisRegistry(server.url, namespace="p", op_timeout=0.5).close())
    assert got.startswith("BackendUnavailable"), got
    print("PAUSED-OK")

    server.command("CLIENT", "UNPAUSE")
    wait_for(lambda: reg.status().state == "connected", "the node to recover")
    reg.register("c", spawn_thread(stop.wait), {"n": 3})
    reg.update_metadata("a", {"n": 4})
    wait_for(
        lambda: "c" in keys(obs) and obs.lookup("a").metadata == {"n": 4},
        "the observer to follow the writes",
    )
    assert library_threads() == threads, (library_threads(), threads)
    obs.close()
    reg.close()
    print("OK")
finally:
    stop.set()
    server.stop()
"""


def test_reads_and_snapshots_answer_while_writes_are_paused_and_writes_fail() -> None:
    result = run_scenario(_PAUSED, timeout=90)
    assert result.lines("PAUSED-OK"), result.stdout
    assert "unexpected error" not in result.stderr, result.stderr


_PLAIN = """
import redis
from foundation import errors
from foundation.registry._redis import RedisRegistry
from foundation.registry._redis._observer import RedisObserver
from tests.redis_support import VersionlessRedisServer

server = VersionlessRedisServer()  # the plain script is run, what Redis 6.2 gets
server.start()
url = server.url
admin = redis.Redis.from_url(url)

try:
    RedisRegistry(url, namespace="q").close()
    obs = RedisObserver(url, namespace="q", timeout=0.5)
    assert obs._snapshot_script.flagged is False
    assert obs.count() == 0
    obs.close()

    admin.execute_command("CLIENT", "PAUSE", "3600000", "WRITE")  # an hour: UNPAUSE ends it
    try:
        RedisObserver(url, namespace="q", timeout=0.5).close()
        raise AssertionError("the plain script answered during a write pause")
    except errors.BackendUnavailable as exc:
        assert "no answer in time" in str(exc), exc
    admin.execute_command("CLIENT", "UNPAUSE")
    print("OK")
finally:
    server.stop()
"""


def test_a_server_that_does_not_tell_its_version_gets_the_plain_script() -> None:
    run_scenario(_PLAIN, timeout=60)


def test_an_acl_user_allowed_evalsha_but_not_eval_gets_the_plain_script(
    fresh_redis: RedisServer, make_registry: MakeRegistry, agents: Callable[[], Any], ns: str
) -> None:
    """An account for loaded scripts only (``+evalsha``, no ``+eval``) reads as
    it did before the ``no-writes`` form: its snapshots run the plain script,
    loaded on ``NOSCRIPT`` (``HELLO`` says 7, but ``EVAL`` is refused)."""
    make_registry(fresh_redis.url).register("a", agents(), {"n": 1})
    fresh_redis.command(
        "ACL", "SETUSER", "loaded", "on", ">pw", "~*", "&*",
        "+@read", "+@connection", "+evalsha", "+script",
    )  # fmt: skip
    url = fresh_redis.url.replace("redis://", "redis://loaded:pw@")
    fresh_redis.command("SCRIPT", "FLUSH")  # a first run that must load it
    obs = RedisObserver(url, namespace=ns, timeout=2.0)
    try:
        assert sorted(e.key for e in obs.list_all()) == ["a"]
        assert obs._snapshot_script.flagged is False
        fresh_redis.command("SCRIPT", "FLUSH")  # a restart: NOSCRIPT asks the version again
        obs._resync(emit=False)
        assert obs._snapshot_script.flagged is False
        assert obs.lookup("a").metadata == {"n": 1}
    finally:
        obs.close()
