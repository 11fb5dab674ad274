"""MigratingRegistry over a shared legacy side: the facade's own copies across a
target outage and flips.

A key mirrored in both sides is replaced with the flag off while the target is
unavailable: its target mirror is skipped (a listed divergence, to be
retried) and the target keeps the old mirror. The flag is turned on and the
first write of that key goes to the target before the retry (its
``status()`` still says down while it takes writes: a Redis node
recovering). The legacy copy that write replaces is the skipped one, the
facade's own: it was seen as "another registration" (a false divergence),
the next unregister of the key dropped that divergence, and the stale copy
came back at the next flip, unlisted, on one side or the other (a Redis
target restarting empty showed it as "the target holds ... for another
registration", which blocked ``finish()``). A flag-on update made first
after the flip, the target available, changed the older entry the target
kept, and the retry then put the skipped copy's old metadata back: it now
waits for the retry, as a read does. Likewise, the target entry of a
flag-on register whose legacy mirror met a foreign copy is the facade's
own: a flag-off replace or unregister of the key reaches it.

The in-process tests use real ``MemoryRegistry`` stores; the target reports a
``status()`` the test switches, as ``RedisRegistry.status()`` does in an
outage (the write itself may still succeed while the node recovers). The
last test runs the same ordering against a real ``redis-server`` made
read-only, in a subprocess with default hooks.
"""

from __future__ import annotations

import pytest

from foundation import FeatureFlags, MemoryRegistry, MigratingRegistry
from foundation.errors import BackendUnavailable, NotRegistered
from tests.faults._subprocess import run_scenario
from tests.migrating.support import FLAG, FLAGS, Agents, Switched
from tests.migrating.test_redis_faults import _script


def _skipped_replace_then_flag_on_register(
    agents: Agents,
) -> tuple[MigratingRegistry, FeatureFlags, MemoryRegistry, Switched]:
    """Both sides hold the final copy of "k" the way the facade wrote it, and
    ``divergences()`` is empty (asserted)."""
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    legacy, target = MemoryRegistry(), Switched()
    reg = MigratingRegistry(legacy, target, flags)
    reg.register("k", agents.new(), {"v": 1})  # mirrored in both sides
    flags.disable(FLAG)
    target.state = "disconnected"
    reg.register("k", agents.new(), {"v": 2}, replace=True)  # its target mirror skipped
    flags.enable(FLAG)
    newest = agents.new()
    # Taken while status() still says down (a Redis node recovering): before
    # the skipped mirror's retry, which nothing tries while it says so.
    reg.register("k", newest, {"v": 3}, replace=True)
    target.state = "connected"
    entry = legacy.lookup("k")
    assert entry is not None
    assert entry.agent is newest, f"legacy kept {entry}"
    assert reg.divergences() == [], "a false divergence over the facade's own copy"
    return reg, flags, legacy, target


def test_a_flag_on_unregister_after_it_leaves_no_copy_to_come_back(agents: Agents) -> None:
    reg, flags, legacy, target = _skipped_replace_then_flag_on_register(agents)
    try:
        assert reg.unregister("k") is True
        assert reg.divergences() == []
        flags.disable(FLAG)
        assert reg.lookup("k") is None, "an unregistered key came back at the flip"
        assert legacy.lookup("k") is None
        assert target.lookup("k") is None
    finally:
        reg.close()


def test_flag_off_writes_after_it_reach_the_target(agents: Agents) -> None:
    reg, flags, _legacy, target = _skipped_replace_then_flag_on_register(agents)
    try:
        flags.disable(FLAG)
        newest = agents.new()
        reg.register("k", newest, {"v": 4}, replace=True)
        assert reg.divergences() == [], "the facade's own target entry seen as another's"
        entry = target.lookup("k")
        assert entry is not None
        assert entry.agent is newest, f"target kept {entry}"
        assert reg.unregister("k") is True
        assert reg.divergences() == []
        flags.enable(FLAG)
        assert reg.lookup("k") is None, "an unregistered key came back at the flip"
        reg.finish()
    finally:
        reg.close()


@pytest.mark.parametrize("state", ["connected", "disconnected"])
def test_a_flag_on_update_right_after_the_flip_is_not_lost(state: str, agents: Agents) -> None:
    """``state``: what the target's ``status()`` says as it takes the update
    (``disconnected``: a Redis node recovering, so the retry cannot run first)."""
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    legacy, target = MemoryRegistry(), Switched()
    reg = MigratingRegistry(legacy, target, flags)
    try:
        reg.register("k", agents.new(), {"v": 1})  # mirrored in both sides
        flags.disable(FLAG)
        target.state = "disconnected"
        newest = agents.new()
        reg.register("k", newest, {"v": 2}, replace=True)  # its target mirror skipped
        target.state = state
        flags.enable(FLAG)  # asks for the retry; the update below is the first call
        reg.update_metadata("k", {"v": 3})
        target.state = "connected"
        for side in (reg, target, legacy):
            entry = side.lookup("k")
            assert entry is not None
            assert entry.agent is newest, (side, entry)
            assert entry.metadata == {"v": 3}, f"an acknowledged update lost: {side} {entry}"
        assert reg.divergences() == []
    finally:
        reg.close()


def test_a_flag_on_update_after_the_flip_finds_a_key_the_target_never_took(
    agents: Agents,
) -> None:
    """Registered with the flag off while the target was down (never mirrored):
    once it is back, the first flag-on update applies the retry first, as a
    lookup would, and updates that registration."""
    flags = FeatureFlags(FLAGS)
    legacy, target = MemoryRegistry(), Switched()
    reg = MigratingRegistry(legacy, target, flags)
    try:
        target.state = "disconnected"
        agent = agents.new()
        reg.register("k", agent, {"v": 1})  # its target mirror skipped
        target.state = "connected"
        flags.enable(FLAG)
        reg.update_metadata("k", {"v": 2})  # not NotRegistered
        for side in (reg, target, legacy):
            entry = side.lookup("k")
            assert entry is not None, side
            assert entry.agent is agent, (side, entry)
            assert entry.metadata == {"v": 2}, (side, entry)
        assert reg.divergences() == []
    finally:
        reg.close()


@pytest.mark.parametrize("state", ["connected", "disconnected"])
def test_a_flag_on_update_after_the_flip_of_an_unregistered_key_is_refused(
    state: str, agents: Agents
) -> None:
    """The target kept the entry (its removal skipped): the update is
    ``NotRegistered``, as a lookup once the removal is retried says; while the
    target still says it is down (a lookup answers the entry),
    ``BackendUnavailable``."""
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    legacy, target = MemoryRegistry(), Switched()
    reg = MigratingRegistry(legacy, target, flags)
    try:
        reg.register("k", agents.new(), {"v": 1})  # mirrored in both sides
        flags.disable(FLAG)
        target.state = "disconnected"
        assert reg.unregister("k") is True  # its target mirror skipped
        target.state = state
        flags.enable(FLAG)
        with pytest.raises(NotRegistered if state == "connected" else BackendUnavailable):
            reg.update_metadata("k", {"v": 3})
        target.state = "connected"
        assert reg.divergences() == []
        for side in (reg, target, legacy):
            assert side.lookup("k") is None, side
    finally:
        reg.close()


@pytest.mark.parametrize("replace_first", [True, False], ids=["replace", "unregister"])
def test_a_target_entry_whose_mirror_met_a_foreign_copy_is_the_facades_own(
    replace_first: bool, agents: Agents
) -> None:
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    legacy, target = MemoryRegistry(), MemoryRegistry()
    reg = MigratingRegistry(legacy, target, flags)
    try:
        legacy.register("k", agents.new(), {"v": "another writer"})  # not through the facade
        reg.register("k", agents.new(), {"v": 1})
        reasons = [d.reason for d in reg.divergences()]
        assert len(reasons) == 1, reasons
        assert "legacy backend holds" in reasons[0], reasons
        flags.disable(FLAG)
        if replace_first:
            newest = agents.new()
            reg.register("k", newest, {"v": 2}, replace=True)  # replaces the foreign copy
            entry = target.lookup("k")
            assert entry is not None
            assert entry.agent is newest, f"target kept {entry}"
            assert reg.divergences() == []
        assert reg.unregister("k") is True
        assert reg.divergences() == []
        flags.enable(FLAG)
        assert reg.lookup("k") is None, "an unregistered key came back at the flip"
    finally:
        reg.close()


# The same ordering against a real Redis target made read-only (it keeps the
# old mirror, as a node re-asserts it after a restart), then writable again.
_SKIPPED_REPLACE_THEN_FLIP = """
for follow_up in ("flag-on unregister", "flag-off replace and unregister"):
    flags.disable(FLAG)
    legacy, target = MemoryRegistry(), redis_registry()
    reg = MigratingRegistry(legacy, target, flags)
    reg.register("k", agent(), {"v": 1})             # mirrored in both sides
    server.make_read_only()
    reg.register("k", agent(), {"v": 2}, replace=True)   # its mirror refused: the target keeps v1
    wait_for(lambda: target.status().state != "connected", "the target to report it")
    server.make_writable()
    connected(target)
    flags.enable(FLAG)
    newest = agent()
    first_write(lambda: reg.register("k", newest, {"v": 3}, replace=True))
    assert legacy.lookup("k").agent is newest, "the skipped copy survived a flag-on replace"
    settled(reg)                                     # no false divergence left
    if follow_up == "flag-on unregister":
        assert reg.unregister("k") is True
        flags.disable(FLAG)
    else:
        flags.disable(FLAG)
        reg.register("k", agent(), {"v": 4}, replace=True)
        settled(reg)
        assert reg.unregister("k") is True
        flags.enable(FLAG)
    settled(reg)
    assert reg.lookup("k") is None, "an unregistered key came back at the flip"
    assert legacy.lookup("k") is None and target.lookup("k") is None
    flags.enable(FLAG)
    reg.finish()
    reg.close()
print("OK")
"""


def test_a_redis_target_keeping_an_old_mirror_loses_track_of_nothing() -> None:
    run_scenario(_script(_SKIPPED_REPLACE_THEN_FLIP), timeout=120)
