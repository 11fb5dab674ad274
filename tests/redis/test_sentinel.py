"""Redis Sentinel: ``redis+sentinel://`` URLs, and every Redis class through a failover.

The URL tests need no server. The others run a real master, replica and
Sentinel (``tests.redis_support.SentinelSet``); the failover scenarios run in
a subprocess with the interpreter's default hooks (``tests.faults._subprocess``)
and assert what a user would see: only ``foundation.errors`` exceptions during
the switch, writes accepted by the new master, live registrations and flag
values kept (also when the new master missed writes: asynchronous replication),
no library thread dead. The time from the switch to the first accepted write
is printed (``MEASURE``), never asserted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from foundation import _redis_conn as rc
from foundation import _redis_sentinel as rs
from foundation.errors import BackendUnavailable, InvalidConfig
from foundation.registry._redis import RedisRegistry
from tests.faults._subprocess import run_scenario
from tests.redis.support import unique_namespace, wait_until
from tests.redis_support import SentinelSet, free_port

# ------------------------------------------------------------------ URLs (no server)


@pytest.mark.parametrize(
    ("url", "sentinels", "service", "db"),
    [
        ("redis+sentinel://s1:26379/cache", (("s1", 26379),), "cache", 0),
        ("redis+sentinel://s1/cache/", (("s1", 26379),), "cache", 0),
        (
            "redis+sentinel://s1:5000,s2,10.0.0.3:5001/cache/3",
            (("s1", 5000), ("s2", 26379), ("10.0.0.3", 5001)),
            "cache",
            3,
        ),
        ("redis+sentinel://[::1]:5000,s2/cache/1", (("::1", 5000), ("s2", 26379)), "cache", 1),
        ("redis+sentinel://app:pw@s1/cache/0?sentinel_password=x", (("s1", 26379),), "cache", 0),
        (
            "redis+sentinel://:p%40w@s1/cache?sentinel_username=u&sentinel_password=x",
            (("s1", 26379),),
            "cache",
            0,
        ),
    ],
)
def test_sentinel_urls_are_accepted_and_taken_apart(
    url: str, sentinels: tuple[tuple[str, int], ...], service: str, db: int
) -> None:
    rc.check_url(url)
    spec = rs.sentinel_spec(url)
    assert (spec.sentinels, spec.service, spec.db) == (sentinels, service, db)


def test_sentinel_url_credentials_are_percent_decoded() -> None:
    spec = rs.sentinel_spec(
        "redis+sentinel://app:p%40ss@s1/cache?sentinel_username=sen&sentinel_password=x%26y"
    )
    assert (spec.username, spec.password) == ("app", "p@ss")
    assert (spec.sentinel_username, spec.sentinel_password) == ("sen", "x&y")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://", "no Sentinel address"),
        ("redis+sentinel:///cache", "no Sentinel address"),
        ("redis+sentinel://s1:26379", "service name is missing"),
        ("redis+sentinel://s1:26379/", "service name is missing"),
        ("redis+sentinel://s1:26379/cache/x", "database must be a number"),
        ("redis+sentinel://s1:26379/cache/-1", "database must be a number"),
        ("redis+sentinel://s1:26379/cache/0/more", "too many path segments"),
        ("redis+sentinel://s1:26379,,s2/cache", "empty Sentinel address"),
        ("redis+sentinel://s1:port/cache", "Sentinel address 's1:port'"),
        ("redis+sentinel://s1:99999/cache", "Sentinel address 's1:99999'"),
        ("redis+sentinel://s1:0/cache", "port 0"),
        ("redis+sentinel://:5000/cache", "has no host"),
        ("redis+sentinel://s1/cache ", "whitespace"),
        ("redis+sentinel://s1/cache#x", "fragment"),
        ("redis+sentinel://s1/cache?sentinel_password=a&sentinel_password=b", "given twice"),
        ("REDIS+SENTINEL://s1/cache", "scheme"),
        ("sentinel://s1/cache", "scheme"),
    ],
)
def test_malformed_sentinel_urls_are_invalid_config(url: str, why: str) -> None:
    with pytest.raises(InvalidConfig, match=why):
        rc.check_url(url)


def test_redaction_hides_the_master_and_sentinel_passwords() -> None:
    url = "redis+sentinel://app:s3cret@s1:26379,s2/cache/0?sentinel_password=t0p&x=1"
    shown = rc.redact_url(url)
    assert shown == "redis+sentinel://app:***@s1:26379,s2/cache/0?sentinel_password=***&x=1"
    with pytest.raises(InvalidConfig) as info:
        rc.check_url("redis+sentinel://app:s3cret@s1/cache/x?sentinel_password=t0p")
    assert "s3cret" not in str(info.value)
    assert "t0p" not in str(info.value)


def test_an_unknown_parameter_is_invalid_config_before_any_io() -> None:
    # check_url refuses it (every caller, up front), as connect() does, naming
    # what a redis+sentinel:// URL accepts; a flag store URL's ?namespace= passes.
    url = f"redis+sentinel://127.0.0.1:{free_port()}/cache?sentinel_pasword=x"
    for call in (lambda: rc.check_url(url), lambda: rc.connect(url, op_timeout=0.5)):
        with pytest.raises(InvalidConfig, match=r"unknown .*parameter.*sentinel_pasword"):
            call()
    rc.check_url(url.replace("sentinel_pasword", "namespace"), store=True)


def test_no_sentinel_reachable_is_backend_unavailable_naming_service_and_sentinels() -> None:
    p1, p2 = free_port(), free_port()
    url = f"redis+sentinel://:pw@127.0.0.1:{p1},127.0.0.1:{p2}/cache/0"
    with pytest.raises(BackendUnavailable) as info:
        rc.connect(url, op_timeout=0.5)
    text = str(info.value)
    assert f"127.0.0.1:{p1},127.0.0.1:{p2}/cache" in text
    assert "no Sentinel answered with a healthy master" in text
    assert ":pw@" not in text
    assert ":***@" in text
    assert not isinstance(info.value, redis.RedisError)


# ------------------------------------------------------------------ a live Sentinel set


@pytest.fixture(scope="module")
def sentinel_set() -> Iterator[SentinelSet]:
    """A set no test of this module fails over (those make their own)."""
    with SentinelSet() as s:
        yield s


def test_connect_reaches_the_master_with_the_usual_options(sentinel_set: SentinelSet) -> None:
    url = sentinel_set.url.rsplit("/", 1)[0] + "/3"
    client = rc.connect(
        url, op_timeout=0.7, connect_timeout=0.4, name="t sentinel", decode_responses=True
    )
    try:
        client.set("k", "v")
        assert client.get("k") == "v"  # decode_responses
        direct = redis.Redis(port=sentinel_set.master.port, db=3)
        try:
            assert direct.get("k") == b"v"  # on the master, in db 3
        finally:
            direct.close()
        conn = client.connection_pool.get_connection()
        try:
            assert (conn.host, conn.port) == ("127.0.0.1", sentinel_set.master.port)
            assert (conn.socket_timeout, conn.socket_connect_timeout) == (0.7, 0.4)
            assert conn.retry.get_retries() == 0
            assert conn.db == 3
        finally:
            client.connection_pool.release(conn)
        names = [c["name"] for c in client.client_list()]
        assert "t_sentinel" in names
    finally:
        client.close()


def test_an_unknown_service_is_backend_unavailable(sentinel_set: SentinelSet) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel_set.sentinel.port}/nosuchservice/0"
    with pytest.raises(BackendUnavailable, match=r"nosuchservice.*no Sentinel answered"):
        rc.connect(url, op_timeout=0.5)


def test_the_flag_tools_open_a_store_by_sentinel_url(
    sentinel_set: SentinelSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foundation.flags._redis_store import RedisFlagStore
    from foundation.flags._urls import open_store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no node copy left behind
    monkeypatch.setenv("HOME", str(tmp_path))
    ns = unique_namespace("sentinel-tools")
    with pytest.raises(InvalidConfig, match="no flag store"):
        open_store(f"{sentinel_set.url}?namespace={ns}")
    store = open_store(f"{sentinel_set.url}?namespace={ns}", create=True, timeout=0.5)
    try:
        assert isinstance(store, RedisFlagStore)
        assert store.namespace == ns
    finally:
        store.close()


def test_a_read_only_master_on_the_write_connection_reconnects_through_the_sentinel(
    sentinel_set: SentinelSet,
) -> None:
    """A READONLY reply on the registry's own write connection (``_shared._write_evalsha``,
    a connection taken from the pool and kept) is BackendUnavailable naming READONLY,
    the connection is dropped, and the next write asks the Sentinel again."""
    ns = unique_namespace("sentinel-ro")
    reg = RedisRegistry(sentinel_set.url, namespace=ns, op_timeout=0.5)
    stop = threading.Event()
    from foundation import spawn_thread

    agent = spawn_thread(stop.wait)
    master = sentinel_set.master
    try:
        reg.register("first", agent)
        master.make_read_only()
        try:
            with pytest.raises(BackendUnavailable, match="READONLY"):
                reg.register("second", agent)
            assert reg.lookup("second") is None
            assert reg._sh.wconn is not None
            assert reg._sh.wconn._sock is None  # dropped: the next write asks the Sentinel
        finally:
            master.make_writable()
        assert wait_until(lambda: _registers(reg, "second", agent), timeout=20)
        assert reg.lookup("first") is not None
    finally:
        stop.set()
        reg.close()


def _registers(reg: RedisRegistry, key: str, agent: object) -> bool:
    from foundation.errors import BackendUnavailable as Unavailable

    try:
        reg.register(key, agent)
    except Unavailable:
        return False
    return True


# ------------------------------------------------------------------ failover scenarios

_FAILOVER = """
import itertools, tempfile
from pathlib import Path
from foundation import errors, spawn_thread
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from foundation.registry._redis import RedisRegistry
from foundation.registry._redis._observer import RedisObserver
from tests.redis_support import SentinelSet

HOW = {how!r}
NS = "sentinel-" + HOW
FLAGS = (Flag("beta"), Flag("gamma"), Flag("late"))
work = Path(tempfile.mkdtemp())
stop = threading.Event()
escaped = []  # anything but a Foundation error, from any call during the switch

def attempt(fn):
    try:
        fn()
        return True
    except errors.FoundationError:
        return False
    except Exception as exc:
        escaped.append(repr(exc))
        return False

def retry(fn, what, timeout=40.0):
    deadline = time.monotonic() + timeout
    while not attempt(fn):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {{what}}")
        time.sleep(0.02)  # sleep-ok: retrying a write with a deadline

def store(name, url):
    return RedisFlagStore(
        url, namespace=NS, cache_path=work / name, timeout=0.5, resync_interval=0.5
    )

with SentinelSet() as s:
    url = s.url
    a = RedisRegistry(url, namespace=NS, node="node-a", op_timeout=0.5, lease_ttl=3.0)
    b = RedisRegistry(url, namespace=NS, node="node-b", op_timeout=0.5, lease_ttl=3.0)
    obs = RedisObserver(url, namespace=NS, timeout=0.5)
    sa, sb = store("a.sqlite3", url), store("b.sqlite3", url)
    fa, fb = FeatureFlags(FLAGS, store=sa), FeatureFlags(FLAGS, store=sb)
    agent = spawn_thread(stop.wait)
    for i in range(5):
        a.register(("before", i), agent, {{"i": i}})
    fa.enable("beta", by="t")
    fa.set_percentage("gamma", 40, by="t")
    wait_for(lambda: all(b.lookup(("before", i)) for i in range(5)), "b sees a's agents")
    wait_for(lambda: obs.count() == 5, "the observer sees a's agents")
    wait_for(lambda: fb.state("gamma").percentage == 40.0, "b's flags follow")
    s.wait_replicated()
    before = set(library_threads())

    # Writes and reads on both nodes through the switch: only Foundation errors.
    churning = threading.Event()
    def churn():
        for n in itertools.count():
            if churning.is_set():
                return
            attempt(lambda: b.register(("churn", n), agent))
            attempt(lambda: b.unregister(("churn", n)))
            attempt(lambda: fb.enabled("beta") and fb.state("gamma"))
            attempt(lambda: b.lookup(("before", 0)) and obs.count())
            time.sleep(0.01)  # sleep-ok: pacing a load generator
    churner = threading.Thread(target=churn, name="churn")
    churner.start()

    late = []
    if HOW == "lost_writes":
        # Asynchronous replication: the replica misses what follows (frozen), the
        # master acknowledges it, then dies. The nodes must write it back.
        old_address, master = s.sentinel.master_address(), s.master
        replica = [x for x in s.servers if x is not master][0]
        replica.freeze()
        # Cut the link too: what is already in the replica's socket buffer would reach
        # it when it thaws; what follows is never sent (the master dies first).
        master.command("CLIENT", "KILL", "TYPE", "replica")
        for i in range(3):
            a.register(("late", i), agent)
            late.append(("late", i))
        fa.enable("late", by="t")
        began = time.monotonic()
        master.kill()
        replica.thaw()
        new = s._await_new_master(old_address, 40.0)
    elif HOW == "kill":
        began = time.monotonic()
        new = s.kill_master()
    else:
        began = time.monotonic()
        new = s.failover()
    switched = time.monotonic()

    retry(lambda: a.register(("after", 0), agent), "a registration accepted")
    first_register = time.monotonic()
    # A flag write accepted is not yet one on the new master: after SENTINEL FAILOVER
    # the old master accepts writes until the connections move. Count until one is
    # in the new master's data (its version moved; only fa writes flags).
    # 1..100 round and round from 60: each write a change, never an invalid
    # percentage (a slow failover can take more writes to the old master).
    percent = (1 + n % 100 for n in itertools.count(59))
    target = [None]
    def flag_version():
        return int(new.command("HGET", "{{" + NS + "}}:flags:meta", "version") or 0)
    def flag_write_lands():
        seen = flag_version()
        value = next(percent)
        if attempt(lambda: fa.set_percentage("gamma", value, by="t")):
            target[0] = float(value)
            return flag_version() > seen
        return False
    retry(flag_write_lands, "a flag write in the new master's data")
    first_flag = time.monotonic()
    print(
        f"MEASURE {{HOW}} sentinel_switch={{switched - began:.2f}}s "
        f"first_register_accepted={{first_register - switched:.2f}}s "
        f"first_flag_write_on_new_master={{first_flag - switched:.2f}}s"
    )
    churning.set()
    churner.join(timeout=30)
    assert not churner.is_alive()

    keys = [("before", i) for i in range(5)] + late + [("after", 0)]
    # Every live registration is on the new master: a node started now sees it.
    fresh = RedisObserver(url, namespace=NS, timeout=0.5)
    wait_for(lambda: all(fresh.lookup(k) for k in keys), "the new master holds every agent", 40)
    wait_for(lambda: all(b.lookup(k) for k in keys), "b's view holds every agent", 40)
    wait_for(lambda: all(obs.lookup(k) for k in keys), "the observer follows", 40)
    both = lambda: a.status().state == b.status().state == "connected"
    wait_for(both, "both nodes connected", 40)
    # Flags keep their values, on both nodes and in Redis (a store without a copy).
    wait_for(lambda: fb.state("gamma").percentage == target[0], "b's flags follow", 40)
    fresh_store = RedisFlagStore(url, namespace=NS, timeout=0.5)
    ff = FeatureFlags(FLAGS, store=fresh_store)
    wait_for(lambda: ff.state("gamma").percentage == target[0], "Redis holds the flag write", 40)
    for f in (fa, fb, ff):
        assert f.enabled("beta"), "beta reverted"
        assert f.state("gamma").percentage == target[0]
        if HOW == "lost_writes":
            assert f.enabled("late"), "the write the new master missed was lost"
    wait_for(lambda: sa.status().connected and sb.status().connected, "flag stores connected", 40)
    assert not sa.stale and not sb.stale

    if HOW == "lost_writes":  # the new master lacked them: written back by the nodes
        assert a.status().reasserts >= 1, a.status()
        assert sa.status().restores + sb.status().restores >= 1, (sa.status(), sb.status())
    assert not escaped, escaped
    gone = before - set(library_threads()) - {{"foundation-redis-sentinel"}}
    assert not gone, f"library threads gone: {{gone}}"
    assert sa._thread.is_alive() and sb._thread.is_alive()
    print("threads", library_threads())
    for closing in (fresh, ff, fresh_store, obs, fa, fb, sa, sb, a, b):
        if hasattr(closing, "close"):
            closing.close()
    stop.set()
    watch = "foundation-redis-sentinel"
    wait_for(lambda: watch not in library_threads(), "the Sentinel watch ends")
print("OK")
"""


@pytest.mark.parametrize(
    "how",
    [
        # SENTINEL FAILOVER: the old master stays up (a writable master for seconds,
        # until the Sentinel demotes it); connections move to the new one at once.
        "failover",
        # The master SIGKILLed: the Sentinel promotes the replica after down-after-ms.
        "kill",
        # The master acknowledged writes the (frozen) replica never got, then died:
        # the nodes write them back into the new master.
        "lost_writes",
    ],
)
def test_every_redis_class_follows_a_sentinel_failover(how: str) -> None:
    result = run_scenario(_FAILOVER.format(how=how), timeout=150)
    print("\n".join(result.lines("MEASURE")))
