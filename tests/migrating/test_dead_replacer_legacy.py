"""A flag-on replace whose deferred legacy mirror (rule 7) never lands because
its agent dies: the facade's own replaced legacy copy must not stay behind.

The legacy-side twin of tests/migrating/test_dead_replacer.py. Both sides are
real ``MemoryRegistry`` stores whose ``status()`` the test switches
(``Switched``); the legacy side is shared, so its mirrors are deferred.
"""

from __future__ import annotations

from typing import Any

import pytest

from foundation import FeatureFlags, MigratingRegistry
from foundation.errors import BackendUnavailable
from tests.migrating.support import FLAG, FLAGS, Agents, wait_until
from tests.migrating.test_skipped_copy_flip import Switched


def _end(agents: Agents, agent: Any, *stores: Switched) -> None:
    """End ``agent`` and wait (with a deadline) until every store dropped it."""
    agents.kill(agent)
    assert wait_until(lambda: all(e.agent is not agent for s in stores for e in s.query([])))


@pytest.mark.parametrize("c_ends", [False, True], ids=["c-alive", "c-ends"])
def test_replaced_copy_is_removed_when_the_deferred_mirror_agent_dies(c_ends: bool) -> None:
    agents = Agents()
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    legacy, target = Switched(), Switched()  # the target stays "connected"
    reg = MigratingRegistry(legacy, target, flags)
    try:
        a, b, c = agents.new(), agents.new(), agents.new()
        reg.register("k", a, {"v": 0})  # mirrored in both sides
        legacy.state = "disconnected"
        reg.register("k", b, {"v": 1}, replace=True)  # its legacy mirror is deferred
        legacy.state = "connected"  # back, nothing retried yet
        _end(agents, b, legacy, target)
        reg.register("k", c, {"v": 2})  # the key is free
        if c_ends:
            _end(agents, c, legacy, target)
        assert reg.readiness() == []
        assert reg.divergences() == []  # a is the facade's own replaced copy
        flags.disable(FLAG)
        seen = reg.lookup("k")
        if c_ends:
            assert seen is None  # a, replaced, does not come back
        else:
            assert seen is not None
            assert seen.agent is c
            assert dict(seen.metadata) == {"v": 2}
    finally:
        reg.close()
        agents.close()


def test_flag_off_update_during_the_outage_writes_the_live_registration() -> None:
    """The legacy side still says down: a flag-off update of the live,
    acknowledged c writes c's registration over the replaced copy."""
    agents = Agents()
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    legacy, target = Switched(), Switched()
    reg = MigratingRegistry(legacy, target, flags)
    try:
        a, b, c = agents.new(), agents.new(), agents.new()
        reg.register("k", a, {"v": 0})
        legacy.state = "disconnected"
        reg.register("k", b, {"v": 1}, replace=True)
        _end(agents, b, legacy, target)
        reg.register("k", c, {"v": 2})
        flags.disable(FLAG)  # the legacy side still says down, yet takes writes
        reg.update_metadata("k", {"v": 3})
        seen = reg.lookup("k")
        assert seen is not None
        assert seen.agent is c
        assert dict(seen.metadata) == {"v": 3}
        legacy.state = "connected"
        assert reg.readiness() == []
        for on in (True, False):
            flags.set(FLAG, on)
            seen = reg.lookup("k")
            assert seen is not None
            assert seen.agent is c
            assert dict(seen.metadata) == {"v": 3}
    finally:
        reg.close()
        agents.close()


def test_replaced_copy_is_listed_until_its_removal_lands() -> None:
    """The replacer dies while the legacy side is down and nothing else writes
    the key: the replaced copy is listed, then removed once the side is back."""
    agents = Agents()
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    legacy, target = Switched(), Switched()
    reg = MigratingRegistry(legacy, target, flags)
    try:
        a, b = agents.new(), agents.new()
        reg.register("k", a, {"v": 0})
        legacy.state = "disconnected"
        reg.register("k", b, {"v": 1}, replace=True)
        _end(agents, b, legacy, target)
        assert [d.key for d in reg.divergences()] == ["k"]  # a is still there
        assert legacy.lookup("k") is not None
        legacy.state = "connected"
        assert reg.readiness() == []
        assert legacy.lookup("k") is None
        flags.disable(FLAG)
        assert reg.lookup("k") is None
    finally:
        reg.close()
        agents.close()


def test_replaced_unmirrored_copy_is_removed_when_the_replacer_dies() -> None:
    """The copy replaced is the facade's own flag-off copy the target never
    took (its mirror skipped): not a mirror, yet removed all the same."""
    agents = Agents()
    flags = FeatureFlags(FLAGS)
    legacy, target = Switched(), Switched()
    reg = MigratingRegistry(legacy, target, flags)
    try:
        x, b = agents.new(), agents.new()
        target.state = "disconnected"
        reg.register("k", x, {"v": 0})  # flag off: its target mirror is skipped
        flags.enable(FLAG)
        target.state = "connected"
        legacy.state = "disconnected"
        reg.register("k", b, {"v": 1}, replace=True)  # supersedes x's retry
        _end(agents, b, legacy, target)
        legacy.state = "connected"
        assert reg.readiness() == []
        assert legacy.lookup("k") is None
        for on in (True, False):
            flags.set(FLAG, on)
            assert reg.lookup("k") is None  # x, replaced, does not come back
    finally:
        reg.close()
        agents.close()


class _LookupFails(Switched):
    """A legacy backend whose lookup() fails on demand (a custom one doing I/O)."""

    failing = False

    def lookup(self, key: Any) -> Any:
        if self.failing:
            raise BackendUnavailable("this backend's lookup does I/O, and it failed")
        return super().lookup(key)


def test_a_failing_legacy_lookup_does_not_fail_an_unrelated_write() -> None:
    # Was: the check of the replaced copy (under the facade lock) let the legacy
    # lookup's error out of an unrelated flag-on register, whose target was fine.
    agents = Agents()
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    legacy, target = _LookupFails(), Switched()
    reg = MigratingRegistry(legacy, target, flags)
    try:
        a, b = agents.new(), agents.new()
        reg.register("k", a, {"v": 0})
        legacy.state = "disconnected"
        reg.register("k", b, {"v": 1}, replace=True)  # its legacy mirror deferred
        _end(agents, b, legacy, target)
        legacy.failing = True
        reg.register("other", agents.new(), {"v": 1})  # drains b's death
        legacy.failing = False
        entry = reg.lookup("other")
        assert entry is not None
        assert entry.metadata == {"v": 1}
    finally:
        legacy.failing = False
        reg.close()
        flags.close()
        agents.close()
