"""Local agents dying on a frozen Redis: their deletes never hold the writers up.

A ``RedisRegistry`` deletes a dead local agent's entry from its lease thread,
holding the node's write lock. On a frozen ``redis-server`` (SIGSTOP) each
delete used to wait a timeout of its own, and the lease thread took the lock
back between them (a recovery's heartbeat, the next delete): a public write
queued behind them waited up to ``4 * op_timeout`` and then failed with the
fast-fail error, having tried nothing, where the docs promise about one
``op_timeout`` for the first writer and at once for the others.

Now a delete, like a public write, fails at once while a call timed out
moments ago and none succeeded since (it waits for a successful heartbeat or
recovery and runs then), and a writer waiting for the lock looks at that
window while it waits. Counted, never timed: the deletes sent to the frozen
server, the writer's error while the lock is still held. After SIGCONT every
dead agent's entry is gone from Redis and writes work again.

Each scenario runs in a subprocess under the interpreter's default hooks.
"""

from __future__ import annotations

import textwrap

from tests.faults._subprocess import run_scenario

_DEATHS = """
import uuid
from foundation import RedisRegistry, spawn_thread, telemetry
from foundation.errors import BackendUnavailable

N, T = 4, 1.0
NS = f"frzdead-{uuid.uuid4().hex[:8]}"
trips = []                                        # (doing, ok) of every timed Redis call
telemetry.attach("foundation.redis.round_trip", lambda _n, d: trips.append((d["doing"], d["ok"])))
failed = lambda word: [d for d, ok in trips if not ok and word in d]

reg = RedisRegistry(server.url, namespace=NS, op_timeout=T, lease_ttl=60.0)
stops = [threading.Event() for _ in range(N)]
for i in range(N):
    reg.register(f"d{i}", spawn_thread(stops[i].wait, name=f"agent-{i}"))
threads_before = library_threads()

server.freeze()                                   # SIGSTOP: every Redis call now waits
for s in stops:
    s.set()                                       # N local agents die: N deletes queued
wait_for(lambda: all(reg.lookup(f"d{i}") is None for i in range(N)), "the deaths to be seen")
outcome = []
def write():
    try:
        reg.register("x", spawn_thread(stop.wait, name="agent-x"))
        outcome.append("no error")
    except BaseException as exc:
        outcome.append(exc)
writer = threading.Thread(target=write, name="writer", daemon=True)
writer.start()                                    # the first writer, queued behind a delete
writer.join(60)                                   # a hang guard, not a bound
assert not writer.is_alive(), "the write never returned"
assert isinstance(outcome[0], BackendUnavailable), outcome
assert "not answering" in str(outcome[0]) or "no answer in time" in str(outcome[0]), outcome

# The lease thread goes on probing Redis (a recovery's heartbeat each time).
# Between its failed heartbeats it used to send the next queued delete, each a
# timeout holding the write lock; now those fail at once (nothing sent) and
# wait for Redis to answer: at most the first delete, sent before any timeout,
# met the frozen server.
wait_for(lambda: len(failed("renewing the lease")) >= 3, "three failed heartbeats", timeout=60)
deletes = failed("deleting the dead agent")
assert len(deletes) <= 1, ("deletes sent to a Redis known not to answer", deletes)
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())

server.thaw()                                     # SIGCONT: the deletes run, writes work
def write_succeeds():
    try:
        reg.register("x", spawn_thread(stop.wait, name="agent-x2"), replace=True)
    except BackendUnavailable:
        return False                              # not yet back (or the fast-fail window)
    return True
wait_for(write_succeeds, "a write to succeed after the thaw", timeout=30)
# Another node reads Redis itself: no registration of a dead agent left behind.
peer = RedisRegistry(server.url, namespace=NS, op_timeout=T, lease_ttl=60.0)
wait_for(lambda: all(peer.lookup(f"d{i}") is None for i in range(N)),
         "the dead agents' entries to be deleted in Redis", timeout=30)
assert peer.lookup("x") is not None
assert reg.lookup("x") is not None
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
peer.close()
reg.close()
print("OK")
"""

# A writer queued for the write lock while its holder timed out on a frozen
# Redis and then kept the lock (as the lease thread does when it takes the lock
# back at once: an RLock is not fair). The writer fails fast while the lock is
# still held: it no longer waits for the lock first (up to 4 * op_timeout, then
# "writes are queued").
_HELD = """
import uuid
from foundation import RedisRegistry, spawn_thread
from foundation.errors import BackendUnavailable

T = 1.0
reg = RedisRegistry(server.url, namespace=f"frzheld-{uuid.uuid4().hex[:8]}", op_timeout=T,
                    lease_ttl=60.0)
sh = reg._sh
holding, timed_out, release = threading.Event(), threading.Event(), threading.Event()

def holder():
    with sh.writing(public=False):
        holding.set()
        try:
            sh.call("pinging a frozen Redis", sh.client.ping)
        except BackendUnavailable:
            timed_out.set()
        release.wait(60)                          # keeps the lock until the writer returned

server.freeze()
h = threading.Thread(target=holder, name="holder", daemon=True)
h.start()
assert holding.wait(10)
outcome = []
def write():
    try:
        reg.register("x", spawn_thread(stop.wait, name="agent-x"))
        outcome.append("no error")
    except BaseException as exc:
        outcome.append(exc)
w = threading.Thread(target=write, name="writer", daemon=True)
w.start()
w.join(60)                                        # a hang guard, not a bound
assert not w.is_alive(), "the write never returned"
assert timed_out.is_set(), "the holder's call did not time out"
assert h.is_alive() and not release.is_set()      # the lock is still held
assert isinstance(outcome[0], BackendUnavailable), outcome
assert "not retried" in str(outcome[0]), outcome  # the fast-fail error, not "queued"
release.set()
h.join(30)
server.thaw()
def write_succeeds():
    try:
        reg.register("x", spawn_thread(stop.wait, name="agent-x2"), replace=True)
    except BackendUnavailable:
        return False
    return True
wait_for(write_succeeds, "a write to succeed after the thaw", timeout=30)
reg.close()
print("OK")
"""


def _script(body: str) -> str:
    # The server is thawed and stopped whatever happens: no frozen redis-server
    # outlives a failed scenario.
    return (
        "from tests.redis_support import RedisServer\n"
        "stop = threading.Event()\n"
        "server = RedisServer()\nserver.start()\ntry:\n"
        + textwrap.indent(body, "    ")
        + "\nfinally:\n    stop.set()\n    server.thaw()\n    server.stop()\n"
    )


def test_deletes_of_agents_dead_on_a_frozen_redis_fail_fast_and_run_after_the_thaw() -> None:
    run_scenario(_script(_DEATHS), timeout=120)


def test_a_writer_queued_behind_a_timed_out_lock_holder_fails_fast_while_it_holds_it() -> None:
    run_scenario(_script(_HELD), timeout=120)
