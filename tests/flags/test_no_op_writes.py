"""Writes that change nothing, and writes that change the runtime layer only.

One rule on every store (it is ``FeatureFlags``'): a write whose runtime state
is unchanged (``enable`` of a flag already on at runtime) records nothing and
notifies nobody, here or in another process. A write that sets or clears the
runtime state without changing the effective state *as the writer sees it*
(``enable`` of a flag on by config, ``disable`` of a flag off by default,
``clear`` of a runtime state equal to config, a migration step pinning its
later stages' flags off) is recorded and heard, marked ``FlagChange.no_op``:
the runtime layer overrides the config of every process sharing the store
(a tool has none), so for another process it may well be a change -- the
kill switch of the last test -- and its record is what tells them to reload.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation._cli._flags import change_dict
from foundation.admin._json import _change_dict
from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagChange,
    FlagState,
    FlagStore,
    MemoryFlagStore,
    Migration,
    MigrationPlan,
    RedisFlagStore,
    SQLiteFlagStore,
    Stage,
)
from tests.flags._support import wait_until

FLAGS = (Flag("beta"), Flag("dark", default=True), Flag("later"))
PLAN = MigrationPlan([Stage(1, "one", ["beta"]), Stage(2, "two", ["later"])], name="p")


@pytest.fixture(params=["memory", "sqlite", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FlagStore, ...]]:
    """(a store, another store object on the same data -- another process -- or
    nothing for memory, which has no remote writers)."""
    opened: list[FlagStore] = []
    if request.param == "memory":
        opened.append(MemoryFlagStore())
    elif request.param == "sqlite":
        opened += [SQLiteFlagStore(tmp_path / "flags.db", poll_interval=0.01) for _ in "ab"]
    else:
        url, ns = request.getfixturevalue("redis_server").url, f"noop-{uuid.uuid4().hex[:12]}"
        opened += [
            RedisFlagStore(url, namespace=ns, cache_path=tmp_path / f"{n}.sqlite3") for n in "ab"
        ]
    yield tuple(opened)
    for s in opened:
        s.close()


def _heard(flags: FeatureFlags) -> list[FlagChange]:
    heard: list[FlagChange] = []
    flags.subscribe(heard.append)
    return heard


def test_a_write_that_changes_no_runtime_state_records_and_notifies_nothing(
    stores: tuple[FlagStore, ...],
) -> None:
    with FeatureFlags(FLAGS, store=stores[0]) as flags:
        heard = _heard(flags)
        remote = [FeatureFlags(FLAGS, store=s) for s in stores[1:]]
        far = [_heard(r) for r in remote]
        flags.enable("beta", by="ana")
        flags.set_percentage("beta", 30, by="ana")
        flags.allow("beta", "vip", by="ana")
        for _ in range(2):  # the same states again: nothing
            flags.enable("beta", by="bo")
            flags.set_percentage("beta", 30, by="bo")
            flags.allow("beta", "vip", by="bo")
        flags.clear("dark", by="bo")  # no runtime state to clear
        flags.disable("beta", by="ana", reason="marker")  # a real change, last
        history = flags.history()
        assert [c.by for c in history] == ["ana"] * 4
        assert not any(c.no_op for c in history)
        assert heard == history
        for r, h in zip(remote, far, strict=True):
            wait_until(lambda h=h: any(c.reason == "marker" and not c.new.switch for c in h))
            assert h == history
            r.close()


def test_pinning_what_config_gives_is_recorded_as_a_no_op_and_heard_everywhere(
    stores: tuple[FlagStore, ...],
) -> None:
    """Config says beta is on here: ``enable`` pins it at runtime (no effective change
    here, ``no_op``); another process without that config is switched on by it."""
    with FeatureFlags(FLAGS, store=stores[0]) as flags:
        flags.load_from_config({"beta": "25%"}, env=None)
        heard = _heard(flags)
        remote = [FeatureFlags(FLAGS, store=s) for s in stores[1:]]
        far = [_heard(r) for r in remote]
        flags.set_percentage("beta", 25, by="ana", reason="pin")
        assert flags.history() == heard
        (change,) = heard
        assert change.no_op
        assert change.old == change.new == FlagState(True, 25)
        assert change_dict(change)["no_op"] is _change_dict(change)["no_op"] is True
        assert FlagChange.from_dict(change.to_dict()).no_op  # derived: no stored field
        assert stores[0].load_states() == {"beta": FlagState(True, 25)}
        for r, h in zip(remote, far, strict=True):
            wait_until(lambda h=h: len(h) == 1)
            assert h == heard  # the writer's record, as history() holds it
            assert r.state("beta") == FlagState(True, 25)  # a change for this process
            r.close()


def test_clearing_a_runtime_state_equal_to_config_is_a_recorded_no_op(
    stores: tuple[FlagStore, ...],
) -> None:
    with FeatureFlags(FLAGS, store=stores[0]) as flags:
        flags.disable("dark", by="ana")  # pinned off: a real change
        flags.load_from_config({"dark": False}, env=None)  # config agrees now
        heard = _heard(flags)
        flags.clear("dark", by="bo", reason="back to config")
        (change,) = heard
        assert change.no_op
        assert change.by == "bo"
        assert change.new == FlagState(False)
        assert flags.history()[-1] == change
        assert stores[0].load_states() == {}
        assert [c.no_op for c in flags.history("dark")] == [False, True]


def test_a_migration_step_marks_its_pins_of_later_stages_as_no_ops(
    stores: tuple[FlagStore, ...],
) -> None:
    """Advancing to stage 1 turns stage 2's flag off at runtime (cumulative stages):
    off by default already, so recorded as a no-op, and heard as one."""
    with FeatureFlags(FLAGS, store=stores[0]) as flags:
        heard = _heard(flags)
        Migration(flags, PLAN).advance(by="ana")
        assert [(c.flag, c.no_op) for c in flags.history()] == [
            ("beta", False),
            ("later", True),
        ]
        assert heard == flags.history()


@pytest.mark.parametrize("stores", ["sqlite", "redis"], indirect=True)
def test_a_tool_s_kill_switch_is_a_no_op_for_it_and_a_change_for_the_application(
    stores: tuple[FlagStore, ...],
) -> None:
    """The reason such writes are kept: a tool (no config) disables a flag that is off
    by default in its view; an application that enabled it by config is switched off."""
    app_store, tool_store = stores
    with FeatureFlags(FLAGS, store=app_store) as app:
        app.load_from_config({"beta": True}, env=None)
        assert app.enabled("beta")
        heard = _heard(app)
        with FeatureFlags.from_store(tool_store) as tool:
            tool.disable("beta", by="oncall", reason="incident")
            (change,) = tool.history("beta")
            assert change.no_op
            assert change.new == FlagState(False)
        wait_until(lambda: not app.enabled("beta"))
        wait_until(lambda: len(heard) == 1)
        assert heard == [change]
