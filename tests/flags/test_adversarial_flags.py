"""An adversarial operator's review of the flag side (issue 11, items 4, 8 and 9).

Every public call of ``FeatureFlags``, the three stores, the config loader and
``Migration`` either succeeds or raises a ``foundation.errors`` type with a
bounded message, and a failed call changes nothing; the stores answer the same
call alike; the rollout rules hold at their edges. Each test here failed before
the fix it names.
"""

from __future__ import annotations

import enum
import math
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundation import errors
from foundation.flags import (
    AutoRollback,
    FeatureFlags,
    Flag,
    FlagChange,
    FlagState,
    FlagStore,
    HealthSample,
    HealthThresholds,
    MemoryFlagStore,
    Migration,
    MigrationEvent,
    MigrationPlan,
    SQLiteFlagStore,
    Stage,
    bucket,
)

MAX_MESSAGE = 2_000
"""No message of a foundation error may be longer (the issue: "bounded messages")."""

DECLARED = (
    Flag("beta"),
    Flag("dark", default=True),
    Flag("color", variants={"red": "#f00", "blue": "#00f"}, default="red"),
)


class Names(enum.StrEnum):
    BETA = "beta"
    DARK = "dark"


class Number(enum.IntEnum):
    FIVE = 5


def _raises(call: Callable[[], object], kind: type[errors.FoundationError]) -> str:
    """Run ``call``; it must raise ``kind`` with a bounded message, which is returned."""
    with pytest.raises(kind) as info:
        call()
    message = str(info.value)
    assert len(message) <= MAX_MESSAGE, (kind.__name__, len(message))
    return message


def _snapshot(flags: FeatureFlags) -> tuple[object, ...]:
    states = tuple(flags.state(n) for n in flags.names)
    return states, len(flags.history())


def _store_snapshot(store: FlagStore) -> tuple[object, ...]:
    return (
        store.load_states(),
        [c.to_dict() for c in store.history()],
        store.migration_stage("p"),
        [e.to_dict() for e in store.migration_history("p")],
        store.plans().keys(),
    )


# ---------------------------------------------------------------- the three stores alike


BAD_KEYS = [None, 123, "", "\ud800", [], b"beta", math.nan, object()]


@pytest.mark.parametrize(
    "key", BAD_KEYS[1:], ids=["int", "empty", "surrogate", "list", "bytes", "nan", "object"]
)
def test_every_store_refuses_a_bad_flag_or_plan_name_alike(store: FlagStore, key: object) -> None:
    """Was: memory TypeError (unhashable) or [] / 0, SQLite UnicodeEncodeError or a
    misleading 'corrupt store' FlagError, Redis InvalidFlagValue: three answers."""
    before = _store_snapshot(store)
    _raises(lambda: store.history(key), errors.InvalidFlagValue)  # type: ignore[arg-type]
    _raises(lambda: store.migration_stage(key), errors.InvalidFlagValue)  # type: ignore[arg-type]
    _raises(lambda: store.migration_history(key), errors.InvalidFlagValue)  # type: ignore[arg-type]
    plan = MigrationPlan.default()
    _raises(lambda: store.record_plan(key, plan), errors.InvalidFlagValue)  # type: ignore[arg-type]
    assert _store_snapshot(store) == before


def _change(name: str = "beta") -> FlagChange:
    return FlagChange(name, FlagState(False), FlagState(True), "ana", "why", 1.0)


BAD_PUTS: dict[str, Callable[[Any], None]] = {
    "surrogate name": lambda t: t.put("\ud800", FlagState(True), _change()),
    "int name": lambda t: t.put(5, FlagState(True), _change()),
    "empty name": lambda t: t.put("", FlagState(True), _change()),
    "state not a FlagState": lambda t: t.put("beta", {"switch": True}, _change()),
    "change None": lambda t: t.put("beta", FlagState(True), None),
    "stage 2**63": lambda t: t.put_migration("p", 2**63, MigrationEvent("p", "advance", 0, 1)),
    "stage -1": lambda t: t.put_migration("p", -1, MigrationEvent("p", "advance", 0, 1)),
    "stage True": lambda t: t.put_migration("p", True, MigrationEvent("p", "advance", 0, 1)),
    "event None": lambda t: t.put_migration("p", 1, None),
    "change of another flag": lambda t: t.put("dark", FlagState(True), _change("beta")),
    "event of another plan": lambda t: t.put_migration(
        "q", 1, MigrationEvent("p", "advance", 0, 1)
    ),
    "get list": lambda t: t.get([]),
    "get surrogate": lambda t: t.get("\ud800"),
    "stage of list": lambda t: t.migration_stage([]),
    "stage of surrogate": lambda t: t.migration_stage("\ud800"),
    "plan surrogate": lambda t: t.put_migration("\ud800", 1, MigrationEvent("p", "advance", 0, 1)),
}


@pytest.mark.parametrize("bad", list(BAD_PUTS), ids=[k.replace(" ", "-") for k in BAD_PUTS])
def test_every_store_refuses_a_bad_transaction_write_and_writes_nothing(
    store: FlagStore, bad: str
) -> None:
    """Was: memory kept anything (history() then raised AttributeError), SQLite raised
    UnicodeEncodeError/OverflowError/AttributeError, and Redis committed a stage of
    10**30 that no node copy (SQLite) could hold: every listener failed on it and
    the store went stale for good."""
    store.transaction(lambda t: t.put("beta", FlagState(True), _change()))  # one good write

    def body(t: Any) -> None:
        t.put("dark", FlagState(False), _change("dark"))  # staged before the bad call
        BAD_PUTS[bad](t)

    before = _store_snapshot(store)
    _raises(lambda: store.transaction(body), errors.InvalidFlagValue)
    assert _store_snapshot(store) == before
    # The store still works, and its answers are readable.
    store.transaction(lambda t: t.put("dark", FlagState(False), _change("dark")))
    assert store.load_states()["dark"] == FlagState(False)
    assert [c.flag for c in store.history()] == ["beta", "dark"]


def test_every_store_refuses_a_catalogue_or_plan_that_is_not_one(store: FlagStore) -> None:
    """Was: TypeError ('int' object is not iterable) and AttributeError on every store."""
    before = (store.catalogue(), store.plans())
    _raises(lambda: store.record_catalogue(5), errors.InvalidFlagValue)  # type: ignore[arg-type]
    _raises(lambda: store.record_catalogue("beta"), errors.InvalidFlagValue)  # type: ignore[arg-type]
    _raises(lambda: store.record_plan("p", 5), errors.InvalidFlagValue)  # type: ignore[arg-type]
    assert (store.catalogue(), store.plans()) == before


def test_a_closed_store_answers_closed_before_judging_the_arguments(store: FlagStore) -> None:
    """Was: SQLite's record_catalogue([]) answered None after close(); Redis judged a
    bad name before noticing it was closed (InvalidFlagValue, not Closed)."""
    store.close()
    calls: list[Callable[[], object]] = [
        lambda: store.record_catalogue([]),
        lambda: store.record_catalogue([5]),  # type: ignore[list-item]
        lambda: store.record_plan("", MigrationPlan.default()),
        lambda: store.record_plan("p", 5),  # type: ignore[arg-type]
        lambda: store.history(123),  # type: ignore[arg-type]
        lambda: store.migration_stage([]),  # type: ignore[arg-type]
        lambda: store.migration_history(""),
    ]
    for call in calls:
        _raises(call, errors.Closed)


SCRIPT: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("enable", ("beta",), {"by": "ana", "reason": "go"}),
    ("set_percentage", ("beta", 33.3), {"by": "ana"}),
    ("allow", ("beta", "u1"), {}),
    ("deny", ("beta", 7), {"reason": "int actor"}),
    ("disable", ("dark",), {"by": "ops", "reason": "kill"}),
    ("set_split", ("color", {"red": 25, "blue": 75}), {}),
    ("assign", ("color", "u2", "blue"), {}),
    ("enable", ("beta",), {}),  # a no-op: no record
    ("set", (Names.BETA, False), {"by": "enum name"}),
    ("reset_all", (), {"by": "ops", "reason": "reset"}),
    ("reset_all", (), {"by": "ops", "reason": "again"}),  # nothing changes: no record
]


def _run_script(flags: FeatureFlags) -> list[tuple[Any, ...]]:
    for method, args, kwargs in SCRIPT:
        getattr(flags, method)(*args, **kwargs)
    return [(c.flag, c.old, c.new, c.by, c.reason) for c in flags.history()]


def test_every_store_records_the_same_history_in_the_same_order(store: FlagStore) -> None:
    """reset_all records one change per flag it changes, in declaration order, and the
    memory, SQLite and Redis stores keep the very same history."""
    with FeatureFlags(DECLARED) as reference:
        expected = _run_script(reference)
    with FeatureFlags(DECLARED, store=store) as flags:
        assert _run_script(flags) == expected
    resets = [r for r in expected if r[4] == "reset"]
    assert [r[0] for r in resets] == ["beta", "dark", "color"]  # one each, in order
    assert not [r for r in expected if r[4] == "again"]
    assert resets[0][2] == FlagState(False)  # back to the declared default


# ---------------------------------------------------------------- FeatureFlags


def test_a_strenum_member_names_its_flag_for_writes_as_for_reads() -> None:
    """Was: enabled(Names.BETA) answered, but enable(Names.BETA) and
    history(Names.BETA) were UnknownFlag: "unknown flag \"<Names.BETA: 'beta'>\""."""
    with FeatureFlags(DECLARED) as flags:
        flags.enable(Names.BETA, by="ana")
        flags.disable(Names.DARK)
        flags.set_percentage(Names.BETA, 50)
        flags.allow(Names.BETA, "u1")
        assert flags.enabled(Names.BETA, "u1") is True
        changes = flags.history(Names.BETA)
        assert [type(c.flag) for c in changes] == [str, str, str]  # stored as plain str
        assert flags.enabled("dark") is False
        flags.clear(Names.BETA)
        _raises(lambda: flags.enable(Number.FIVE), errors.UnknownFlag)  # type: ignore[arg-type]


def test_feature_flags_refuses_what_is_not_a_declaration_list_or_a_store() -> None:
    """Was: TypeError ('int' object is not iterable) and AttributeError (no record_catalogue)."""
    _raises(lambda: FeatureFlags(5), errors.InvalidFlagValue)  # type: ignore[arg-type]
    _raises(lambda: FeatureFlags(Flag("a")), errors.InvalidFlagValue)  # type: ignore[arg-type]
    _raises(
        lambda: FeatureFlags([Flag("a")], store=5),  # type: ignore[arg-type]
        errors.InvalidFlagValue,
    )


def test_bucket_takes_the_actors_enabled_takes() -> None:
    """Was: bucket("beta", 5) and bucket(5, []) were TypeError; enabled() takes an int actor."""
    assert bucket("beta", 5) == bucket("beta", "5")
    assert bucket("beta", Number.FIVE) == bucket("beta", "5")
    for flag, actor in ((5, "a"), ("beta", []), ("beta", 2**63), ("beta", True), ("b", None)):
        _raises(lambda f=flag, a=actor: bucket(f, a), errors.InvalidFlagValue)  # type: ignore[misc]
    with FeatureFlags(DECLARED) as flags:
        flags.set_percentage("beta", 50)
        for actor in range(200):
            assert flags.enabled("beta", actor) == (bucket("beta", actor) < 50)


@pytest.mark.parametrize(
    "call",
    [
        lambda: FlagState(True, allow=5),
        lambda: FlagState(True, deny=[[1]]),
        lambda: FlagState(True, allow="x" * 100_000),
        lambda: FlagState(True, allow=["x" * 100_000, 5]),
        lambda: FlagState("x" * 100_000),
    ],
)
def test_a_bad_flag_state_is_invalid_with_a_short_message(call: Callable[[], object]) -> None:
    """Was: TypeError for a non-iterable or unhashable actor set; 100 kB messages."""
    _raises(call, errors.InvalidFlagValue)


def test_rollout_edges_precedence_and_monotonicity(store: FlagStore) -> None:
    actors = [f"user-{i}" for i in range(300)] + [str(i) for i in range(100)]
    with FeatureFlags(DECLARED, store=store) as flags:
        flags.set_percentage("beta", 0)
        assert not any(flags.enabled("beta", a) for a in actors)
        assert flags.enabled("beta") is False
        flags.allow("beta", "user-1")  # allow beats a 0% rollout
        assert flags.enabled("beta", "user-1") is True
        flags.deny("beta", "user-1")  # deny beats allow
        assert flags.enabled("beta", "user-1") is False
        flags.clear("beta")
        previous: set[str] = set()
        for p in (0, 1e-9, 0.5, 10, 33.3, 33.33, 50, 66.6, 99.999, 100):
            flags.set_percentage("beta", p)
            on = {a for a in actors if flags.enabled("beta", a)}
            assert previous <= on, p  # raising p never drops an actor
            assert all(type(flags.enabled("beta", a)) is bool for a in actors[:5])
            assert flags.enabled("beta") is (p == 100)  # without an actor: only 100
            previous = on
        assert on == set(actors)
        flags.allow("beta", "user-2")
        flags.disable("beta")  # the kill switch beats allow and 100%
        assert not any(flags.enabled("beta", a) for a in [*actors, "user-2"])
        flags.enable("beta")  # resumes exactly as it was
        assert flags.state("beta") == FlagState(True, 100.0, frozenset({"user-2"}))


def test_clear_returns_to_the_config_layer_and_records_it(store: FlagStore) -> None:
    with FeatureFlags(DECLARED, store=store) as flags:
        flags.load_from_config({"beta": "25%", "dark": "off"}, env=None)
        flags.enable("beta")
        flags.allow("beta", "a")
        flags.clear("beta", by="ops")
        assert flags.state("beta") == FlagState(True, 25.0)
        assert flags.history("beta")[-1].new == FlagState(True, 25.0)
        flags.reset_all(by="ops")  # nothing at runtime any more: nothing to record
        assert len(flags.history()) == 3
        flags.load_from_config(None, env=None)  # an empty layer: declared defaults
        assert flags.state("beta") == FlagState(False)
        assert flags.state("dark") == FlagState(True)


# ---------------------------------------------------------------- config loading


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    """Was: load_from_config(<a FIFO>) blocked in open() until some process wrote to it."""
    fifo = tmp_path / "flags.toml"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []
    with FeatureFlags(DECLARED) as flags:

        def load() -> None:
            try:
                flags.load_from_config(fifo, env=None)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        loader.join(timeout=30)
        if loader.is_alive():  # release the blocked open() before failing
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            loader.join(timeout=30)
            pytest.fail("load_from_config waited on a FIFO")
        (exc,) = outcome
        assert isinstance(exc, errors.InvalidFlagValue), exc
        assert "not a regular file" in str(exc)
        assert flags.state("beta") == FlagState(False)


def test_config_errors_are_bounded_and_change_nothing(tmp_path: Path) -> None:
    """Was: a 100 kB message for a long path (the OSError repeats it), TypeError for a
    PathLike giving bytes, AttributeError for env=5, and one line per bad flag."""

    class BytesPath(os.PathLike):  # type: ignore[type-arg]
        def __fspath__(self) -> bytes:
            return b"/tmp/flags.toml"

    many = tuple(Flag(f"flag_{i}") for i in range(400))
    with FeatureFlags(many) as flags:
        flags.load_from_config({"flag_1": "on"}, env=None)
        before = _snapshot(flags)
        bad: list[Callable[[], None]] = [
            lambda: flags.load_from_config(tmp_path / ("x" * 100_000), env=None),
            lambda: flags.load_from_config(BytesPath(), env=None),  # type: ignore[arg-type]
            lambda: flags.load_from_config(None, env=5),  # type: ignore[arg-type]
            lambda: flags.load_from_config(None, env=[("FOUNDATION_FLAG_FLAG_1", "on")]),  # type: ignore[arg-type]
            lambda: flags.load_from_config({f"flag_{i}": "maybe" * 50 for i in range(400)}),
            lambda: flags.load_from_config(tmp_path, env=None),  # a directory
        ]
        for call in bad:
            _raises(call, errors.InvalidFlagValue)
            assert _snapshot(flags) == before
        message = _raises(
            lambda: flags.load_from_config({f"flag_{i}": 5 for i in range(400)}, env=None),
            errors.InvalidFlagValue,
        )
        assert "more" in message  # the rest are counted
        assert flags.enabled("flag_1") is True


def test_a_symlinked_config_file_loads_and_a_dangling_one_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real.toml"
    target.write_text('[flags]\nbeta = "on"\n', encoding="utf-8")
    (tmp_path / "link.toml").symlink_to(target)
    (tmp_path / "dangling.toml").symlink_to(tmp_path / "nowhere.toml")
    with FeatureFlags(DECLARED) as flags:
        flags.load_from_config(tmp_path / "link.toml", env=None)
        assert flags.enabled("beta") is True
        _raises(
            lambda: flags.load_from_config(tmp_path / "dangling.toml", env=None),
            errors.InvalidFlagValue,
        )
        assert flags.enabled("beta") is True


# ---------------------------------------------------------------- migrations


def test_stage_and_plan_refuse_bad_input_with_short_messages() -> None:
    """Was: ValueError ('Exceeds the limit for integer string conversion') for a huge
    stage number, TypeError/AttributeError for stages that are not Stage objects."""
    bad: list[Callable[[], object]] = [
        lambda: Stage(-(10**5000), "s", ["beta"]),
        lambda: Stage(10**5000, "s", ["beta"]),
        lambda: Stage(1, "x" * 100_000 + "\ud800", ["beta"]),
        lambda: Stage(1, "s", 5),  # type: ignore[arg-type]
        lambda: Stage(1, "s", ["\ud800"]),
        lambda: Stage(1, "s", ["beta"], risk=[]),  # type: ignore[arg-type]
        lambda: MigrationPlan(5),  # type: ignore[arg-type]
        lambda: MigrationPlan([5]),  # type: ignore[list-item]
        lambda: MigrationPlan([Stage(1, "s", ["beta"])], name="\ud800"),
        lambda: MigrationPlan([Stage(n, "s", [f"f{n}"]) for n in range(2, 3000)]),
    ]
    for call in bad:
        _raises(call, errors.MigrationError)


@pytest.fixture
def migration() -> Iterator[Migration]:
    store = MemoryFlagStore()
    flags = FeatureFlags(DECLARED, store=store)
    yield Migration(flags, MigrationPlan([Stage(1, "one", ["beta"]), Stage(2, "two", ["dark"])]))
    flags.close()
    store.close()


def test_migration_errors_are_bounded_and_change_nothing(migration: Migration) -> None:
    """Was: rollback_to(10**5000) raised ValueError building its message; a readiness
    check's problems were listed whole, however many and however long."""
    migration.advance()
    before = (migration.status(), len(migration.history()), _snapshot(migration.flags))
    _raises(lambda: migration.rollback_to(10**5000), errors.MigrationError)
    _raises(lambda: migration.rollback_to(-(10**5000)), errors.MigrationError)
    _raises(lambda: migration.advance(by=5), errors.InvalidFlagValue)  # type: ignore[arg-type]
    _raises(lambda: migration.emergency_rollback("x" * 5000), errors.InvalidFlagValue)
    noisy = Migration(
        migration.flags,
        migration.plan,
        readiness=[lambda: ["y" * 100_000] * 1000, lambda: 1 / 0],  # type: ignore[list-item, return-value]
    )
    _raises(noisy.advance, errors.MigrationError)
    assert (migration.status(), len(migration.history()), _snapshot(migration.flags)) == before


def test_migration_reads_are_closed_with_its_flags_even_over_an_open_store(
    migration: Migration,
) -> None:
    """Was: history() kept answering from a store the caller still held open."""
    migration.advance()
    migration.flags.close()
    assert migration.flags.store.migration_history("default") is not None  # store still open
    _raises(migration.history, errors.Closed)
    _raises(migration.status, errors.Closed)
    _raises(migration.advance, errors.Closed)


def test_auto_rollback_refuses_an_endless_interval(migration: Migration) -> None:
    """Was: interval=inf started a thread whose first wait raised OverflowError."""
    watched = Migration(
        migration.flags,
        migration.plan,
        health=lambda: HealthSample(error_rate=0.0),
        thresholds=HealthThresholds(max_error_rate=0.5),
    )
    for interval in (math.inf, math.nan, True, -1, 0, "1"):
        _raises(
            lambda i=interval: AutoRollback(watched, interval=i),  # type: ignore[misc]
            errors.InvalidFlagValue,
        )
    _raises(lambda: HealthSample(error_rate=-(10**5000)), errors.InvalidFlagValue)


# ---------------------------------------------------------------- the fuzz


HOSTILE = st.one_of(
    st.sampled_from(
        [
            "beta",
            "dark",
            "color",
            "red",
            "blue",
            Names.BETA,
            Number.FIVE,
            "\ud800",
            "",
            "x" * 5000,
            10**400,
            -(2**63),
            2**63,
            math.nan,
            math.inf,
            33.3,
            b"beta",
            None,
            True,
            [],
            {"red": 50, "blue": 50},
            {"red": math.nan},
            {"\ud800": 100},
            {"beta": "25%"},
            {"beta": "x" * 10_000},
            {"nope": True},
        ]
    ),
    st.text(max_size=6),
    st.integers(),
    st.floats(),
)

METHODS: dict[str, int] = {
    "enable": 1,
    "disable": 1,
    "set": 2,
    "set_percentage": 2,
    "allow": 2,
    "deny": 2,
    "clear": 1,
    "reset_all": 0,
    "assign": 3,
    "set_split": 2,
    "enabled": 2,
    "value": 2,
    "variant": 2,
    "evaluate": 2,
    "state": 1,
    "flag": 1,
    "history": 1,
    "load_from_config": 1,
}
WRITES = {"enable", "disable", "set", "set_percentage", "allow", "deny", "clear", "reset_all"}
WRITES |= {"assign", "set_split", "load_from_config"}

CALLS = st.tuples(
    st.sampled_from(sorted(METHODS)),
    st.lists(HOSTILE, min_size=3, max_size=3),
    st.dictionaries(st.sampled_from(["by", "reason", "env"]), HOSTILE, max_size=2),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(calls=st.lists(CALLS, min_size=1, max_size=6))
def test_fuzz_feature_flags_on_every_store(
    store: FlagStore, calls: list[tuple[str, list[Any], dict[str, Any]]]
) -> None:
    """Any input: a result or a foundation error with a short message; a failed call
    changes neither state nor history, on every store."""
    with FeatureFlags(DECLARED, store=store) as flags:
        for method, args, given in calls:
            if method == "load_from_config":
                kwargs = {k: v for k, v in given.items() if k == "env"}
            elif method in WRITES:
                kwargs = {k: v for k, v in given.items() if k != "env"}
            else:
                kwargs = {}
            before = _snapshot(flags)
            try:
                result = getattr(flags, method)(*args[: METHODS[method]], **kwargs)
            except errors.FoundationError as exc:
                message = str(exc)
            else:
                message = None
            if message is not None:
                assert len(message) <= MAX_MESSAGE, (method, len(message))
                assert _snapshot(flags) == before, (method, args, kwargs)
                continue
            if method == "enabled":
                assert type(result) is bool


# ---------------------------------------------------------------- SQLiteFlagStore options


@pytest.mark.parametrize(
    "kwargs",
    [
        {"path": "flags\x00.db"},
        {"path": 5},
        {"path": b"flags.db"},
        {"busy_timeout": math.nan},
        {"busy_timeout": "1"},
        {"busy_timeout": -1},
        {"poll_interval": "x"},
        {"poll_interval": 0},
        {"poll_interval": -1},
        {"poll_interval": math.nan},
        {"poll_interval": math.inf},
    ],
    ids=[
        *("nul", "int", "bytes", "busy-nan", "busy-str", "busy-neg", "poll-str", "poll-0"),
        *("poll-neg", "poll-nan", "poll-inf"),
    ],
)
def test_sqlite_store_refuses_bad_options_at_construction(
    tmp_path: Path, kwargs: dict[str, Any]
) -> None:
    """Was: ValueError/TypeError for the path; busy_timeout NaN retried a held lock
    forever; poll_interval "x" killed the watcher thread at the first subscribe (so no
    change from another process was ever reported), 0 or less polled in a hot loop."""
    path = kwargs.pop("path", tmp_path / "flags.db")
    _raises(lambda: SQLiteFlagStore(path, **kwargs), errors.InvalidConfig)
    assert not (tmp_path / "flags.db").exists()


def test_sqlite_store_messages_stay_short_for_a_long_path(tmp_path: Path) -> None:
    """Was: a 100 kB FlagError message (the path, whole)."""
    _raises(lambda: SQLiteFlagStore(tmp_path / ("x" * 100_000)), errors.FlagError)


def test_migration_refuses_what_is_not_flags_a_plan_or_checks(migration: Migration) -> None:
    """Was: AttributeError for Migration(flags, 5) and Migration(5, plan), TypeError for
    readiness=5 (and for health=5 only at check_health), and for from_store(flags, [])."""
    flags, plan = migration.flags, migration.plan
    _raises(lambda: Migration(5, plan), errors.InvalidFlagValue)  # type: ignore[arg-type]
    _raises(lambda: Migration(flags, 5), errors.MigrationError)  # type: ignore[arg-type]
    _raises(lambda: Migration(flags, plan, readiness=5), errors.MigrationError)  # type: ignore[arg-type]
    _raises(lambda: Migration(flags, plan, readiness=[5]), errors.MigrationError)  # type: ignore[list-item]
    thresholds = HealthThresholds(max_error_rate=0.5)
    _raises(
        lambda: Migration(flags, plan, health=5, thresholds=thresholds),  # type: ignore[arg-type]
        errors.MigrationError,
    )
    assert Migration(flags, plan, readiness=[]).readiness == ()
    for name in ([], 5, "x" * 100_000):
        _raises(lambda n=name: Migration.from_store(flags, n), errors.MigrationError)  # type: ignore[misc]
    assert Migration.from_store(flags, "default").plan.to_dict() == plan.to_dict()


def test_a_strenum_actor_is_kept_as_the_plain_string_on_every_store(store: FlagStore) -> None:
    """Was: the memory store kept the enum member itself in allow/deny and history,
    while SQLite and Redis kept the string: the stores held different things."""

    class Who(enum.StrEnum):
        ANA = "ana"

    with FeatureFlags(DECLARED, store=store) as flags:
        flags.allow("beta", Who.ANA)
        flags.deny("dark", Who.ANA)
        flags.assign("color", Who.ANA, "blue")
        states = store.load_states()
        kept = [*states["beta"].allow, *states["dark"].deny, *states["color"].assign]
        assert [type(a) for a in kept] == [str, str, str]
        assert [type(a) for c in flags.history() for a in c.new.allow | c.new.deny] == [str, str]
        assert flags.value("color", "ana") == "#00f"


def test_a_closed_feature_flags_answers_closed_whatever_the_arguments(store: FlagStore) -> None:
    """Was: set("beta", 5) after close() was InvalidFlagValue, not Closed."""
    flags = FeatureFlags(DECLARED, store=store)
    flags.close()
    calls: list[Callable[[], object]] = [
        lambda: flags.set("beta", 5),  # type: ignore[arg-type]
        lambda: flags.set([], True),  # type: ignore[arg-type]
        lambda: flags.set_percentage("beta", math.nan),
        lambda: flags.allow("beta", []),  # type: ignore[arg-type]
        lambda: flags.assign("color", [], "nope"),  # type: ignore[arg-type]
        lambda: flags.set_split("color", 5),  # type: ignore[arg-type]
        lambda: flags.load_from_config(5, env=5),  # type: ignore[arg-type]
        lambda: flags.enabled([]),  # type: ignore[arg-type]
        lambda: flags.enabled("beta", []),  # type: ignore[arg-type]
        lambda: flags.evaluate("color", "ana"),
        lambda: flags.value("color"),
        lambda: flags.state("beta"),
        flags.history,
        lambda: flags.names,
        lambda: flags.flag("beta"),
        lambda: flags.subscribe(print),
        lambda: flags.reset_all(by=5),  # type: ignore[arg-type]
        lambda: flags.disable("beta", by=5),  # type: ignore[arg-type]
    ]
    for call in calls:
        _raises(call, errors.Closed)
    flags.close()  # idempotent


# ---------------------------------------------------------------- one call, three stores

STORE_KEYS = st.sampled_from(["beta", "dark", "p", "", "\ud800", 5, None, [], "x" * 300])
STATES = st.sampled_from([FlagState(True), FlagState(False, 33.3, frozenset({"a"})), None, 5])
STAGES = st.sampled_from([0, 1, 2, 2**63 - 1, 2**63, -1, True, 1.5])
STORE_OPS = st.one_of(
    st.tuples(st.just("put"), STORE_KEYS, STATES),
    st.tuples(st.just("put_migration"), STORE_KEYS, STAGES),
    st.tuples(st.just("get"), STORE_KEYS, st.none()),
    st.tuples(st.just("history"), STORE_KEYS, st.none()),
    st.tuples(st.just("migration_stage"), STORE_KEYS, st.none()),
    st.tuples(st.just("migration_history"), STORE_KEYS, st.none()),
    st.tuples(st.just("record_plan"), STORE_KEYS, st.sampled_from([MigrationPlan.default(), 5])),
)


def _apply(store: FlagStore, op: tuple[str, Any, Any]) -> object:
    """One store call; its result, or the foundation error's type (others propagate)."""
    what, key, arg = op
    event = MigrationEvent("p", "advance", 0, 1, "ops", "go", 2.0)
    calls: dict[str, Callable[[], object]] = {
        "put": lambda: store.transaction(
            lambda t: t.put(key, arg, _change(key if isinstance(key, str) else "beta"))
        ),
        "put_migration": lambda: store.transaction(lambda t: t.put_migration(key, arg, event)),
        "get": lambda: store.transaction(lambda t: t.get(key)),
        "history": lambda: [c.to_dict() for c in store.history(key)],
        "migration_stage": lambda: store.migration_stage(key),
        "migration_history": lambda: [e.to_dict() for e in store.migration_history(key)],
        "record_plan": lambda: store.record_plan(key, arg),
    }
    try:
        return calls[what]()
    except errors.FoundationError as exc:
        error: errors.FoundationError = exc
    assert len(str(error)) <= MAX_MESSAGE
    return type(error)


@pytest.fixture
def stores(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], list[FlagStore]]]:
    """``stores()``: a fresh memory, SQLite and Redis store (all closed at teardown)."""
    from foundation.flags import RedisFlagStore

    server = request.getfixturevalue("redis_server")
    opened: list[FlagStore] = []

    def make() -> list[FlagStore]:
        n = len(opened)
        made = [
            MemoryFlagStore(),
            SQLiteFlagStore(tmp_path / f"flags-{n}.db"),
            RedisFlagStore(server.url, namespace=f"adv-{id(tmp_path)}-{n}", cache_path=None),
        ]
        opened.extend(made)
        return made

    yield make
    for store in opened:
        store.close()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(STORE_OPS, min_size=1, max_size=8))
def test_the_three_stores_answer_every_call_alike(
    stores: Callable[[], list[FlagStore]], ops: list[tuple[str, Any, Any]]
) -> None:
    """The same calls, good and bad, on memory, SQLite and Redis: the same results,
    the same error types, and the same state, history and stages afterwards."""
    memory, sqlite, redis = stores()
    for op in ops:
        answers = [_apply(s, op) for s in (memory, sqlite, redis)]
        assert answers[0] == answers[1] == answers[2], (op, answers)
    snapshots = [_store_snapshot(s) for s in (memory, sqlite, redis)]
    assert snapshots[0] == snapshots[1] == snapshots[2]


def test_a_tool_opens_a_store_whose_catalogue_holds_a_flag_renamed_by_case(
    store: FlagStore,
) -> None:
    """Was: after version 2 renamed "Beta" to "beta", FeatureFlags.from_store (so the CLI
    and the admin API) raised InvalidFlagValue 'differ only by case' for good: the
    catalogue keeps every version's declarations."""
    FeatureFlags([Flag("Beta")], store=store).close()
    with FeatureFlags([Flag("beta")], store=store) as app:
        app.enable("beta", by="ops")
    with FeatureFlags.from_store(store) as tool:
        assert tool.names == ("Beta", "beta")
        assert tool.enabled("beta") is True
        assert tool.enabled("Beta") is False
    with pytest.raises(errors.InvalidFlagValue, match="only by case"):  # still, for an app
        FeatureFlags([Flag("Beta"), Flag("beta")], store=store)


def test_strenum_declarations_and_variants_are_kept_as_plain_strings(store: FlagStore) -> None:
    """Was: Flag(Names.BETA).name stayed the enum member (so did names, the memory
    catalogue and a pinned variant), while SQLite and Redis gave plain strings back."""

    class Variant(enum.StrEnum):
        RED = "red"
        BLUE = "blue"

    declared = [
        Flag(Names.BETA),
        Flag("color", variants={"red": 1, "blue": 2}, default=Variant.RED),
    ]
    assert [type(f.name) for f in declared] == [str, str]
    assert type(declared[1].default) is str
    with FeatureFlags(declared, store=store) as flags:
        assert [type(n) for n in flags.names] == [str, str]
        flags.assign("color", "ana", Variant.BLUE)
        pinned = store.load_states()["color"].assign
        assert [type(v) for v in pinned.values()] == [str]
        assert [type(n) for n in store.catalogue()] == [str, str]
        assert flags.value("color", "ana") == 2
