"""A stale legacy copy of ours, due for removal, replaced meanwhile by another writer.

The legacy side says down throughout the write (``Switched``: it still takes
writes, a Redis node recovering). "a" was registered with the flag off
(``old``'s copy), unregistered with the flag on (that copy stays, its removal
due) and registered again with the flag on for ``new`` (its legacy mirror
deferred). Then ``old`` dies and another writer registers "a" directly in the
legacy store (``foreign``). That copy is not ours (rule 2): neither a flag-off
update (which writes the deferred register itself over a stale copy of ours)
nor the pass's catch-up (which removes the stale copy) may replace or remove it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from foundation import FeatureFlags, MigratingRegistry
from foundation.errors import BackendUnavailable
from foundation.registry import Entry
from tests.migrating.support import FLAG, FLAGS, Agents, Switched, wait_until


@contextmanager
def _outage_registry(
    legacy: Switched | None = None,
) -> Iterator[tuple[FeatureFlags, Switched, Switched, MigratingRegistry]]:
    """The flag off, a legacy side (a ``Switched`` unless given), a target and
    the registry over them; closed afterwards."""
    flags = FeatureFlags(FLAGS)
    flags.disable(FLAG)
    legacy = Switched() if legacy is None else legacy
    target = Switched()
    reg = MigratingRegistry(legacy, target, flags)
    try:
        yield flags, legacy, target, reg
    finally:
        reg.close()
        flags.close()


class Setup:
    def __init__(
        self,
        agents: Agents,
        parts: tuple[FeatureFlags, Switched, Switched, MigratingRegistry],
    ) -> None:
        self.flags, self.legacy, self.target, self.reg = parts
        self.old, self.new, self.foreign = agents.new(), agents.new(), agents.new()
        self.legacy.state = "disconnected"
        self.reg.register("a", self.old, {"v": 0})
        self.flags.enable(FLAG)
        self.reg.unregister("a")  # the legacy copy stays: its removal is due
        self.reg.register("a", self.new, {"v": 0})  # its legacy mirror deferred

    def foreign_takes_the_key(self, agents: Agents) -> None:
        agents.kill(self.old)
        assert wait_until(lambda: self.legacy.lookup("a") is None)
        self.legacy.register("a", self.foreign, {"v": 9})  # not through the facade

    def legacy_holds(self) -> tuple[object, dict[str, object]]:
        entry = self.legacy.lookup("a")
        assert entry is not None
        return entry.agent, dict(entry.metadata)


@pytest.fixture
def setup(agents: Agents) -> Iterator[Setup]:
    with _outage_registry() as parts:
        yield Setup(agents, parts)


def test_a_flag_off_update_does_not_overwrite_a_foreign_copy(setup: Setup, agents: Agents) -> None:
    """Guards the stale-copy branch; passes at HEAD by design."""
    setup.foreign_takes_the_key(agents)
    setup.flags.disable(FLAG)
    with pytest.raises(BackendUnavailable):  # as before the deferred-over fix
        setup.reg.update_metadata("a", {"v": 1})
    assert setup.legacy_holds() == (setup.foreign, {"v": 9})


def test_the_pass_does_not_remove_a_foreign_copy(setup: Setup, agents: Agents) -> None:
    setup.foreign_takes_the_key(agents)
    setup.flags.disable(FLAG)
    setup.legacy.state = "connected"
    problems = setup.reg.readiness()  # the pass: catch-up, then the deferred register
    assert setup.legacy_holds() == (setup.foreign, {"v": 9})
    assert any("another registration" in p for p in problems), problems
    entry = setup.target.lookup("a")
    assert entry is not None
    assert entry.agent is setup.new
    setup.reg.readiness()  # a second pass leaves the foreign copy in place
    assert setup.legacy_holds() == (setup.foreign, {"v": 9})


class _DiesAtLookup(Switched):
    """A legacy store whose next lookup of "a" kills ``victim`` first: the agent
    of the deferred register dies between its liveness check and the register."""

    victim: Any = None
    agents: Agents | None = None

    def lookup(self, key: Hashable) -> Entry | None:
        if key == "a" and self.agents is not None:
            agents, self.agents = self.agents, None
            agents.kill(self.victim)
        return super().lookup(key)


def test_an_update_whose_deferred_agent_dies_meanwhile(agents: Agents) -> None:
    """The legacy side still says down: the stale copy stays until the pass can
    run, so the update answers ``BackendUnavailable`` (README), not ``NotRegistered``.
    Guards the stale-copy branch; passes at HEAD by design."""
    legacy = _DiesAtLookup()
    with _outage_registry(legacy) as (flags, _, _, reg):
        old, new = agents.new(), agents.new()
        legacy.state = "disconnected"
        reg.register("a", old, {"v": 0})
        flags.enable(FLAG)
        reg.unregister("a")
        reg.register("a", new, {"v": 0})
        flags.disable(FLAG)
        legacy.victim, legacy.agents = new, agents
        with pytest.raises(BackendUnavailable):
            reg.update_metadata("a", {"v": 1})
        assert legacy.agents is None  # the lookup between the check and the register ran


@pytest.mark.parametrize("end", ["agent_dies", "unregister"])
def test_an_unmarked_drop_does_not_remove_a_foreign_copy(agents: Agents, end: str) -> None:
    """ "a" was mirrored to both sides with the flag off (``old``); the legacy side
    goes down, and a flag-on register replaces it (``new``, deferred: ``old``'s
    copy the one it may replace). ``old`` dies and another writer registers "a"
    directly in the legacy store; then ``new`` dies or "a" is unregistered. That
    copy is not ours (rule 2): the pass's catch-up must not remove it."""
    with _outage_registry() as (flags, legacy, target, reg):
        old, new, foreign = agents.new(), agents.new(), agents.new()
        reg.register("a", old, {"v": 0})
        assert wait_until(lambda: target.lookup("a") is not None)
        legacy.state = "disconnected"
        flags.enable(FLAG)
        reg.register("a", new, {"v": 1}, replace=True)  # its legacy mirror deferred
        agents.kill(old)
        assert wait_until(lambda: legacy.lookup("a") is None)
        legacy.register("a", foreign, {"v": 9})  # not through the facade
        if end == "agent_dies":
            agents.kill(new)
            assert wait_until(lambda: target.lookup("a") is None)
        else:
            reg.unregister("a")
        legacy.state = "connected"
        reg.readiness()  # the pass: catch-up, then the deferred register (void)
        entry = legacy.lookup("a")
        assert entry is not None
        assert entry.agent is foreign
        assert dict(entry.metadata) == {"v": 9}
