"""MigratingRegistry: a flag-off replace whose agent dies before its target
mirror lands must not bring the replaced registration back at a flip.

With the flag off, ``register(k, new, replace=True)`` replaces ``old`` on the
legacy side; its target mirror is skipped while the target says it is down
(kept for a retry), or is in flight. If ``new`` dies before that mirror
lands, there is nothing to register, but the target still holds ``old``,
which the legacy side no longer has: the retry was dropped, and after
``flags.enable(...)`` ``lookup(k)`` returned ``old`` with ``divergences() ==
[]`` (a replaced registration back, unlisted). Now the target entry the dead
copy superseded is removed (only while the target still holds that agent),
and listed as a divergence until then.

Real ``MemoryRegistry`` stores; the target's ``status()`` is switched by the
test (as ``RedisRegistry.status()`` in an outage), and one target holds its
register calls on an event so an agent can die while its mirror is in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping
from typing import Any

import pytest

from foundation import (
    FeatureFlags,
    MemoryRegistry,
    MigratingRegistry,
    ThreadLocalRegistry,
    spawn_thread,
)
from foundation.errors import BackendUnavailable, NotRegistered
from foundation.registry import Registry
from tests.migrating.support import FLAG, FLAGS, Agents, Switched, wait_until


class Gated(Switched):
    """``Switched`` whose ``register`` of an armed agent waits for ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.armed: Any = None
        self.entered = threading.Event()
        self.release = threading.Event()

    def register(
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        if agent is self.armed:
            self.entered.set()
            assert self.release.wait(30)
        super().register(key, agent, metadata, replace=replace)


@pytest.fixture(params=["shared", "per-thread"])
def legacy(request: pytest.FixtureRequest) -> Registry:
    return MemoryRegistry() if request.param == "shared" else ThreadLocalRegistry()


def _mirrored_then_skipped_replace(
    agents: Agents, legacy: Registry, target: Switched
) -> tuple[MigratingRegistry, FeatureFlags, Any, Any]:
    """``old`` mirrored on both sides; then, flag off and the target down,
    ``new`` replaces it (its target mirror skipped, a listed divergence)."""
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    reg = MigratingRegistry(legacy, target, flags)
    old = agents.new()
    reg.register("k", old, {"v": 1})
    flags.disable(FLAG)
    target.state = "disconnected"
    new = agents.new()
    reg.register("k", new, {"v": 2}, replace=True)  # its target mirror skipped
    assert [d.key for d in reg.divergences()] == ["k"]
    return reg, flags, old, new


def _kill(agents: Agents, legacy: Registry, agent: Any) -> None:
    agents.kill(agent)
    assert wait_until(lambda: legacy.lookup("k") is None), "the legacy copy outlived its agent"


def test_the_replaced_registration_does_not_come_back_at_a_flip(
    agents: Agents, legacy: Registry
) -> None:
    target = Switched()
    reg, flags, old, new = _mirrored_then_skipped_replace(agents, legacy, target)
    try:
        _kill(agents, legacy, new)  # before the retry
        target.state = "connected"
        flags.enable(FLAG)
        assert reg.lookup("k") is None, "the replaced registration came back"
        assert target.lookup("k") is None
        assert old.is_alive()
        assert reg.divergences() == []
        reg.finish()
    finally:
        reg.close()


def test_while_the_target_is_down_the_stale_entry_is_listed(
    agents: Agents, legacy: Registry
) -> None:
    target = Switched()
    reg, flags, old, new = _mirrored_then_skipped_replace(agents, legacy, target)
    try:
        _kill(agents, legacy, new)
        # Still down: nothing is tried, but the target's stale entry is listed
        # (readiness() and finish() see it).
        found = reg.divergences()
        assert [d.key for d in found] == ["k"], found
        assert "died" in found[0].reason
        assert reg.readiness() != []
        entry = target.lookup("k")
        assert entry is not None
        assert entry.agent is old
        target.state = "connected"
        assert reg.divergences() == []  # the removal was retried
        assert target.lookup("k") is None
        flags.enable(FLAG)
        assert reg.lookup("k") is None
    finally:
        reg.close()


def test_another_registration_in_the_target_is_never_removed(
    agents: Agents, legacy: Registry
) -> None:
    target = Switched()
    reg, flags, old, new = _mirrored_then_skipped_replace(agents, legacy, target)
    try:
        _kill(agents, legacy, new)
        other = agents.new()
        target.register("k", other, {"v": "other"}, replace=True)  # not the facade's
        target.state = "connected"
        flags.enable(FLAG)
        entry = reg.lookup("k")
        assert entry is not None
        assert entry.agent is other, entry
        assert old.is_alive()
    finally:
        reg.close()


def test_an_agent_dying_while_its_mirror_is_in_flight(agents: Agents) -> None:
    legacy, target = MemoryRegistry(), Gated()
    flags = FeatureFlags(FLAGS)
    reg = MigratingRegistry(legacy, target, flags)
    old = agents.new()
    reg.register("k", old, {"v": 1})  # flag off: mirrored by the writer's pump
    assert target.lookup("k") is not None
    new = agents.new()
    target.armed = new
    errors: list[BaseException] = []

    def replace() -> None:
        try:
            reg.register("k", new, {"v": 2}, replace=True)  # its pump meets the gate
        except BaseException as exc:  # reported below
            errors.append(exc)

    writer = spawn_thread(replace, name="dead-replacer-writer")
    try:
        assert target.entered.wait(30)
        _kill(agents, legacy, new)  # dies while its target mirror is in flight
        target.release.set()
        writer.join(30)
        assert not writer.is_alive()
        assert errors == []
        flags.enable(FLAG)
        assert reg.lookup("k") is None, "the replaced registration came back"
        assert target.lookup("k") is None
        assert reg.divergences() == []
    finally:
        target.release.set()
        writer.join(30)
        reg.close()


def test_a_flag_on_update_before_the_retry_is_not_registered(
    agents: Agents, legacy: Registry
) -> None:
    target = Switched()
    reg, flags, _old, new = _mirrored_then_skipped_replace(agents, legacy, target)
    try:
        _kill(agents, legacy, new)
        flags.enable(FLAG)
        # status() still says down while the target takes writes (a Redis node
        # recovering): the update must not change the replaced registration;
        # nothing definitive until the target says it is back (a lookup still
        # answers the entry meanwhile).
        with pytest.raises(BackendUnavailable):
            reg.update_metadata("k", {"v": 3})
        entry = target.lookup("k")
        assert entry is not None
        assert entry.metadata == {"v": 1}
        target.state = "connected"
        assert reg.lookup("k") is None
        with pytest.raises(NotRegistered):
            reg.update_metadata("k", {"v": 3})
        assert reg.divergences() == []
    finally:
        reg.close()
