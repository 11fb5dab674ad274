"""A frozen Redis target must not stall the legacy path of a MigratingRegistry.

With the flag off, the legacy store answers and every write is mirrored to the
target. When that target is a ``RedisRegistry`` on a frozen ``redis-server``
(SIGSTOP), one mirror call waits for ``op_timeout``. That wait must not hold up
other threads' legacy writes: they touch only the in-memory legacy store. The
scenario proves it logically, not by timing: thread A is known to be inside
the frozen target call (an event set on entry, another on exit); the other
threads' writes all complete while A's call has still not returned.

Run in a subprocess under the interpreter's default hooks; asserts that no
library thread died and (second scenario) that skipped mirrors are announced.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.faults._subprocess import run_scenario

_COMMON = """
import uuid
from foundation import (FeatureFlags, Flag, MemoryRegistry, MigratingRegistry, RedisRegistry,
    ThreadLocalRegistry, spawn_thread)

LEGACY = {legacy}
OP_TIMEOUT = {op_timeout}
entered, exited = threading.Event(), threading.Event()

class Observed(RedisRegistry):
    # The real RedisRegistry; only tells the scenario when a mirror register is in flight.
    watch = None
    def register(self, key, agent, metadata=None, *, replace=False):
        watched = key == self.watch
        if watched:
            entered.set()
        try:
            return super().register(key, agent, metadata, replace=replace)
        finally:
            if watched:
                exited.set()

flags = FeatureFlags([Flag("use_ets_agent_registry")])
target = Observed(server.url, namespace=f"h8-{{uuid.uuid4().hex[:8]}}", op_timeout=OP_TIMEOUT)
reg = MigratingRegistry(LEGACY(), target, flags)
threads_before = library_threads()
N = 4
errors = []
done = [threading.Event() for _ in range(N)]

def writer(i):
    # Legacy-path writes only (flag off): register, update, unregister, register again.
    try:
        mine = [spawn_thread(stop.wait, name=f"agent-{{i}}-{{j}}") for j in range(3)]
        for j, agent in enumerate(mine):
            reg.register(("w", i, j), agent, {{"n": j}})
        reg.update_metadata(("w", i, 0), {{"n": 10}})
        assert reg.unregister(("w", i, 1)) is True
        assert reg.lookup(("w", i, 2)).agent is mine[2]
        reg.register(("w", i, 1), mine[1], {{"n": 11}})
        # The legacy side (authoritative) has every write at once, as this thread sees it.
        assert reg.lookup(("w", i, 0)).metadata["n"] == 10
        assert reg.lookup(("w", i, 1)).metadata["n"] == 11
    except BaseException as exc:
        errors.append(exc)
    finally:
        done[i].set()
    release.wait(60)  # a per-thread legacy view (and its divergences) ends with its thread

def start_writers():
    workers = [
        threading.Thread(target=writer, args=(i,), name=f"writer-{{i}}", daemon=True)
        for i in range(N)
    ]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 30.0   # generous: the writers touch memory only
    for i, ev in enumerate(done):
        assert ev.wait(max(0.0, deadline - time.monotonic())), (
            f"writer {{i}} still blocked (frozen call returned: {{exited.is_set()}})"
        )

a_agent = spawn_thread(stop.wait, name="agent-a")
target.watch = "a"
server.freeze()                                   # SIGSTOP: every Redis call now waits
a = threading.Thread(
    target=lambda: (reg.register("a", a_agent, {{"n": 0}}), release.wait(60)),
    name="writer-a",
    daemon=True,
)
a.start()
assert entered.wait(20), "thread A never reached the target"
"""

# Thaw before A's call times out: A's mirror lands, the others' queued mirrors
# follow in order, and a flip then shows everything the legacy side holds.
_THAW_IN_TIME = """
start_writers()
# The point of the test: all of them finished while A's frozen call had not returned.
assert not exited.is_set(), "legacy writes waited for another thread's frozen mirror call"
assert not errors, errors
server.thaw()
assert exited.wait(60)
assert reg.divergences() == [], reg.divergences()   # every queued mirror was applied
flags.enable("use_ets_agent_registry")              # the target answers now
assert reg.lookup("a").agent is a_agent
for i in range(N):
    assert reg.lookup(("w", i, 0)).metadata["n"] == 10
    assert reg.lookup(("w", i, 1)).metadata["n"] == 11
    assert reg.lookup(("w", i, 2)).metadata["n"] == 2
assert reg.count() == 1 + 3 * N, reg.list_all()
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
reg.close()
print("OK")
"""

# Stay frozen past A's op_timeout: A's mirror fails, the target reports itself
# disconnected, later mirrors are skipped (no wait) and listed as divergences;
# the operator is told by a WARNING. Writers never wait for the frozen server.
# When it is back, readiness() retries the skipped mirrors: nothing is lost.
_STAY_FROZEN = """
assert exited.wait(60), "A's frozen call never timed out"
start_writers()
assert not errors, errors
keys = {d.key for d in reg.divergences()}
assert "a" in keys and ("w", 0, 0) in keys, keys
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
server.thaw()                                        # back: the skipped mirrors are retried
wait_for(lambda: target.status().state == "connected", "the target to recover")
assert reg.readiness() == [], reg.readiness()
flags.enable("use_ets_agent_registry")               # nothing was lost
assert reg.lookup("a").agent is a_agent
for i in range(N):
    assert reg.lookup(("w", i, 0)).metadata["n"] == 10
    assert reg.lookup(("w", i, 1)).metadata["n"] == 11
    assert reg.lookup(("w", i, 2)).metadata["n"] == 2
assert reg.count() == 1 + 3 * N, reg.list_all()
reg.close()
print("OK")
"""


def _script(body: str, legacy: str, op_timeout: float) -> str:
    # The server is stopped (thawed first) whatever happens, so no frozen
    # redis-server outlives a failed scenario.
    main = _COMMON.format(legacy=legacy, op_timeout=op_timeout) + body
    return (
        "from tests.redis_support import RedisServer\n"
        "stop, release = threading.Event(), threading.Event()\n"
        "server = RedisServer()\nserver.start()\ntry:\n"
        + textwrap.indent(main, "    ")
        + "\nfinally:\n    release.set()\n    stop.set()\n    server.stop()\n"
    )


@pytest.mark.parametrize("legacy", ["ThreadLocalRegistry", "MemoryRegistry"])
def test_legacy_writes_do_not_wait_behind_a_frozen_target_mirror(legacy: str) -> None:
    run_scenario(_script(_THAW_IN_TIME, legacy, 10.0), timeout=150)


@pytest.mark.parametrize("legacy", ["ThreadLocalRegistry", "MemoryRegistry"])
def test_mirrors_are_skipped_while_the_target_is_down_announced_and_retried(
    legacy: str,
) -> None:
    result = run_scenario(_script(_STAY_FROZEN, legacy, 1.0), timeout=150)
    assert "LOG WARNING foundation.registry " in result.stderr, result.stderr
    assert "mirroring to the target skipped" in result.stderr, result.stderr
