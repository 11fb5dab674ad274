"""MigratingRegistry over a shared legacy side: a flag-on write whose legacy
mirror is deferred, then a flag-off write of the same key before the retry.

The mirror of rule 7 of ``test_skipped_copy_flip``: a key mirrored in both
sides is replaced with the flag on while the legacy side is unavailable; its
legacy mirror is deferred (a listed divergence, to be retried) and the legacy
side keeps the older copy. The flag is turned off and the first write of
that key goes to the legacy side before the retry (its ``status()`` still
says down while it takes writes: a Redis node recovering). A flag-off update
changed the older copy, and the retry then registered the target's old
metadata over it: an acknowledged update lost, listed nowhere. A flag-off
unregister removed the older copy, and the retry (run before the target's
removal was applied, or while the target refused it) brought the key back.
Likewise, a flag-off update of a copy whose catch-up (a flag-on update the
unavailable legacy side missed) was still to run had its metadata put back
by that catch-up, and one of a copy whose removal (a flag-on unregister)
was still to run was acknowledged, then dropped with the copy.

The in-process tests use real ``MemoryRegistry`` stores; a side reports a
``status()`` the test switches, as ``RedisRegistry.status()`` does in an
outage (the write itself may still succeed while the node recovers). The
last test runs the same ordering against a real ``redis-server`` legacy
side that is killed and restarted (a node recovering reports itself down
for a while), in a subprocess with default hooks.
"""

from __future__ import annotations

from typing import Any

import pytest

from foundation import FeatureFlags, MemoryRegistry, MigratingRegistry
from foundation.errors import BackendUnavailable, NotRegistered
from tests.faults._subprocess import run_scenario
from tests.migrating.support import FLAG, FLAGS, Agents
from tests.migrating.test_redis_faults import _script
from tests.migrating.test_skipped_copy_flip import Switched


def _deferred_replace(
    agents: Agents, target: MemoryRegistry
) -> tuple[MigratingRegistry, FeatureFlags, Switched, object, object]:
    """A key mirrored in both sides, replaced with the flag on while the legacy
    side says it is down (its mirror deferred, the legacy side keeping the
    older copy); then the flag is turned off while it still says so."""
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    legacy = Switched()
    reg = MigratingRegistry(legacy, target, flags)
    older, newest = agents.new(), agents.new()
    reg.register("k", older, {"v": 1})  # mirrored in both sides
    legacy.state = "disconnected"
    reg.register("k", newest, {"v": 2}, replace=True)  # its legacy mirror deferred
    assert [d.key for d in reg.divergences()] == ["k"], reg.divergences()
    entry = legacy.lookup("k")
    assert entry is not None
    assert entry.agent is older, entry
    flags.disable(FLAG)  # asks for the retry; nothing is tried while it says down
    return reg, flags, legacy, older, newest


@pytest.mark.parametrize("state", ["connected", "disconnected"])
def test_a_flag_off_update_before_the_deferred_register_is_not_lost(
    state: str, agents: Agents
) -> None:
    """``state``: what the target's ``status()`` says meanwhile (``disconnected``:
    the update's target mirror is kept for retry too)."""
    target = Switched()
    reg, flags, legacy, _older, newest = _deferred_replace(agents, target)
    try:
        target.state = state
        # Taken while the legacy side's status() still says down: before the
        # deferred register, which nothing tries while it says so.
        reg.update_metadata("k", {"v": 3})
        legacy.state = target.state = "connected"
        assert reg.divergences() == []
        for side in (reg, legacy, target):
            entry = side.lookup("k")
            assert entry is not None, side
            assert entry.agent is newest, (side, entry)
            assert entry.metadata == {"v": 3}, f"an acknowledged update lost: {side} {entry}"
        flags.enable(FLAG)
        reg.finish()
    finally:
        reg.close()


@pytest.mark.parametrize("state", ["connected", "disconnected"])
def test_a_flag_off_unregister_before_the_deferred_register_leaves_nothing_to_come_back(
    state: str, agents: Agents
) -> None:
    """``state``: as above (``disconnected``: the target keeps the entry until
    its removal is retried, and the deferred register must not run meanwhile)."""
    target = Switched()
    reg, flags, legacy, _older, _newest = _deferred_replace(agents, target)
    try:
        target.state = state
        assert reg.unregister("k") is True
        legacy.state = "connected"
        reg.divergences()  # the legacy retries run (the target's only once it is back)
        assert legacy.lookup("k") is None, "an unregistered key came back on the legacy side"
        target.state = "connected"
        assert reg.divergences() == []
        for side in (reg, legacy, target):
            assert side.lookup("k") is None, f"an unregistered key came back: {side}"
        flags.enable(FLAG)
        assert reg.lookup("k") is None, "an unregistered key came back at the flip"
        reg.finish()
    finally:
        reg.close()


class RecoversAtRegister(Switched):
    """``Switched`` whose ``status()`` says connected once a register is taken
    (the node reports itself back while the write is in flight)."""

    def register(self, *args: Any, **kwargs: Any) -> None:
        super().register(*args, **kwargs)
        self.state = "connected"


def test_a_flag_off_register_before_the_deferred_register_is_no_divergence(
    agents: Agents,
) -> None:
    """The pass that follows the flag-off register (the legacy side now says
    connected) must not apply the superseded register: it met the new copy
    as "another registration", a false divergence (WARNING, telemetry)."""
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    legacy, target = RecoversAtRegister(), MemoryRegistry()
    reg = MigratingRegistry(legacy, target, flags)
    try:
        reg.register("k", agents.new(), {"v": 1})  # mirrored in both sides
        legacy.state = "disconnected"
        reg.register("k", agents.new(), {"v": 2}, replace=True)  # its legacy mirror deferred
        flags.disable(FLAG)
        detected = reg.divergence_count()
        newest = agents.new()
        reg.register("k", newest, {"v": 3}, replace=True)
        assert reg.divergence_count() == detected, "a false divergence was booked"
        assert reg.divergences() == []
        for side in (reg, legacy, target):
            entry = side.lookup("k")
            assert entry is not None, side
            assert entry.agent is newest, (side, entry)
    finally:
        reg.close()


def test_a_flag_off_update_of_a_copy_the_legacy_side_holds_already(agents: Agents) -> None:
    """The legacy side holds the deferred register's agent itself (an older
    copy of it, with older metadata): the update changes it, and the retry
    does not put the target's older metadata back."""
    flags = FeatureFlags(FLAGS)
    legacy, target = Switched(), MemoryRegistry()
    reg = MigratingRegistry(legacy, target, flags)
    try:
        agent = agents.new()
        legacy.register("k", agent, {"v": 0})  # left there by an earlier owner
        flags.enable(FLAG)
        legacy.state = "disconnected"
        reg.register("k", agent, {"v": 1})  # the target takes it; its mirror deferred
        flags.disable(FLAG)
        reg.update_metadata("k", {"v": 2})
        legacy.state = "connected"
        reg.divergences()
        for side in (reg, legacy, target):
            entry = side.lookup("k")
            assert entry is not None, side
            assert entry.agent is agent, (side, entry)
            assert entry.metadata == {"v": 2}, f"an acknowledged update lost: {side} {entry}"
    finally:
        reg.close()


def test_a_flag_off_update_with_no_legacy_copy_is_refused_and_the_register_lands(
    agents: Agents,
) -> None:
    """The legacy side holds no copy: the update is ``NotRegistered`` (the
    legacy side's answer, as a lookup says while it is down), and the
    deferred register still lands once it is back."""
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    legacy, target = Switched(), MemoryRegistry()
    reg = MigratingRegistry(legacy, target, flags)
    try:
        legacy.state = "disconnected"
        agent = agents.new()
        reg.register("k", agent, {"v": 1})  # its legacy mirror deferred
        flags.disable(FLAG)
        with pytest.raises(NotRegistered):
            reg.update_metadata("k", {"v": 2})
        legacy.state = "connected"
        assert reg.divergences() == []
        for side in (reg, legacy, target):
            entry = side.lookup("k")
            assert entry is not None, side
            assert entry.agent is agent, (side, entry)
            assert entry.metadata == {"v": 1}, (side, entry)
    finally:
        reg.close()


def test_a_flag_off_update_before_a_deferred_catch_up_is_not_lost(agents: Agents) -> None:
    """A flag-on update the unavailable legacy side missed (its catch-up still
    to run), then a flag-off update while the target is down too (its target
    mirror kept for retry): the catch-up must not copy the target's older
    metadata over the newer update."""
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    legacy, target = Switched(), Switched()
    reg = MigratingRegistry(legacy, target, flags)
    try:
        agent = agents.new()
        reg.register("k", agent, {"v": 1})  # mirrored in both sides
        legacy.state = "disconnected"
        reg.update_metadata("k", {"v": 2})  # the legacy copy's catch-up deferred
        flags.disable(FLAG)
        target.state = "disconnected"
        reg.update_metadata("k", {"v": 3})  # its target mirror kept for retry
        legacy.state = "connected"
        reg.divergences()  # the legacy catch-up runs; the target still says down
        entry = legacy.lookup("k")
        assert entry is not None
        assert entry.metadata == {"v": 3}, f"an acknowledged update lost: {entry}"
        target.state = "connected"
        assert reg.divergences() == []
        for side in (reg, legacy, target):
            entry = side.lookup("k")
            assert entry is not None, side
            assert entry.agent is agent, (side, entry)
            assert entry.metadata == {"v": 3}, f"an acknowledged update lost: {side} {entry}"
    finally:
        reg.close()


def test_a_flag_off_update_of_a_copy_whose_removal_is_due_is_refused(agents: Agents) -> None:
    """Unregistered with the flag on while the legacy side was down (the
    removal of its copy left to a pass): a flag-off update before that pass
    is ``NotRegistered``, as a lookup once the copy is removed says, not an
    acknowledged update that the removal then drops; while the legacy side
    still says it is down (a lookup answers the copy), ``BackendUnavailable``."""
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    legacy, target = Switched(), MemoryRegistry()
    reg = MigratingRegistry(legacy, target, flags)
    try:
        reg.register("k", agents.new(), {"v": 1})  # mirrored in both sides
        legacy.state = "disconnected"
        assert reg.unregister("k") is True  # the legacy copy's removal deferred
        flags.disable(FLAG)
        with pytest.raises(BackendUnavailable):
            reg.update_metadata("k", {"v": 2})
        legacy.state = "connected"
        with pytest.raises(NotRegistered):
            reg.update_metadata("k", {"v": 2})
        assert reg.divergences() == []
        for side in (reg, legacy, target):
            assert side.lookup("k") is None, side
    finally:
        reg.close()


# The same ordering against a real Redis legacy side, killed and restarted:
# a node that lost its connection reports itself down for a while after the
# server is back, and a flag-off write taken then reaches it before the
# deferred register (nothing is tried while status() says down).
_DEFERRED_THEN_FLAG_OFF = """
import dataclasses

class Recovering(RedisRegistry):
    # The real RedisRegistry whose status() still says down (a node that has
    # not reported yet that it is back) until `recovered` is set.
    recovered = True
    def status(self):
        st = super().status()
        return st if self.recovered else dataclasses.replace(st, state="disconnected")

for follow_up in ("update", "unregister"):
    legacy = Recovering(server.url, namespace=f"mf-{uuid.uuid4().hex[:8]}", op_timeout=0.5,
                        lease_ttl=5.0)
    target = MemoryRegistry()
    flags.enable(FLAG)
    reg = MigratingRegistry(legacy, target, flags)
    older, newest = agent(), agent()
    reg.register("k", older, {"v": 1})
    settled(reg)                                     # mirrored in both sides
    server.kill()
    wait_for(lambda: legacy.status().state != "connected", "the legacy side to report it")
    reg.register("k", newest, {"v": 2}, replace=True)   # its legacy mirror deferred
    assert [d.key for d in reg.divergences()] == ["k"], reg.divergences()
    Recovering.recovered = False
    server.start()
    wait_for(lambda: RedisRegistry.status(legacy).state == "connected", "the node to be back")
    flags.disable(FLAG)
    if follow_up == "update":
        first_write(lambda: reg.update_metadata("k", {"v": 3}))
    else:
        assert first_write(lambda: reg.unregister("k")) is True
    Recovering.recovered = True
    connected(legacy)
    settled(reg)
    if follow_up == "update":
        want = {"k": (newest, {"v": 3})}
    else:
        want = {}
    assert contents(reg) == want, f"{follow_up}: {contents(reg)}"
    assert contents(legacy) == contents(target) == want, (contents(legacy), contents(target))
    flags.enable(FLAG)
    reg.finish()
    reg.close()
print("OK")
"""


def test_a_redis_legacy_recovering_loses_no_flag_off_write_before_the_retry() -> None:
    run_scenario(_script(_DEFERRED_THEN_FLAG_OFF), timeout=120)
