"""Many writers against a frozen Redis: one timeout for all of them, not one each.

A frozen ``redis-server`` (SIGSTOP) accepts connections and answers nothing.
Writes are serialised (a ``RedisRegistry`` node's write lock, a
``MigratingRegistry``'s facade lock, a ``FeatureFlags`` lock and the flag
store's transaction lock), so if each queued writer waited its own
``op_timeout`` the k-th of N concurrent writers would get its error after k
timeouts: a backlog that grows with load. Instead a write that finds a call
timed out moments ago (and none succeeded since) fails at once with the same
``BackendUnavailable``.

Each scenario, in a subprocess under the interpreter's default hooks: N
writer threads start together on the frozen server; every one gets
``BackendUnavailable``, and at most two of them (one, but for the lease
thread's or listener's own timeout racing the first writer's) after waiting a
timeout of their own: the others fail at once (the old queue made every one
wait its own); reads answer meanwhile, before any frozen write
returned; the operator is told once; after SIGCONT a write succeeds again
without anything done by the caller; no library thread died.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.faults._subprocess import run_scenario

_SETUP = {
    # A RedisRegistry on its own.
    "redis": """
reg = RedisRegistry(server.url, namespace=NS, op_timeout=T, lease_ttl=60.0)
reg.register("pre", agents[-1], {"n": 0})
write = lambda i: reg.register(("k", i), agents[i], {"n": i})
read = lambda: reg.lookup("pre") is not None and len(reg.query([])) == 1
close = reg.close
LOGGER = "foundation.registry.redis"
""",
    # Flag off: the legacy RedisRegistry answers, under the facade lock.
    "migrating-legacy": """
flags = FeatureFlags([Flag("use_ets_agent_registry")])
reg = MigratingRegistry(
    RedisRegistry(server.url, namespace=NS, op_timeout=T, lease_ttl=60.0), MemoryRegistry(), flags
)
reg.register("pre", agents[-1], {"n": 0})
write = lambda i: reg.register(("k", i), agents[i], {"n": i})
read = lambda: reg.lookup("pre") is not None and len(reg.query([])) == 1
close = reg.close
LOGGER = "foundation.registry.redis"
""",
    # Flag on: the target RedisRegistry answers, under the facade lock.
    "migrating-target": """
flags = FeatureFlags([Flag("use_ets_agent_registry")])
reg = MigratingRegistry(
    MemoryRegistry(), RedisRegistry(server.url, namespace=NS, op_timeout=T, lease_ttl=60.0), flags
)
flags.enable("use_ets_agent_registry")
reg.register("pre", agents[-1], {"n": 0})
write = lambda i: reg.register(("k", i), agents[i], {"n": i})
read = lambda: reg.lookup("pre") is not None and len(reg.query([])) == 1
close = reg.close
LOGGER = "foundation.registry.redis"
""",
    # FeatureFlags on a RedisFlagStore: its lock, then the store's transaction lock.
    "flags": """
from foundation.flags import RedisFlagStore
store = RedisFlagStore(server.url, namespace=NS, timeout=T, cache_path=None)
flags = FeatureFlags([Flag(f"f{i}") for i in range(N)] + [Flag("on")], store=store)
flags.enable("on")
write = lambda i: flags.enable(f"f{i}")
read = lambda: flags.enabled("on") is True
close = lambda: (flags.close(), store.close())
LOGGER = "foundation.flags"
""",
}

_BODY = """
import uuid
from foundation import (FeatureFlags, Flag, MemoryRegistry, MigratingRegistry, RedisRegistry,
    spawn_thread)
from foundation.errors import BackendUnavailable

# T: the reads below and every writer's start must come within one timeout
# (the fast-fail window): 3 s, not 1, so a loaded machine's stall fits in it.
N, T = 8, 3.0
NS = f"frz-{uuid.uuid4().hex[:8]}"
agents = [spawn_thread(stop.wait, name=f"agent-{i}") for i in range(N + 2)]
SETUP
threads_before = library_threads()

server.freeze()                                   # SIGSTOP: every Redis call now waits
start = threading.Barrier(N + 1)
outcomes = [None] * N
returned = threading.Event()                      # set as soon as any writer returns

def writer(i):
    start.wait()
    try:
        write(i)
        outcomes[i] = "no error"
    except BaseException as exc:
        outcomes[i] = exc
    finally:
        returned.set()

workers = [threading.Thread(target=writer, args=(i,), name=f"writer-{i}", daemon=True)
           for i in range(N)]
for w in workers:
    w.start()
start.wait()
# Reads never wait for a write: all of them answer while no frozen write has
# returned (each write waits a whole timeout at least, the reads none).
for _ in range(20):
    assert read(), "a read answered wrong while Redis was frozen"
assert not returned.is_set(), "the reads waited for a frozen write to return"
# The bound, counted rather than timed: one writer waits out a real timeout;
# every other one fails at once ("... timed out moments ago ..."). The old
# queue made each writer wait a timeout of its own (8 timeout errors, or 4 and
# then "writes are queued" past the write lock's bounded wait).
for i, w in enumerate(workers):
    w.join(60)                                    # a hang guard, not a bound
    assert not w.is_alive(), (f"writer {i} never returned", outcomes)
assert all(isinstance(o, BackendUnavailable) for o in outcomes), outcomes
waited = [str(o) for o in outcomes if "timed out moments ago" not in str(o)]
assert len(waited) <= 2, ("more than one writer waited its own timeout", waited)
assert read(), "a read answered wrong after the frozen writes"
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())

server.thaw()                                     # SIGCONT: writes succeed again, by themselves
def write_succeeds():
    try:
        write(0)
    except BackendUnavailable:
        return False                              # not yet back (or the fast-fail window)
    return True
wait_for(write_succeeds, "a write to succeed after the thaw", timeout=30)
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
print(f"LOGGER={LOGGER}")
close()
print("OK")
"""


def _script(case: str) -> str:
    # The server is thawed and stopped whatever happens: no frozen redis-server
    # outlives a failed scenario.
    main = _BODY.replace("SETUP", _SETUP[case].strip())
    return (
        "from tests.redis_support import RedisServer\n"
        "stop = threading.Event()\n"
        "server = RedisServer()\nserver.start()\ntry:\n"
        + textwrap.indent(main, "    ")
        + "\nfinally:\n    stop.set()\n    server.thaw()\n    server.stop()\n"
    )


@pytest.mark.parametrize("case", sorted(_SETUP))
def test_concurrent_writers_on_a_frozen_redis_fail_within_one_timeout_not_one_each(
    case: str,
) -> None:
    result = run_scenario(_script(case), timeout=120)
    (logger,) = (line.split("=", 1)[1] for line in result.lines("LOGGER="))
    # The operator is told once for the outage, not once per failed write.
    told = [
        line
        for line in result.stderr.splitlines()
        if line.startswith(f"LOG WARNING {logger} ") and "fail at once" in line
    ]
    assert len(told) == 1, result.stderr


# A kill switch recorded while Redis was frozen (the fast-fail window open: a
# write timed out just before) and Redis resumed at once. The listener hears
# Redis again (its XREAD answers, or its resync reads) and commits the kill
# switch. Redis answering the listener is Redis answering a call: the window
# closes, so the commit goes through, never failed fast by the window itself
# (which turned a healthy Redis into a "lost Redis ... not answering" outage:
# the store went stale and retried for up to a timeout before committing).
_KILL_SWITCH_AFTER_THAW = """
import uuid
from foundation import FeatureFlags, Flag
from foundation.errors import BackendUnavailable
from foundation.flags import RedisFlagStore

# The window (T) is wide: the listener hears Redis within about one XREAD block
# (resync_interval) of the thaw, whether its XREAD was sent before the freeze,
# during it, or timed out (then its resync reads Redis).
T = 3.0
store = RedisFlagStore(server.url, namespace=f"frz-{uuid.uuid4().hex[:8]}", timeout=T,
                       resync_interval=0.5, cache_path=None)
flags = FeatureFlags([Flag("a"), Flag("k")], store=store)
flags.enable("k")

server.freeze()
try:
    flags.enable("a")
    raise AssertionError("a write to a frozen Redis succeeded")
except BackendUnavailable:
    pass                                          # timed out: the window is open
flags.disable("k")                                # failed fast: recorded, pending
assert [op.flags for op in store.pending()] == [("k",)], store.pending()
server.thaw()

wait_for(lambda: not store.pending() and store.synced, "the kill switch to be committed")
assert "not answering" not in (store.status().last_error or ""), store.status()
assert flags.enabled("k") is False
flags.close()
store.close()
print("OK")
"""


def test_a_kill_switch_held_during_a_freeze_is_committed_once_the_listener_hears_redis() -> None:
    script = (
        "from tests.redis_support import RedisServer\n"
        "server = RedisServer()\nserver.start()\ntry:\n"
        + textwrap.indent(_KILL_SWITCH_AFTER_THAW, "    ")
        + "\nfinally:\n    server.thaw()\n    server.stop()\n"
    )
    result = run_scenario(script, timeout=120)
    # The listener never met the fast-fail window: Redis had answered it.
    failed_fast = [
        line
        for line in result.stderr.splitlines()
        if "[foundation-flags-redis[" in line and "not answering" in line
    ]
    assert not failed_fast, result.stderr


# A transaction queued on the store's transaction lock behind one that times out
# on a frozen Redis, while the store is closed: it reports Closed (the store is
# closed, as before fail-fast and as a RedisRegistry writer says), not the
# fast-fail BackendUnavailable of the timeout ahead of it.
_CLOSED_WHILE_QUEUED = """
import uuid
from foundation.errors import BackendUnavailable, Closed
from foundation.flags import RedisFlagStore

T = 3.0  # wide: B queues and close() starts within milliseconds
store = RedisFlagStore(server.url, namespace=f"frz-{uuid.uuid4().hex[:8]}", timeout=T,
                       cache_path=None)
outcome = {}
calling = threading.Event()

def txn(who):
    if who == "B":
        calling.set()
    try:
        store.transaction(lambda t: t.get("a"))
        outcome[who] = "no error"
    except BaseException as exc:
        outcome[who] = exc

server.freeze()
a = threading.Thread(target=txn, args=("A",), daemon=True)
a.start()
wait_for(store._txn_lock.locked, "A to hold the transaction lock")   # A waits its timeout
b = threading.Thread(target=txn, args=("B",), daemon=True)
b.start()
assert calling.wait(10)                           # B is on its way to the lock, A's queue
closer = threading.Thread(target=store.close, daemon=True)
closer.start()
wait_for(lambda: store._closed, "close() to begin")
a.join(30)
b.join(30)
assert isinstance(outcome["A"], BackendUnavailable), outcome
assert isinstance(outcome["B"], Closed), outcome
server.thaw()
closer.join(30)
print("OK")
"""


def test_a_transaction_queued_behind_a_timeout_reports_closed_once_the_store_closed() -> None:
    script = (
        "from tests.redis_support import RedisServer\n"
        "server = RedisServer()\nserver.start()\ntry:\n"
        + textwrap.indent(_CLOSED_WHILE_QUEUED, "    ")
        + "\nfinally:\n    server.thaw()\n    server.stop()\n"
    )
    run_scenario(script, timeout=120)
