"""A stateful model test of boolean FeatureFlags and a Migration over every store.

A hypothesis ``RuleBasedStateMachine`` drives ``FeatureFlags`` over a
``MemoryFlagStore``, a ``SQLiteFlagStore`` (a temporary file) and a
``RedisFlagStore`` (the session's own redis-server on a free port) and checks
it, after every step, against a small pure-Python model of DESIGN.md
"Feature flags": the effective state (runtime, else config, else the declared
default), ``enabled`` with and without actors (switch, deny, allow, then the
rollout ``bucket(flag, actor) < p``), ``history()``, what a listener hears,
and a two-stage migration's stage and ``migration_history()``.

History is modelled as the code documents it (``_Writer.update``: "a no-op
write records nothing"): a write records a change exactly when the *stored*
runtime state changes; ``old``/``new`` are the effective states before and
after. So ``enable`` of a flag that is on only by its default or config pins
it in the runtime layer and records a change whose ``old == new``, marked
``no_op``. A listener hears exactly the records (no-ops included) and each
effective change of a config load (``by="config"``, not in the history).

Every store is opened with a small ``history_limit`` (``LIMIT``): the model trims
the flag records and, apart, the migration events by the documented rule (a
transaction that leaves more than ``LIMIT + trim_slack`` keeps the last
``LIMIT``), and the stage never depends on what was trimmed.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from foundation.errors import Closed, FoundationError, InvalidFlagValue, UnknownFlag
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
    bucket,
)
from foundation.flags._store import trim_slack

STATEFUL = settings(
    max_examples=50,
    stateful_step_count=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

DECLARED = (Flag("beta"), Flag("dark", default=True), Flag("gamma"))
LIMIT = 6  # history_limit of every store: trims (of both histories) every few steps
PLAN = MigrationPlan([Stage(1, "one", ["beta"]), Stage(2, "two", ["gamma"])], name="m")
NAMES = tuple(f.name for f in DECLARED)
DEFAULTS = {f.name: f.default is True for f in DECLARED}

# Written actors (7 is stored as "7") and the actors every check evaluates.
ACTORS: tuple[str | int, ...] = ("ana", "bo", "u1", 7)
PROBES: tuple[str | int, ...] = ("ana", "bo", "u1", "7", 7, "zed", "")

names = st.sampled_from(NAMES)
actors = st.sampled_from(ACTORS)
audit = st.none() | st.sampled_from(["ops", "ana", "on call"])
percentages = st.sampled_from([0, 0.5, 10, 33.3, 50, 99.99, 100]) | st.floats(
    min_value=0, max_value=100, allow_nan=False
)


@dataclass(frozen=True)
class M:
    """The model of one flag's state."""

    switch: bool
    p: float | None = None
    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()


def of(state: FlagState) -> M:
    """A real (boolean) FlagState as a model state."""
    assert not state.assign
    assert state.split is None
    return M(state.switch, state.percentage, state.allow, state.deny)


def model_enabled(flag: str, s: M, actor: str | int | None) -> bool:
    if not s.switch:
        return False
    if actor is None or actor == "":  # "" is no actor
        return s.p is None or s.p == 100
    a = str(actor)
    if a in s.deny:
        return False
    if a in s.allow:
        return True
    if s.p is not None:
        return bucket(flag, a) < s.p
    return True


# Config values and the state each stands for.
CONFIG_VALUES: dict[Any, M] = {
    True: M(True),
    False: M(False),
    "on": M(True),
    " OFF ": M(False),
    "True": M(True),
    "false": M(False),
    "0%": M(True, 0.0),
    "12.5%": M(True, 12.5),
    " 50% ": M(True, 50.0),
    "100%": M(True, 100.0),
}
config_values = st.sampled_from(list(CONFIG_VALUES))
configs = st.dictionaries(names, config_values, max_size=len(NAMES))
bad_config_entries = st.sampled_from(
    [
        ("beta", "yes", InvalidFlagValue),
        ("beta", 1, InvalidFlagValue),  # bare numbers are not values
        ("dark", "101%", InvalidFlagValue),
        ("gamma", "nan%", InvalidFlagValue),
        ("gamma", None, InvalidFlagValue),
        ("betta", True, UnknownFlag),
        ("BETA", "on", UnknownFlag),
    ]
)

Record = tuple[str, M, M, str | None, str | None]
Event = tuple[str, int, int, str | None, str | None]


def trimmed(records: list[Any]) -> list[Any]:
    """``records`` after a transaction that added some: the stores' rule."""
    return records[-LIMIT:] if len(records) > LIMIT + trim_slack(LIMIT) else records


def heard_key(change: FlagChange) -> tuple[str, M, M, str | None, str | None, bool]:
    return (change.flag, of(change.old), of(change.new), change.by, change.reason, change.no_op)


class FlagMachine(RuleBasedStateMachine):
    kind: ClassVar[str] = "memory"
    redis_url: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="stateful-flags-"))
        self.namespace = f"stateful-{uuid.uuid4().hex[:12]}"
        self.opened = 0
        self.store = self._open_store()
        self.flags = FeatureFlags(DECLARED, store=self.store)
        self.migration = Migration(self.flags, PLAN)
        self.heard: list[FlagChange] = []
        self.flags.subscribe(self.heard.append)
        # The model.
        self.config: dict[str, M] = {}
        self.runtime: dict[str, M] = {}
        self.history: list[Record] = []
        self.notified: list[tuple[str, M, M, str | None, str | None, bool]] = []
        self.stage = 0
        self.events: list[Event] = []
        self.batch = 0  # records of the transaction in progress (see write, commit)

    def _open_store(self) -> FlagStore:
        self.opened += 1
        if self.kind == "memory":
            return MemoryFlagStore(history_limit=LIMIT)
        if self.kind == "sqlite":
            return SQLiteFlagStore(self.tmp / "flags.db", history_limit=LIMIT)
        # A fresh node copy each time: what survives must come from Redis.
        return RedisFlagStore(
            self.redis_url,
            namespace=self.namespace,
            cache_path=self.tmp / f"node-{self.opened}.sqlite3",
            history_limit=LIMIT,
        )

    def teardown(self) -> None:
        try:
            try:
                self.flags.close()
            finally:
                self.store.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ----------------------------------------------------------------- model

    def base(self, name: str) -> M:
        return self.config.get(name, M(DEFAULTS[name]))

    def effective(self, name: str) -> M:
        return self.runtime.get(name, self.base(name))

    def write(
        self, name: str, mutate: Any, by: str | None, reason: str | None, *, batch: bool = False
    ) -> None:
        """As a write is documented: record only when the stored runtime state changes.
        ``batch``: one of several writes of one transaction (``commit`` ends it)."""
        stored = self.runtime.get(name)
        old = self.effective(name)
        new_stored = mutate(old)
        if new_stored == stored:
            return
        if new_stored is None:
            del self.runtime[name]
        else:
            self.runtime[name] = new_stored
        new = self.effective(name)
        self.history.append((name, old, new, by, reason))
        self.notified.append((name, old, new, by, reason, old == new))
        self.batch += 1
        if not batch:
            self.commit()

    def commit(self, event: Event | None = None) -> None:
        """A transaction ends: its records (and ``event``) trimmed by the stores' rule."""
        if self.batch:
            self.history = trimmed(self.history)
        self.batch = 0
        if event is not None:
            self.events = trimmed([*self.events, event])
            self.stage = event[2]

    def move(self, action: str, target: int, by: str | None, reason: str | None) -> None:
        """``Migration._move``: stages 1..target on, later ones off, one event."""
        why = reason or f"migration 'm' {action} {self.stage} -> {target}"
        for number, name in ((1, "beta"), (2, "gamma")):
            on = number <= target
            self.write(name, lambda s, on=on: replace(s, switch=on), by, why, batch=True)
        self.commit((action, self.stage, target, by, reason))

    def config_notes(self, before: dict[str, M]) -> None:
        """A config load: each effective change is heard (``by="config"``), not recorded."""
        for name in NAMES:
            if before[name] != self.effective(name):
                self.notified.append(
                    (name, before[name], self.effective(name), "config", "mapping", False)
                )

    # ----------------------------------------------------------------- rules

    @initialize(config=st.none() | configs)
    def start(self, config: dict[str, Any] | None) -> None:
        if config is not None:
            self.load(config)

    @rule(name=names, by=audit, reason=audit)
    def enable(self, name: str, by: str | None, reason: str | None) -> None:
        self.flags.enable(name, by=by, reason=reason)
        self.write(name, lambda s: M(True, s.p, s.allow, s.deny), by, reason)

    @rule(name=names, by=audit, reason=audit)
    def disable(self, name: str, by: str | None, reason: str | None) -> None:
        self.flags.disable(name, by=by, reason=reason)
        self.write(name, lambda s: M(False, s.p, s.allow, s.deny), by, reason)

    @rule(name=names, value=st.booleans(), by=audit)
    def set(self, name: str, value: bool, by: str | None) -> None:
        self.flags.set(name, value, by=by)
        self.write(name, lambda s: M(value, s.p, s.allow, s.deny), by, None)

    @rule(name=names, p=percentages, by=audit, reason=audit)
    def set_percentage(self, name: str, p: float, by: str | None, reason: str | None) -> None:
        self.flags.set_percentage(name, p, by=by, reason=reason)
        self.write(name, lambda s: M(True, float(p), s.allow, s.deny), by, reason)

    @rule(name=names, actor=actors, by=audit)
    def allow(self, name: str, actor: str | int, by: str | None) -> None:
        self.flags.allow(name, actor, by=by)
        self.write(name, lambda s: M(s.switch, s.p, s.allow | {str(actor)}, s.deny), by, None)

    @rule(name=names, actor=actors, reason=audit)
    def deny(self, name: str, actor: str | int, reason: str | None) -> None:
        self.flags.deny(name, actor, reason=reason)
        self.write(name, lambda s: M(s.switch, s.p, s.allow, s.deny | {str(actor)}), None, reason)

    @rule(name=names, by=audit)
    def clear(self, name: str, by: str | None) -> None:
        self.flags.clear(name, by=by)
        self.write(name, lambda s: None, by, None)

    @rule(by=audit, reason=audit)
    def reset_all(self, by: str | None, reason: str | None) -> None:
        self.flags.reset_all(by=by, reason=reason)
        for name in NAMES:  # declaration order, one record per flag it changes
            self.write(name, lambda s: None, by, reason, batch=True)
        self.commit()

    @precondition(lambda self: self.stage < 2)
    @rule(by=audit, reason=audit)
    def advance(self, by: str | None, reason: str | None) -> None:
        self.migration.advance(by=by, reason=reason)
        self.move("advance", self.stage + 1, by, reason)

    @precondition(lambda self: self.stage > 0)
    @rule(data=st.data(), by=audit)
    def rollback(self, data: st.DataObject, by: str | None) -> None:
        target = data.draw(st.integers(0, self.stage - 1))
        self.migration.rollback_to(target, by=by)
        self.move("rollback", target, by, None)

    @rule(reason=st.sampled_from(["incident", "error spike"]), by=audit)
    def emergency_rollback(self, reason: str, by: str | None) -> None:
        self.migration.emergency_rollback(reason, by=by)  # from any stage, 0 included
        self.move("emergency_rollback", 0, by, reason)

    @rule(config=configs)
    def load(self, config: dict[str, Any]) -> None:
        self.flags.load_from_config(config, env=None)
        before = {name: self.effective(name) for name in NAMES}
        self.config = {name: CONFIG_VALUES[value] for name, value in config.items()}
        self.config_notes(before)
        # The config layer is never written to the store and never in history().

    @rule(config=configs, bad=bad_config_entries)
    def load_invalid(self, config: dict[str, Any], bad: tuple[str, Any, type[Exception]]) -> None:
        name, value, error = bad
        with pytest.raises(error):
            self.flags.load_from_config({**config, name: value}, env=None)
        # All or nothing: the model (config included) is unchanged; the invariants check it.

    @rule(
        data=st.data(),
        case=st.sampled_from(["unknown", "percentage", "set", "actor", "audit"]),
    )
    def invalid_write(self, data: st.DataObject, case: str) -> None:
        """A refused write raises a foundation.errors type and changes nothing."""
        f = self.flags
        name = data.draw(names)
        expected: type[FoundationError] = InvalidFlagValue
        op: Callable[[], object]
        if case == "unknown":
            bad: Any = data.draw(st.sampled_from(["btea", "", "BETA", "beta ", 5]))
            call = data.draw(st.sampled_from(["enable", "disable", "clear", "enabled"]))
            calls: dict[str, Callable[[], object]] = {
                "set": lambda: f.set(bad, True),
                "set_percentage": lambda: f.set_percentage(bad, 50),
                "allow": lambda: f.allow(bad, "ana"),
                "deny": lambda: f.deny(bad, "ana"),
                "enabled_for": lambda: f.enabled(bad, "ana"),
                "history": lambda: f.history(bad),
            }
            call = data.draw(st.sampled_from([call, *calls]))
            op = calls.get(call, lambda: getattr(f, call)(bad))
            expected = UnknownFlag
        elif case == "percentage":
            bad = data.draw(
                st.sampled_from(
                    [-1, -0.001, 100.001, 101, 10**400, math.nan, math.inf, "50", "50%", True, None]
                )
            )
            op = lambda: f.set_percentage(name, bad)  # noqa: E731
        elif case == "set":
            bad = data.draw(st.sampled_from([1, 0, "on", None, "true"]))
            op = lambda: f.set(name, bad)  # noqa: E731
        elif case == "actor":
            bad = data.draw(
                st.sampled_from([None, 1.5, True, 2**64, b"ana", "\ud800", "", "   ", "\n"])
            )
            write = data.draw(st.sampled_from(["allow", "deny"]))
            op = lambda: getattr(f, write)(name, bad)  # noqa: E731
        else:
            audit = data.draw(st.sampled_from(["by", "reason"]))
            # A blank by names nobody (refused on every write and step); a blank
            # reason is no reason, stored as given.
            blank = ["", "   ", "\n"] if audit == "by" else []
            bad = data.draw(st.sampled_from([42, b"ops", "\ud800", "x" * 100_000, *blank]))
            steps = ["emergency_rollback"] if audit == "by" else []
            write = data.draw(st.sampled_from(["enable", "disable", "clear", "reset_all", *steps]))
            if write == "emergency_rollback":  # from any stage: the step's own by check
                op = lambda: self.migration.emergency_rollback("fire", by=bad)  # noqa: E731
            elif write == "reset_all":
                op = lambda: f.reset_all(**{audit: bad})  # noqa: E731
            else:
                op = lambda: getattr(f, write)(name, **{audit: bad})  # noqa: E731
        with pytest.raises(expected) as caught:
            op()
        assert isinstance(caught.value, FoundationError)
        assert len(str(caught.value)) < 1000

    @precondition(lambda self: self.opened < 4)
    @rule(reload_config=st.booleans())
    def reopen(self, reload_config: bool) -> None:
        """Close and reopen over the same store (or file / namespace): runtime state survives."""
        old = self.flags
        old.close()
        with pytest.raises(Closed):
            old.enabled("beta")
        if self.kind == "memory":
            self.opened += 1  # the same store object: it holds the state
        else:
            self.store.close()
            self.store = self._open_store()
        self.flags = FeatureFlags(DECLARED, store=self.store)
        self.migration = Migration(self.flags, PLAN)
        self.heard.clear()
        self.notified.clear()
        self.flags.subscribe(self.heard.append)
        config, self.config = self.config, {}
        if reload_config:
            # The config layer lives in memory: the application loads it again, and
            # persisted runtime state wins over it.
            self.flags.load_from_config(_values_of(config), env=None)
            before = {name: self.effective(name) for name in NAMES}
            self.config = config
            self.config_notes(before)

    # ------------------------------------------------------------ invariants

    @invariant()
    def states_and_answers_match(self) -> None:
        for name in NAMES:
            expected = self.effective(name)
            assert of(self.flags.state(name)) == expected, name
            answer = self.flags.enabled(name)
            assert answer is model_enabled(name, expected, None), name
            for actor in PROBES:
                got = self.flags.enabled(name, actor)
                assert type(got) is bool
                assert got is model_enabled(name, expected, actor), (name, actor)

    @invariant()
    def history_matches(self) -> None:
        got = [(c.flag, of(c.old), of(c.new), c.by, c.reason) for c in self.flags.history()]
        assert got == self.history
        for name in NAMES:
            assert [c.flag for c in self.flags.history(name)] == [
                r[0] for r in self.history if r[0] == name
            ]

    @invariant()
    def listeners_hear_the_records_and_config_changes(self) -> None:
        assert [heard_key(c) for c in self.heard] == self.notified
        assert all(c.no_op == (c.old == c.new) for c in self.flags.history())

    @invariant()
    def stage_and_migration_history_match(self) -> None:
        assert self.store.migration_stage("m") == self.migration.status().stage == self.stage
        got = [
            (e.action, e.from_stage, e.to_stage, e.by, e.reason)
            for e in self.store.migration_history("m")
        ]
        assert got == self.events

    @invariant()
    def store_holds_the_runtime_layer_only(self) -> None:
        stored = {n: of(s) for n, s in self.store.load_states().items()}
        assert stored == self.runtime


def _values_of(config: dict[str, M]) -> dict[str, Any]:
    """A config mapping that loads as ``config`` (the model keeps states, not values)."""
    by_state = {state: value for value, state in CONFIG_VALUES.items()}
    return {name: by_state[state] for name, state in config.items()}


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_feature_flags_follow_the_model(kind: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_server").url if kind == "redis" else ""
    machine = type(f"FlagMachine_{kind}", (FlagMachine,), {"kind": kind, "redis_url": url})
    run_state_machine_as_test(machine, settings=STATEFUL)
