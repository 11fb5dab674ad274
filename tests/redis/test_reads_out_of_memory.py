"""Redis out of memory (``maxmemory`` reached, ``noeviction``): reads answer.

Redis refuses every command queued inside ``MULTI`` while out of memory, reads
too, so ``foundation agents list`` (which reads each chunk of entries in a
``MULTI``) exited 69. A refused chunk is now read by a pure-read script, which
Redis runs out of memory (``_chunked_reads``). Writes still fail, typed. A new
observer's snapshot and a node's resync (scripts) answered already; checked
here too.

Each scenario runs in a plain interpreter (``run_scenario``) against a
redis-server of its own.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_OOM = """
import json, tempfile
from pathlib import Path
from foundation import errors, spawn_thread
from foundation.registry._redis import RedisRegistry, _chunked_reads
from foundation.registry._redis._chunked_reads import NamespaceReader
from foundation.registry._redis._observer import RedisObserver
from tests.cli._support import ok_json, run_cli
from tests.redis_support import RedisServer

META = {k: {"n": i, "role": "io" if i % 2 else "cpu"} for i, k in enumerate("abcde")}
server = RedisServer()
server.start()
stop = threading.Event()
cwd = Path(tempfile.mkdtemp(prefix="reads-oom-"))
where = ("--redis", server.url, "--namespace", "p")
try:
    reg = RedisRegistry(server.url, namespace="p", lease_ttl=60.0, op_timeout=0.5)
    for k, meta in META.items():
        reg.register(k, spawn_thread(stop.wait), meta)
    threads = library_threads()
    assert server.command("CONFIG", "GET", "maxmemory-policy")[1] == b"noeviction"
    server.command("CONFIG", "SET", "maxmemory", "1")  # every write is now an OOM reply

    # Writes fail, typed.
    got = typed(lambda: reg.register("f", spawn_thread(stop.wait), {}))
    assert got.startswith("BackendUnavailable") and "OOM" in got, got
    got = typed(lambda: reg.update_metadata("a", {"n": 9}))
    assert got.startswith("BackendUnavailable") and "OOM" in got, got

    # The CLI lists and counts every entry (it exited 69: MULTI refused).
    listed = ok_json(run_cli("agents", "list", *where, cwd=cwd))
    assert {e["key"]: e["metadata"] for e in listed} == META, listed
    assert {e["node"] for e in listed} == {reg.node}, listed
    counted = ok_json(run_cli("agents", "count", *where, cwd=cwd))
    assert counted == {"count": 5, "by_kind": {"thread": 5}, "by_node": {reg.node: 5}}, counted
    text = run_cli("agents", "list", "--text", *where, cwd=cwd)
    assert text.returncode == 0 and "Traceback" not in text.stderr, text
    assert all(k in text.stdout for k in META), text.stdout

    # Several chunks: the first MULTI refused, every chunk read by the script
    # (its no-writes form on Redis 7), in the order asked, none lost.
    _chunked_reads.CHUNK = 2
    reader = NamespaceReader(server.url, "p")
    order = reader.oldest_first()
    assert len(order) == 5, order
    entries = list(reader.entries(order))
    assert [e.key for e in entries] == list("abcde"), entries
    assert [e.metadata for e in entries] == list(META.values()), entries
    assert reader._script is not None and reader._script.flagged is True
    reader.close()

    # A new observer's snapshot and the node's resync (scripts) answer too.
    obs = RedisObserver(server.url, namespace="p", timeout=0.5)
    assert keys(obs) == list("abcde"), keys(obs)
    assert obs.lookup("c").metadata == META["c"], obs.lookup("c")
    obs.close()
    with reg._sh.wlock:
        reg._tail.resync()
    assert keys(reg) == list("abcde"), keys(reg)
    print("OOM-OK")

    server.command("CONFIG", "SET", "maxmemory", "0")
    wait_for(lambda: reg.status().state == "connected", "the node to recover")
    reg.register("f", spawn_thread(stop.wait), {"n": 5})
    listed = ok_json(run_cli("agents", "list", *where, cwd=cwd))
    assert sorted(e["key"] for e in listed) == list("abcdef"), listed
    assert library_threads() == threads, (library_threads(), threads)
    reg.close()
    print("OK")
finally:
    stop.set()
    server.stop()
"""


def test_agents_list_and_count_answer_out_of_memory_while_writes_fail() -> None:
    result = run_scenario(_OOM, timeout=120)
    assert result.lines("OOM-OK"), result.stdout
    assert "unexpected error" not in result.stderr, result.stderr


_PLAIN = """
import redis
from foundation import spawn_thread
from foundation.registry._redis import RedisRegistry, _chunked_reads
from foundation.registry._redis._chunked_reads import NamespaceReader
from tests.redis_support import VersionlessRedisServer

# Redis 6.2's case: the script is run in its plain form (no shebang line).
server = VersionlessRedisServer()
server.start()
url = server.url
admin = redis.Redis.from_url(url)
stop = threading.Event()

try:
    reg = RedisRegistry(url, namespace="q", lease_ttl=60.0, op_timeout=0.5)
    for i in range(3):
        reg.register(f"k{i}", spawn_thread(stop.wait), {"i": i})
    admin.config_set("maxmemory", "1")
    _chunked_reads.CHUNK = 2
    reader = NamespaceReader(url, "q")
    entries = list(reader.entries(reader.oldest_first()))
    assert [(e.key, e.metadata) for e in entries] == [(f"k{i}", {"i": i}) for i in range(3)]
    assert reader._script is not None and reader._script.flagged is False
    reader.close()
    admin.config_set("maxmemory", "0")
    reg.close()
    print("OK")
finally:
    stop.set()
    server.stop()
"""


def test_plain_chunk_script_answers_out_of_memory() -> None:
    """The plain form (what a server of unknown version, or 6.2, gets) runs out of memory too."""
    run_scenario(_PLAIN, timeout=90)
