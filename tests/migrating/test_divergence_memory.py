"""MigratingRegistry: dead divergent copies do not pile up while the target is down.

With the flag off and the target unavailable, every flag-off register's
target mirror is skipped: a listed divergence (``view.divergent``) and a
kept retry (``view.retry``). Only ``_purge`` dropped the copies whose agent
died, and only ``divergences()`` (or the target coming back) ran it: a
program churning short-lived agents under fresh keys against a frozen Redis
target held every dead agent and its records (810 MB after 26 s at about
9,000 deaths a second). Now ``_diverge`` purges a view's dead copies once it
holds twice as many as its last purge left (at least ``PURGE_AT_LEAST``), so
the bookkeeping follows the live copies; every live one stays listed and is
retried once the target is back.

The in-process tests use real ``MemoryRegistry`` stores (the target's
``status()`` says ``disconnected``, as ``RedisRegistry.status()`` does in an
outage) and real agents (``concurrent.futures.Future``: dead once done). The
last test churns against a real frozen ``redis-server``, in a subprocess with
default hooks.
"""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from foundation import FeatureFlags, MemoryRegistry, MigratingRegistry, ThreadLocalRegistry
from foundation.registry import Registry
from foundation.registry._migrating_views import PURGE_AT_LEAST
from tests.faults._subprocess import run_scenario
from tests.migrating.support import FLAG, FLAGS, Switched

CHURN = 6 * PURGE_AT_LEAST  # dead agents: several purge rounds
KEEP_EVERY = 16  # every 16th agent stays alive: live divergences among the dead ones


@pytest.fixture(params=["shared", "per-thread"])
def legacy(request: pytest.FixtureRequest) -> Registry:
    return MemoryRegistry() if request.param == "shared" else ThreadLocalRegistry()


def _held(reg: MigratingRegistry) -> tuple[int, int]:
    """How many divergent copies and kept retries the facade holds (all views)."""
    views = reg._all_views()
    return sum(len(v.divergent) for v in views), sum(len(v.retry) for v in views)


def _bound(live: int) -> int:
    """What a view may hold: below twice what its last purge left (the live
    copies, and the one being booked), or ``PURGE_AT_LEAST``."""
    return max(PURGE_AT_LEAST, 2 * (live + 1))


def test_dead_copies_are_purged_without_a_divergences_call(legacy: Registry) -> None:
    flags = FeatureFlags(FLAGS)
    target = Switched()
    reg = MigratingRegistry(legacy, target, flags)
    live: dict[tuple[str, int], cf.Future[None]] = {}
    try:
        target.state = "disconnected"  # every target mirror is skipped: a divergence
        peak = (0, 0)
        for i in range(CHURN + CHURN // KEEP_EVERY):
            agent: cf.Future[None] = cf.Future()
            key = ("agent", i)
            reg.register(key, agent, {"i": i})  # its skipped mirror is booked by now
            if i % KEEP_EVERY == 0:
                live[key] = agent
            else:
                agent.set_result(None)  # dies: its copy is a dead divergence
            divergent, retry = _held(reg)
            peak = max(peak, (divergent, retry))
            assert divergent <= _bound(len(live)), (i, divergent, len(live))
            assert retry <= _bound(len(live)), (i, retry, len(live))
        assert peak[0] > len(live), "no dead copy was ever held: the test proves nothing"
        # Every live divergence is still listed, and only those.
        assert {d.key for d in reg.divergences()} == set(live)
        target.state = "connected"  # back: every live copy's kept retry lands
        assert reg.divergences() == []
        flags.enable(FLAG)
        for key, agent in live.items():
            entry = reg.lookup(key)
            assert entry is not None, key
            assert entry.agent is agent
            assert entry.metadata == {"i": key[1]}
    finally:
        for agent in live.values():
            agent.set_result(None)
        reg.close()


def test_live_copies_are_never_purged_however_many(legacy: Registry) -> None:
    """More live divergences than ``PURGE_AT_LEAST``: the threshold doubles
    with them, and a purge round drops none of them."""
    flags = FeatureFlags(FLAGS)
    target = Switched()
    reg = MigratingRegistry(legacy, target, flags)
    live: list[cf.Future[None]] = []
    try:
        target.state = "disconnected"
        for i in range(3 * PURGE_AT_LEAST):
            agent: cf.Future[None] = cf.Future()
            reg.register(("live", i), agent, {})
            live.append(agent)
        divergent, retry = _held(reg)
        assert divergent == retry == len(live)
        assert len(reg.divergences()) == len(live)
    finally:
        for agent in live:
            agent.set_result(None)
        reg.close()


def test_a_dead_replacer_s_retry_is_settled_by_the_purge_as_by_divergences(
    legacy: Registry,
) -> None:
    """A flag-off replace whose agent dies before its skipped mirror lands: the
    purge round turns its kept retry into the removal of the entry it replaced
    (``_dead_copy``), listed until the target is back, as ``divergences()`` does."""
    flags = FeatureFlags(FLAGS)
    target = Switched()
    reg = MigratingRegistry(legacy, target, flags)
    old: cf.Future[None] = cf.Future()
    new: cf.Future[None] = cf.Future()
    try:
        reg.register("k", old, {"v": 1})  # mirrored in both sides
        target.state = "disconnected"
        reg.register("k", new, {"v": 2}, replace=True)  # its target mirror skipped
        new.set_result(None)  # dies before the retry
        for i in range(2 * PURGE_AT_LEAST):  # dead churn: purge rounds, no divergences()
            agent: cf.Future[None] = cf.Future()
            reg.register(("agent", i), agent, {})
            agent.set_result(None)
        (view,) = [v for v in reg._all_views() if "k" in v.divergent]
        held = view.divergent["k"]
        assert held.agent is old, held
        assert "died" in held.divergence.reason
        assert view.retry["k"][0] is old  # the removal of the entry the target kept
        assert [d.key for d in reg.divergences()] == ["k"]
        entry = target.lookup("k")
        assert entry is not None
        assert entry.agent is old
        target.state = "connected"
        assert reg.divergences() == []  # the removal was retried
        assert target.lookup("k") is None
        flags.enable(FLAG)
        assert reg.lookup("k") is None, "the replaced registration came back"
    finally:
        old.set_result(None)
        reg.close()


_FROZEN_CHURN = """
import concurrent.futures as cf, uuid
from foundation import FeatureFlags, Flag, MemoryRegistry, MigratingRegistry, RedisRegistry
from foundation.registry._migrating_views import PURGE_AT_LEAST

flags = FeatureFlags([Flag("use_ets_agent_registry")])
target = RedisRegistry(server.url, namespace=f"dm-{uuid.uuid4().hex[:8]}", op_timeout=0.5)
reg = MigratingRegistry(MemoryRegistry(), target, flags)
threads_before = library_threads()
server.freeze()                         # SIGSTOP: the first mirror waits op_timeout
first = cf.Future()
reg.register("first", first, {})
wait_for(lambda: target.status().state != "connected", "the target to report the outage")
live = {"first": first}
errors = []
N = 4 * PURGE_AT_LEAST

def churn(w):
    # Short-lived agents under fresh keys; every 64th stays alive.
    try:
        for i in range(N):
            agent = cf.Future()
            reg.register((w, i), agent, {"i": i})
            if i % 64 == 0:
                live[(w, i)] = agent
            else:
                agent.set_result(None)
    except BaseException as exc:
        errors.append(exc)

writers = [threading.Thread(target=churn, args=(w,), name=f"churn-{w}") for w in range(3)]
for t in writers:
    t.start()
for t in writers:
    t.join(60)
    assert not t.is_alive()
assert not errors, errors
view = reg._shared_view
# No divergences() call so far: the dead copies were purged on the way.
assert len(view.divergent) <= max(PURGE_AT_LEAST, 2 * (len(live) + 1)), len(view.divergent)
assert len(view.retry) <= max(PURGE_AT_LEAST, 2 * (len(live) + 1)), len(view.retry)
assert {d.key for d in reg.divergences()} == set(live)
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
server.thaw()
wait_for(lambda: target.status().state == "connected", "the target to recover")
assert reg.divergences() == [], reg.divergences()
flags.enable("use_ets_agent_registry")
for key, agent in live.items():
    assert reg.lookup(key).agent is agent, key
for agent in live.values():
    agent.set_result(None)
reg.close()
print("OK")
"""


def test_churn_against_a_frozen_redis_target_keeps_only_live_copies() -> None:
    script = (
        "from tests.redis_support import RedisServer\n"
        "server = RedisServer()\nserver.start()\ntry:\n"
        + "".join(f"    {line}\n" if line else "\n" for line in _FROZEN_CHURN.splitlines())
        + "finally:\n    server.thaw()\n    server.stop()\n"
    )
    run_scenario(script, timeout=120)
