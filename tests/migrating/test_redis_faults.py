"""MigratingRegistry between MemoryRegistry and RedisRegistry under Redis faults.

Each scenario runs a real ``redis-server`` (frozen, made read-only) in a
subprocess with the interpreter's default hooks (``tests.faults._subprocess``),
and asserts what an operator would see once Redis is back: every live
registration on both sides with its current metadata, nothing unregistered
come back, no divergence left that a retry could resolve, ``finish()`` that
works again without extra steps, one WARNING per outage rather than one per
write, and no library thread dead. None asserts a timing: "no wait per
entry" is asserted by counting the calls that reached the frozen server.
"""

from __future__ import annotations

import textwrap

from tests.faults._subprocess import run_scenario

_COMMON = """
import uuid
from foundation import (FeatureFlags, Flag, MemoryRegistry, MigratingRegistry, RedisRegistry,
    errors, spawn_thread)

FLAG = "use_ets_agent_registry"

class Counted(RedisRegistry):
    # The real RedisRegistry; counts the writes that reach it while `counting` is set.
    counting = False
    calls = 0
    def _count(self):
        if self.counting:
            type(self).calls += 1
    def register(self, *args, **kwargs):
        self._count()
        return super().register(*args, **kwargs)
    def unregister(self, key):
        self._count()
        return super().unregister(key)
    def update_metadata(self, key, metadata):
        self._count()
        return super().update_metadata(key, metadata)

def redis_registry():
    return Counted(server.url, namespace=f"mf-{uuid.uuid4().hex[:8]}", op_timeout=0.5,
                   lease_ttl=1.0)

def agent():
    return spawn_thread(stop.wait, name="agent")

def connected(registry):
    wait_for(lambda: registry.status().state == "connected", "Redis to be back")

def first_write(write):
    # The first write once Redis is writable again may meet that one flap
    # (see settled()): a write refused as BackendUnavailable changed nothing,
    # so it is made again, with a deadline.
    deadline = time.monotonic() + 20
    while True:
        try:
            return write()
        except errors.BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # sleep-ok: polling with a deadline

def settled(reg):
    # A server made writable again (REPLICAOF NO ONE) may still close a
    # connection after status() first says connected, so the node flaps to
    # disconnected once and a retry made in that window is skipped again.
    # readiness() is a probe an operator polls: it must come to [] by itself.
    wait_for(lambda: reg.readiness() == [], "readiness() to retry the skipped mirrors")

def contents(registry):
    return {e.key: (e.agent, dict(e.metadata)) for e in registry.list_all()}

flags = FeatureFlags([Flag(FLAG)])
"""

# Memory -> Redis: the constructor's copy meets a frozen Redis. It does not
# wait once per entry; each copy is a listed divergence; finish() is refused
# truthfully; once Redis is back the copies are retried, with the flag already
# on too, and finish() works again by itself.
_BACKFILL_FROZEN = """
legacy = MemoryRegistry()
agents = {i: agent() for i in range(12)}
for i, a in agents.items():
    legacy.register(i, a, {"i": i})
target = redis_registry()
threads_before = library_threads()
server.freeze()
Counted.counting = True
reg = MigratingRegistry(legacy, target, flags)       # the copy, against a frozen Redis
Counted.counting = False
assert Counted.calls <= 1, f"the copy waited on the frozen server {Counted.calls} times"
assert sorted(d.key for d in reg.divergences()) == list(range(12)), reg.divergences()
flags.enable(FLAG)                                   # flipped anyway (not through Migration)
try:
    reg.finish()
except errors.MigrationError as exc:
    assert "divergences remain" in str(exc), exc
else:
    raise AssertionError("finish() succeeded with the copy missing from the target")
server.thaw()
connected(target)
reg.finish()                                         # retries the copies first
assert {k: a for k, (a, _) in contents(reg).items()} == agents
assert contents(target)[3][1] == {"i": 3}
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
reg.close()
print("OK")
"""

# Memory -> Redis, flag off, Redis read-only: mirrors of a register, an update
# and an unregister are refused. Once Redis is writable, readiness() retries
# them: the target gets the registration, the new metadata, and loses the
# unregistered key (whose agent is still alive) rather than resurrecting it.
_MIRRORS_REFUSED = """
legacy, target = MemoryRegistry(), redis_registry()
reg = MigratingRegistry(legacy, target, flags)
kept, gone, new = agent(), agent(), agent()
reg.register("kept", kept, {"n": 1})
reg.register("gone", gone, {"n": 1})
server.make_read_only()
reg.update_metadata("kept", {"n": 2})
assert reg.unregister("gone") is True
reg.register("new", new, {"n": 1})
keys = {d.key for d in reg.divergences()}
assert keys == {"kept", "gone", "new"}, reg.divergences()
server.make_writable()
settled(reg)
wait_for(lambda: contents(target) == {"kept": (kept, {"n": 2}), "new": (new, {"n": 1})},
         "the target to hold the retried mirrors")
flags.enable(FLAG)
assert contents(reg) == contents(legacy) == contents(target)
reg.finish()
reg.close()
print("OK")
"""

# Memory -> Redis: registers skipped while Redis was read-only leave
# divergent legacy copies; the flag is turned on meanwhile (nothing can be
# retried yet). Once Redis is writable, the first flag-on write decides: a
# register of a skipped key replaces the copy (both sides agree, nothing
# unlisted is left to lose at the next flip); an unregister of one removes it
# (it never comes back, neither by a retried mirror nor by a flip). That
# first write also retries the other skipped mirror, so the target has it.
_FLAG_ON_OVER_SKIPPED_COPY = """
for first in ("register", "unregister"):
    flags.disable(FLAG)
    legacy, target = MemoryRegistry(), redis_registry()
    reg = MigratingRegistry(legacy, target, flags)
    a1, a2, b1 = agent(), agent(), agent()
    server.make_read_only()
    reg.register("a", a1, {"v": 1})
    reg.register("b", b1, {"v": 1})
    wait_for(lambda: target.status().state != "connected", "the target to report it")
    flags.enable(FLAG)                               # while Redis refuses: nothing retried
    server.make_writable()
    connected(target)
    if first == "register":
        first_write(lambda: reg.register("a", a2, {"v": 2}, replace=True))  # the target takes a2
        assert legacy.lookup("a").agent is a2, "the skipped copy survived a flag-on replace"
        # That write retried b's skipped mirror (once status() says connected:
        # it may flap as Redis becomes a master again), so the target has it.
        wait_for(lambda: reg.lookup("b") is not None, "b's skipped mirror to be retried")
        assert reg.unregister("b") is True
    else:
        assert first_write(lambda: reg.unregister("b")) is False  # the target never had it
        reg.register("a", a2, {"v": 2}, replace=True)
        assert legacy.lookup("a").agent is a2, "a retried copy survived a flag-on replace"
    assert legacy.lookup("b") is None, "an unregistered copy kept in the legacy store"
    settled(reg)
    assert reg.lookup("b") is None, "an unregistered key came back"
    flags.disable(FLAG)                              # flip back: nothing lost, nothing back
    assert {k: a for k, (a, _) in contents(reg).items()} == {"a": a2}
    reg.close()
print("OK")
"""

# Redis -> Memory, flag on (memory answers), the legacy Redis frozen. Writes
# never wait on it once it is known down (no call per write, per key), the
# operator gets one WARNING and one INFO, and once it is back readiness()
# brings the legacy side up to date: registered keys there, unregistered ones
# gone, metadata current, dead agents nowhere; a flip back shows the same.
_LEGACY_FROZEN = """
legacy, target = redis_registry(), MemoryRegistry()
flags.enable(FLAG)
reg = MigratingRegistry(legacy, target, flags)
agents = {i: agent() for i in range(12)}
agents[2] = spawn_thread(stop_dying.wait, name="agent-dying")
for i in range(6):
    reg.register(i, agents[i], {"n": 0})
threads_before = library_threads()
server.freeze()
reg.register(6, agents[6], {"n": 0})                 # the one call that meets the freeze
wait_for(lambda: legacy.status().state == "disconnected", "the legacy side to report it")
Counted.counting = True
errors_seen = []
def writer(keys):
    try:
        for i in keys:
            reg.register(i, agents[i], {"n": 0})
        for i in keys:
            reg.update_metadata(i, {"n": 1})
        reg.unregister(keys[0])
    except BaseException as exc:
        errors_seen.append(exc)
workers = [threading.Thread(target=writer, args=(ks,)) for ks in ([7, 8], [9, 10])]
for w in workers:
    w.start()
for w in workers:
    w.join(60)
reg.update_metadata(0, {"n": 1})
assert reg.unregister(1) is True
dying = agents.pop(2)
stop_dying.set()                                     # an agent dies during the outage
dying.join(10)
wait_for(lambda: target.lookup(2) is None, "the dead agent's entry to go")
reg.register(11, agents[11], {"n": 0})
assert reg.unregister(11) is True
listed = {d.key for d in reg.divergences()}         # no wait either: nothing is tried
assert {1, 6, 8, 10}.issubset(listed), listed        # 1: a stale copy the legacy still has
Counted.counting = False
assert not errors_seen, errors_seen
assert Counted.calls == 0, f"{Counted.calls} writes waited on the frozen legacy server"
server.thaw()
connected(legacy)
flags.disable(FLAG)                                  # an early flip back, before readiness()
assert reg.lookup(1) is None, "a key unregistered during the outage came back"
assert reg.lookup(0).metadata == {"n": 1}, "stale metadata after the flip back"
for i, n in ((6, 0), (8, 1), (10, 1)):               # registered during the outage: live
    wait_for(lambda: reg.lookup(i) is not None, f"key {i} after the flip back")
    assert reg.lookup(i).agent is agents[i] and reg.lookup(i).metadata == {"n": n}
flags.enable(FLAG)
assert reg.readiness() == [], reg.readiness()
want = {i: agents[i] for i in (0, 3, 4, 5, 6, 8, 10)}
assert {k: a for k, (a, _) in contents(target).items()} == want, contents(target)
wait_for(lambda: contents(legacy) == contents(target), "the legacy side to catch up")
assert contents(legacy)[0][1] == {"n": 1} and contents(legacy)[8][1] == {"n": 1}
flags.disable(FLAG)                                  # flip back: the same entries
assert {k: a for k, (a, _) in contents(reg).items()} == want
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
reg.close()
print("OK")
"""

# Redis -> Memory: a flag-on register whose legacy mirror Redis refused
# (read-only), then the flag is turned off before any readiness(). The first
# read after the flip retries the refused mirror (the old agent is live), and
# a registration of the key again on the legacy side replaces it there and in
# the target too, rather than leaving a divergence that outlives the old agent.
_FLIP_BACK_BEFORE_RETRY = """
legacy, target = redis_registry(), MemoryRegistry()
flags.enable(FLAG)
reg = MigratingRegistry(legacy, target, flags)
old, new = agent(), agent()
server.make_read_only()
reg.register("k", old, {"v": 1})                     # the target takes it; Redis refuses
assert [d.key for d in reg.divergences()] == ["k"], reg.divergences()
server.make_writable()
connected(legacy)
flags.disable(FLAG)                                  # back to Redis, which lacked "k"
# The first read retries the refused mirror (again after a flap: see settled()).
wait_for(lambda: reg.lookup("k") is not None, "the refused mirror to be retried")
assert reg.lookup("k").agent is old, "a live registration lost at the flip back"
reg.register("k", new, {"v": 2}, replace=True)
settled(reg)
assert contents(target) == contents(legacy) == {"k": (new, {"v": 2})}, contents(target)
reg.close()
print("OK")
"""

# Memory -> Redis, flag off, the Redis target frozen: registers whose mirrors
# are skipped. Redis comes back; a bare flags.enable() (no Migration, nobody
# calls readiness(), divergences() or finish()) is enough: the first lookup
# after the flip finds every skipped key, the target holds them all, and no
# divergence is left. The flip itself does no I/O (it may run in any thread).
_FLIP_RETRIES = """
legacy, target = MemoryRegistry(), redis_registry()
reg = MigratingRegistry(legacy, target, flags)
agents = {i: agent() for i in range(6)}
reg.register(0, agents[0], {"i": 0})                 # mirrored before the outage
threads_before = library_threads()
server.freeze()
for i in range(1, 6):                                # the first meets the freeze, the rest skip
    reg.register(i, agents[i], {"i": i})
wait_for(lambda: target.status().state != "connected", "the target to report the outage")
server.thaw()
connected(target)
flags.enable(FLAG)                                   # a bare flip: the target answers now
wait_for(lambda: reg.lookup(1) is not None, "a skipped key to be found")  # no readiness()
for i, a in agents.items():
    entry = reg.lookup(i)
    assert entry is not None and entry.agent is a, f"key {i} missing after the flip: {entry}"
    assert entry.metadata == {"i": i}, entry
assert {k: a for k, (a, _) in contents(target).items()} == agents, contents(target)
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
assert reg.readiness() == [], reg.readiness()
reg.close()
print("OK")
"""

# As above, but the flag is turned on while Redis is still frozen (the flip
# cannot retry: the target says it is down, and the flip waits on nothing).
# Once Redis is back, ONE ordinary flag-on write makes the target take the
# skipped registrations too: lookups find them, without readiness() and co.
_WRITE_RETRIES = """
legacy, target = MemoryRegistry(), redis_registry()
reg = MigratingRegistry(legacy, target, flags)
agents = {i: agent() for i in range(6)}
threads_before = library_threads()
server.freeze()
for i in range(5):
    reg.register(i, agents[i], {"i": i})
wait_for(lambda: target.status().state != "connected", "the target to report the outage")
Counted.counting = True
flags.enable(FLAG)                                   # while frozen: no retry, no wait
Counted.counting = False
assert Counted.calls == 0, f"the flip waited on the frozen server {Counted.calls} times"
server.thaw()
connected(target)
reg.register(5, agents[5], {"i": 5})                 # one ordinary write, flag on
wait_for(lambda: reg.lookup(0) is not None, "a skipped key to be found")  # no readiness()
for i, a in agents.items():
    entry = reg.lookup(i)
    assert entry is not None and entry.agent is a, f"key {i} missing after a write: {entry}"
assert {k: a for k, (a, _) in contents(target).items()} == agents, contents(target)
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
assert reg.readiness() == [], reg.readiness()
reg.close()
print("OK")
"""

# Redis -> Memory, flag on, the legacy Redis frozen: keys registered,
# updated and unregistered during the outage. Redis comes back and the flag
# is turned OFF directly (no Migration, nobody calls readiness(),
# divergences() or finish()): the first reads after the flip find every live
# key registered during the outage, with its current metadata, and no key
# unregistered during it comes back. The flip itself does no I/O.
_FLIP_BACK_RETRIES_LEGACY = """
legacy, target = redis_registry(), MemoryRegistry()
flags.enable(FLAG)
reg = MigratingRegistry(legacy, target, flags)
agents = {i: agent() for i in range(8)}
reg.register(0, agents[0], {"n": 0})                 # mirrored before the outage
reg.register(1, agents[1], {"n": 0})
threads_before = library_threads()
server.freeze()
reg.register(2, agents[2], {"n": 0})                 # the one call that meets the freeze
wait_for(lambda: legacy.status().state != "connected", "the legacy side to report it")
for i in range(3, 8):
    reg.register(i, agents[i], {"n": 0})
reg.update_metadata(0, {"n": 1})
reg.update_metadata(3, {"n": 1})
reg.update_metadata(4, {"n": 1})
assert reg.unregister(1) is True                     # registered before, gone during
assert reg.unregister(5) is True                     # registered and gone during
server.thaw()
connected(legacy)
Counted.counting = True
flags.disable(FLAG)                                  # a bare flip back: the legacy side answers
Counted.counting = False
assert Counted.calls == 0, f"the flip itself wrote to Redis {Counted.calls} times"
live = {i: agents[i] for i in (0, 2, 3, 4, 6, 7)}
want = {i: {"n": 1} if i in (0, 3, 4) else {"n": 0} for i in live}
def found():
    entries = {i: reg.lookup(i) for i in range(8)}
    return {i: (e.agent, dict(e.metadata)) for i, e in entries.items() if e is not None}
wait_for(lambda: reg.lookup(6) is not None, "a key registered during the outage")
assert found() == {i: (a, want[i]) for i, a in live.items()}, found()
assert contents(legacy) == {i: (a, want[i]) for i, a in live.items()}, contents(legacy)
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
assert reg.readiness() == [], reg.readiness()
reg.close()
print("OK")
"""

# Redis -> Memory, flag on, the legacy Redis frozen, twice. First outage: the
# flag stays on; once Redis is back, ONE ordinary flag-on write (whose legacy
# mirror succeeds) makes the legacy side take the registrations it missed,
# without readiness() and co. Second outage: the flag is turned off while
# Redis is still frozen: the flip and the reads meanwhile try nothing (no
# write reaches the frozen server); once it is back, lookups find the keys.
_LEGACY_WRITE_AND_EARLY_FLIP = """
legacy, target = redis_registry(), MemoryRegistry()
flags.enable(FLAG)
reg = MigratingRegistry(legacy, target, flags)
agents = {i: agent() for i in range(10)}
threads_before = library_threads()
server.freeze()
for i in range(4):                                   # the first meets the freeze
    reg.register(i, agents[i], {"i": i})
wait_for(lambda: legacy.status().state != "connected", "the legacy side to report it")
server.thaw()
connected(legacy)
reg.register(4, agents[4], {"i": 4})                 # one flag-on write, the flag stays on
want = {i: (agents[i], {"i": i}) for i in range(5)}
wait_for(lambda: contents(legacy) == want, "the legacy side to take the missed keys")
server.freeze()
reg.register(5, agents[5], {"i": 5})                 # meets the freeze
wait_for(lambda: legacy.status().state != "connected", "the legacy side to report it")
for i in range(6, 10):
    reg.register(i, agents[i], {"i": i})
Counted.counting = True
flags.disable(FLAG)                                  # flipped back while Redis is frozen
reg.lookup(0)                                        # answered from the legacy side
Counted.counting = False
assert Counted.calls == 0, f"{Counted.calls} writes waited on the frozen legacy server"
server.thaw()
connected(legacy)
wait_for(lambda: reg.lookup(9) is not None, "a key registered during the outage")
for i, a in agents.items():
    entry = reg.lookup(i)
    assert entry is not None and entry.agent is a and entry.metadata == {"i": i}, (i, entry)
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
assert reg.readiness() == [], reg.readiness()
reg.close()
print("OK")
"""


def _script(body: str) -> str:
    # The server is thawed and stopped whatever happens, so no frozen
    # redis-server outlives a failed scenario.
    main = _COMMON + body
    return (
        "from tests.redis_support import RedisServer\n"
        "stop, stop_dying = threading.Event(), threading.Event()\n"
        "server = RedisServer()\nserver.start()\ntry:\n"
        + textwrap.indent(main, "    ")
        + "\nfinally:\n    stop.set()\n    stop_dying.set()\n    server.stop()\n"
    )


def _warnings(stderr: str, needle: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if line.startswith("LOG WARNING foundation.registry ") and needle in line
    ]


def test_a_copy_against_a_frozen_redis_waits_once_and_is_retried_when_back() -> None:
    result = run_scenario(_script(_BACKFILL_FROZEN), timeout=120)
    assert len(_warnings(result.stderr, "mirroring to the target skipped")) == 1, result.stderr


def test_refused_register_update_and_unregister_mirrors_are_retried() -> None:
    run_scenario(_script(_MIRRORS_REFUSED), timeout=120)


def test_a_flag_on_write_over_a_skipped_legacy_copy_replaces_or_removes_it() -> None:
    run_scenario(_script(_FLAG_ON_OVER_SKIPPED_COPY), timeout=120)


def test_a_frozen_legacy_redis_costs_no_wait_per_write_and_catches_up() -> None:
    result = run_scenario(_script(_LEGACY_FROZEN), timeout=120)
    assert len(_warnings(result.stderr, "MigratingRegistry: legacy")) == 1, result.stderr
    assert "mirroring to the legacy backend resumed" in result.stderr, result.stderr


def test_a_legacy_write_after_a_flip_back_replaces_the_unmirrored_target_entry() -> None:
    run_scenario(_script(_FLIP_BACK_BEFORE_RETRY), timeout=120)


def test_a_bare_flip_after_the_outage_retries_the_skipped_mirrors() -> None:
    run_scenario(_script(_FLIP_RETRIES), timeout=120)


def test_one_flag_on_write_after_the_outage_retries_the_skipped_mirrors() -> None:
    run_scenario(_script(_WRITE_RETRIES), timeout=120)


def test_a_bare_flip_back_after_a_legacy_outage_finds_every_live_key() -> None:
    run_scenario(_script(_FLIP_BACK_RETRIES_LEGACY), timeout=120)


def test_a_legacy_write_or_a_flip_while_down_retries_once_redis_is_back() -> None:
    run_scenario(_script(_LEGACY_WRITE_AND_EARLY_FLIP), timeout=120)
