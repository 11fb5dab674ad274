"""MigratingRegistry: the original's flag-integration scenarios, and what they missed."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import pytest

from foundation import (
    FeatureFlags,
    MemoryRegistry,
    MigratingRegistry,
    Migration,
    MigrationPlan,
    RegistryEvent,
    telemetry,
)
from foundation.errors import (
    AlreadyRegistered,
    Closed,
    MigrationError,
    NotRegistered,
    UnknownFlag,
)
from foundation.registry import Registry
from tests.migrating.support import (
    FLAG,
    FLAGS,
    Agents,
    Worker,
    legacy_backend,
    make,
    monitored_entries,
    wait_until,
)


class Setup:
    """A MigratingRegistry over a ThreadLocalRegistry and a MemoryRegistry we can inspect."""

    def __init__(self, flag_on: bool) -> None:
        self.legacy = legacy_backend()
        self.target = MemoryRegistry(indexed=("role",))
        self.reg, self.flags = make(flag_on, legacy=self.legacy, target=self.target)

    def flip(self, on: bool) -> None:
        self.flags.set(FLAG, on)

    def close(self) -> None:
        self.reg.close()
        self.flags.close()


@pytest.fixture
def off() -> Any:
    s = Setup(flag_on=False)
    yield s
    s.close()


@pytest.fixture
def on() -> Any:
    s = Setup(flag_on=True)
    yield s
    s.close()


def captured(name: str) -> tuple[list[Mapping[str, Any]], Any]:
    seen: list[Mapping[str, Any]] = []
    return seen, telemetry.attach(name, lambda _n, data: seen.append(data))


def full_cycle(reg: Registry, agents: Agents) -> None:
    a, b = agents.new(), agents.new()
    reg.register("a", a, {"role": "io", "n": 1})
    reg.register("b", b, {"role": "cpu", "n": 2})
    with pytest.raises(AlreadyRegistered) as info:
        reg.register("a", b)
    assert info.value.entry.agent is a
    assert reg.lookup("a").agent is a
    assert reg.count() == 2
    assert len(reg) == 2
    assert "a" in reg
    assert [e.key for e in reg.find_by_attribute("role", "io")] == ["a"]
    assert {e.key for e in reg.query([("n", "gte", 1)])} == {"a", "b"}
    reg.update_metadata("a", {"role": "cpu", "n": 3})
    assert {e.key for e in reg.find_by_attribute("role", "cpu")} == {"a", "b"}
    assert reg.lookup("a").metadata == {"role": "cpu", "n": 3}
    with pytest.raises(NotRegistered):
        reg.update_metadata("missing", {})
    assert reg.unregister("a") is True
    assert reg.unregister("a") is False
    assert reg.lookup("a") is None
    assert [e.key for e in reg.list_all()] == ["b"]
    assert reg.unregister("b") is True
    assert reg.count() == 0


# ------------------------------------------------------------------ the eight scenarios


def test_flag_off_uses_the_legacy_store(off: Setup, agents: Agents, worker: Worker) -> None:
    agent = agents.new()
    off.reg.register("w", agent, {"role": "io"})
    entry = off.reg.lookup("w")
    assert entry == off.legacy.lookup("w")  # the legacy store's own record answered
    # The legacy store is per thread: another thread does not see it with the flag off...
    assert worker.run(lambda: off.reg.lookup("w")) is None
    # ...but the shared table already holds the mirror.
    assert off.target.lookup("w").agent is agent


def test_full_cycle_with_the_flag_off(off: Setup, agents: Agents) -> None:
    full_cycle(off.reg, agents)
    assert monitored_entries(off.target) == (0, 0)


def test_flag_on_uses_the_shared_table(on: Setup, agents: Agents, worker: Worker) -> None:
    agent = agents.new()
    on.reg.register("w", agent, {"role": "io"})
    assert on.reg.lookup("w") == on.target.lookup("w")
    assert worker.run(lambda: on.reg.lookup("w")).agent is agent  # shared: every thread sees it
    assert on.legacy.lookup("w").agent is agent  # mirrored into this thread's legacy store


def test_full_cycle_with_the_flag_on(on: Setup, agents: Agents) -> None:
    full_cycle(on.reg, agents)
    assert monitored_entries(on.target) == (0, 0)


def test_killed_agent_is_gone_with_the_flag_on(on: Setup, agents: Agents) -> None:
    agent = agents.new()
    on.reg.register("w", agent)
    agents.kill(agent)
    assert on.reg.lookup("w") is None
    assert on.reg.count() == 0
    assert monitored_entries(on.target) == (0, 0)
    on.flip(False)
    assert on.reg.lookup("w") is None  # the legacy copy is not returned either


def test_register_flip_register_keeps_both_visible(off: Setup, agents: Agents) -> None:
    a, b, c = agents.new(), agents.new(), agents.new()
    off.reg.register("a", a)
    off.flip(True)
    off.reg.register("b", b)
    assert {e.key for e in off.reg.list_all()} == {"a", "b"}
    off.flip(False)
    off.reg.register("c", c)
    assert {e.key for e in off.reg.list_all()} == {"a", "b", "c"}
    off.flip(True)
    assert {e.key: e.agent for e in off.reg.list_all()} == {"a": a, "b": b, "c": c}
    assert monitored_entries(off.target) == (3, 3)


def test_mixed_stores_agree_after_flips(off: Setup, agents: Agents, worker: Worker) -> None:
    mine, theirs = agents.new(), agents.new()
    off.reg.register("mine", mine, {"role": "io"})  # flag off, this thread
    off.flip(True)
    worker.run(lambda: off.reg.register("theirs", theirs, {"role": "io"}))  # flag on, worker
    assert {e.key for e in off.reg.find_by_attribute("role", "io")} == {"mine", "theirs"}
    off.flip(False)
    # Each thread sees its own registrations in its legacy store, whichever flag made them.
    assert [e.key for e in off.reg.list_all()] == ["mine"]
    assert worker.run(lambda: [e.key for e in off.reg.list_all()]) == ["theirs"]
    assert worker.run(lambda: off.reg.unregister("theirs")) is True
    off.flip(True)
    assert [e.key for e in off.reg.list_all()] == ["mine"]
    assert monitored_entries(off.target) == (1, 1)


# ------------------------------------------------------------------ no resurrection, catch-up


def test_unregister_from_another_thread_does_not_resurrect_the_legacy_copy(
    off: Setup, agents: Agents, worker: Worker
) -> None:
    off.reg.register("k", agents.new())
    off.flip(True)
    assert worker.run(lambda: off.reg.unregister("k")) is True
    off.flip(False)
    assert off.reg.lookup("k") is None
    assert off.reg.count() == 0
    assert off.legacy.lookup("k") is None  # the stale private copy itself was removed


def test_replace_from_another_thread_moves_the_key_to_that_thread(
    off: Setup, agents: Agents, worker: Worker
) -> None:
    old, new = agents.new(), agents.new()
    off.reg.register("k", old)
    off.flip(True)
    worker.run(lambda: off.reg.register("k", new, replace=True))
    off.flip(False)
    assert off.reg.lookup("k") is None
    assert worker.run(lambda: off.reg.lookup("k")).agent is new
    off.flip(True)
    assert off.reg.lookup("k").agent is new
    assert monitored_entries(off.target) == (1, 1)


def test_update_from_another_thread_reaches_the_owner_legacy_copy(
    off: Setup, agents: Agents, worker: Worker
) -> None:
    off.reg.register("k", agents.new(), {"v": 1})
    off.flip(True)
    worker.run(lambda: off.reg.update_metadata("k", {"v": 2}))
    off.flip(False)
    assert off.reg.lookup("k").metadata == {"v": 2}
    assert off.reg.find_by_attribute("v", 2)[0].key == "k"


def test_killed_agent_is_gone_after_flipping_back(
    off: Setup, agents: Agents, worker: Worker
) -> None:
    agent = agents.new()
    worker.run(lambda: off.reg.register("k", agent))
    off.flip(True)
    agents.kill(agent)
    assert off.reg.lookup("k") is None
    replacement = agents.new()
    off.reg.register("k", replacement)  # a new registration from this thread
    off.flip(False)
    assert worker.run(lambda: off.reg.lookup("k")) is None
    assert off.reg.lookup("k").agent is replacement
    assert monitored_entries(off.target) == (1, 1)


# ------------------------------------------------------------------ divergences


def test_a_key_held_by_two_threads_is_a_divergence_until_unregistered(
    off: Setup, agents: Agents, worker: Worker
) -> None:
    first, second = agents.new(), agents.new()
    seen, detach = captured("registry.divergence")
    try:
        off.reg.register("k", first)
        worker.run(lambda: off.reg.register("k", second))  # its own private store: allowed
    finally:
        detach()
    divergences = off.reg.divergences()
    assert [(d.key, d.thread) for d in divergences] == [("k", worker.thread.ident)]
    assert off.reg.divergence_count() == 1
    assert [(e["key"], e["thread"]) for e in seen] == [("k", worker.thread.ident)]
    assert "k" in off.reg.readiness()[0]
    # The best-effort write never replaced what this thread holds in the shared table.
    assert off.target.lookup("k").agent is first
    worker.run(lambda: off.reg.register("k", agents.new(), replace=True))
    assert off.target.lookup("k").agent is first
    assert worker.run(lambda: off.reg.unregister("k")) is True
    assert off.reg.divergences() == []
    assert off.reg.readiness() == []
    assert off.target.lookup("k").agent is first


def test_a_divergence_is_resolved_when_its_agent_dies(
    off: Setup, agents: Agents, worker: Worker
) -> None:
    off.reg.register("k", agents.new())
    private = agents.new()
    worker.run(lambda: off.reg.register("k", private))
    assert len(off.reg.divergences()) == 1
    agents.kill(private)
    assert off.reg.divergences() == []


def test_a_divergence_is_resolved_when_its_thread_ends(off: Setup, agents: Agents) -> None:
    off.reg.register("k", agents.new())
    other = Worker("short-lived")
    other.run(lambda: off.reg.register("k", agents.new()))
    assert len(off.reg.divergences()) == 1
    other.stop()
    assert off.reg.divergences() == []


def test_readiness_blocks_migration_advance_while_divergences_remain(
    off: Setup, agents: Agents, worker: Worker
) -> None:
    migration = Migration(off.flags, MigrationPlan.default(), readiness=[off.reg.readiness])
    off.reg.register("k", agents.new())
    worker.run(lambda: off.reg.register("k", agents.new()))
    with pytest.raises(MigrationError, match="divergence"):
        migration.advance()
    assert off.flags.enabled(FLAG) is False
    worker.run(lambda: off.reg.unregister("k"))
    migration.advance()
    assert off.flags.enabled(FLAG) is True
    assert off.reg.lookup("k") is not None


def test_migration_steps_take_effect_on_the_next_call(off: Setup, agents: Agents) -> None:
    migration = Migration(off.flags, MigrationPlan.default(), readiness=[off.reg.readiness])
    off.reg.register("k", agents.new())
    migration.advance()
    assert off.reg.flag_on is True
    assert off.reg.lookup("k") == off.target.lookup("k")
    migration.rollback_to(0)
    assert off.reg.flag_on is False
    assert off.reg.lookup("k") == off.legacy.lookup("k")
    migration.advance()
    migration.emergency_rollback("error spike")
    assert off.reg.flag_on is False
    assert off.reg.lookup("k") == off.legacy.lookup("k")


def test_a_partial_rollout_without_an_actor_reads_as_off(off: Setup) -> None:
    off.flags.set_percentage(FLAG, 50)
    assert off.reg.flag_on is False
    off.flags.set_percentage(FLAG, 100)
    assert off.reg.flag_on is True


def test_an_undeclared_flag_is_refused_before_anything_starts() -> None:
    flags = FeatureFlags(FLAGS)
    target = MemoryRegistry()
    try:
        with pytest.raises(UnknownFlag):
            MigratingRegistry(legacy_backend(), target, flags, flag="use_ets")
    finally:
        target.close()
        flags.close()


# ------------------------------------------------------------------ events


def test_events_come_from_the_authoritative_side_only(
    off: Setup, agents: Agents, worker: Worker
) -> None:
    events: list[RegistryEvent] = []
    unsubscribe = off.reg.subscribe(events.append)
    a = agents.new()
    off.reg.register("a", a)  # flag off: one event, the legacy store's
    assert [(e.kind, e.entry.key) for e in events] == [("registered", "a")]
    assert events[0].entry == off.legacy.lookup("a")
    agents.kill(a)  # the legacy store is not monitored: no event with the flag off
    assert len(events) == 1
    # The target answers from the flip on: it tells a's death then (withheld
    # while the legacy store answered), as a bare MemoryRegistry tells it.
    off.flip(True)
    assert wait_until(lambda: len(events) == 2)  # (by a courier thread)
    b = agents.new()
    worker.run(lambda: off.reg.register("b", b))
    assert wait_until(lambda: len(events) == 3)
    assert events[-1].entry == off.target.lookup("b")
    agents.kill(b)
    assert wait_until(lambda: events[-1].reason == "down")
    kinds = [(e.kind, e.entry.key, e.reason) for e in events]
    assert kinds == [
        ("registered", "a", None),
        ("unregistered", "a", "down"),
        ("registered", "b", None),
        ("unregistered", "b", "down"),
    ]
    unsubscribe()
    unsubscribe()  # idempotent
    off.reg.register("c", agents.new())
    assert len(events) == 4


# ------------------------------------------------------------------ finish()


def test_finish_is_refused_while_the_flag_is_off(off: Setup) -> None:
    with pytest.raises(MigrationError, match="flag"):
        off.reg.finish()
    assert off.reg.finished is False


def test_finish_is_refused_while_divergences_remain(
    off: Setup, agents: Agents, worker: Worker
) -> None:
    off.reg.register("k", agents.new())
    worker.run(lambda: off.reg.register("k", agents.new()))
    off.flip(True)
    with pytest.raises(MigrationError, match="divergence"):
        off.reg.finish()
    worker.run(lambda: off.reg.unregister("k"))  # flag on: removes the shared entry too
    off.reg.finish()
    assert off.reg.finished is True


def test_after_finish_the_flag_is_ignored_with_a_warning(
    off: Setup, agents: Agents, worker: Worker
) -> None:
    a = agents.new()
    off.reg.register("a", a)
    off.flip(True)
    off.reg.finish()
    off.reg.finish()  # idempotent
    with pytest.raises(Closed):
        off.legacy.register("x", agents.new())  # the legacy store was released
    seen, detach = captured("registry.flag_ignored")
    try:
        off.flip(False)
    finally:
        detach()
    assert [(e["level"], e["flag"]) for e in seen] == [("warning", FLAG)]
    assert off.reg.flag_on is True
    assert off.reg.lookup("a").agent is a  # still served by the shared table
    b = agents.new()
    worker.run(lambda: off.reg.register("b", b))
    assert {e.key for e in off.reg.list_all()} == {"a", "b"}
    assert off.reg.unregister("a") is True
    assert monitored_entries(off.target) == (1, 1)


# ------------------------------------------------------------------ shared sources


def test_a_shared_legacy_is_backfilled_into_the_target(agents: Agents, worker: Worker) -> None:
    legacy, target = MemoryRegistry(), MemoryRegistry()
    a, b, held, clash = agents.new(), agents.new(), agents.new(), agents.new()
    legacy.register("a", a, {"n": 1})
    legacy.register("b", b)
    legacy.register("clash", clash)
    target.register("clash", held)  # the target already holds this key for another agent
    reg, flags = make(False, legacy=legacy, target=target)
    try:
        assert target.lookup("a").metadata == {"n": 1}
        assert target.lookup("b").agent is b
        assert [d.key for d in reg.divergences()] == ["clash"]
        assert reg.lookup("clash").agent is clash  # the legacy side answers with the flag off
        flags.set(FLAG, True)
        assert reg.lookup("clash").agent is held
        # A shared legacy is one view: a write from any thread reaches it.
        assert worker.run(lambda: reg.unregister("a")) is True
        flags.set(FLAG, False)
        assert reg.lookup("a") is None
        assert legacy.lookup("a") is None
        assert reg.unregister("clash") is True  # removes the private copy: resolved
        assert reg.divergences() == []
        assert target.lookup("clash").agent is held  # never touched: not ours
        assert monitored_entries(target) == (2, 2)
        assert monitored_entries(legacy) == (1, 1)
    finally:
        reg.close()
        flags.close()


def test_memory_to_memory_flips_lose_nothing(agents: Agents, worker: Worker) -> None:
    legacy, target = MemoryRegistry(), MemoryRegistry()
    reg, flags = make(False, legacy=legacy, target=target)
    try:
        live = {f"k{i}": agents.new() for i in range(6)}
        for i, (key, agent) in enumerate(live.items()):
            flags.set(FLAG, i % 2 == 0)
            (reg.register if i % 3 else lambda k, a: worker.run(lambda: reg.register(k, a)))(
                key, agent
            )
        agents.kill(live.pop("k0"))
        reg.unregister("k1")
        live.pop("k1")
        for on in (False, True):
            flags.set(FLAG, on)
            assert {e.key: e.agent for e in reg.list_all()} == live
        assert monitored_entries(target) == (4, 4) == monitored_entries(legacy)
    finally:
        reg.close()
        flags.close()


def test_close_releases_both_backends(agents: Agents) -> None:
    reg, flags = make(True)
    target = reg._target
    assert isinstance(target, MemoryRegistry)
    reg.register("a", agents.new())
    with reg:
        pass
    reg.close()
    assert target.manager.closed  # its own manager: every monitor released
    with pytest.raises(Closed):
        target.stats()  # the target itself is closed
    with pytest.raises(Closed):
        reg.register("b", agents.new())
    flags.close()


def test_listener_errors_do_not_break_writes(
    off: Setup, agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))

    def broken(_event: RegistryEvent) -> None:
        raise RuntimeError("listener bug")

    off.reg.subscribe(broken)
    off.reg.register("a", agents.new())
    assert off.reg.lookup("a") is not None
    assert [type(e) for e in reported] == [RuntimeError]
