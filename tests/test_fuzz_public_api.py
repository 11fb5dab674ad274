"""Fuzzing the public API: every call succeeds or raises a ``foundation.errors`` type.

Hypothesis drives random sequences of public calls with hostile arguments
(unhashable and out-of-range keys, lone surrogates, 5000-digit ints, NaN,
5000-deep structures, sets, bytes, enum members, wrong types everywhere)
against every registry backend of the contract suite (memory, thread_local,
the three MigratingRegistry modes, and RedisRegistry on a real
redis-server) and against ``FeatureFlags`` on the memory and SQLite stores.

After each call the test checks exactly the contract (docs/contract.md "Failure
behaviour", docs/keys-and-metadata.md):

- any exception is a ``FoundationError`` whose message is short, except the
  ``TypeError`` of a yes/no option given a non-bool (``replace=1``), which must
  come, and first;
- a failed call changed nothing: the observable state afterwards equals the
  state before.

The examples are bounded so that this file runs in well under 30 s.
"""

from __future__ import annotations

import enum
import math
import os
import tempfile
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundation import FeatureFlags, Flag, SQLiteFlagStore
from foundation.errors import FoundationError, InvalidFlagValue, InvalidKey, UnknownFlag
from foundation.flags._config import MAX_CONFIG_BYTES
from foundation.liveness import spawn_thread
from foundation.registry import Registry
from tests.contract.backends import BackendSpec, backend_params

MESSAGE_LIMIT = 1000

FUZZ = settings(
    max_examples=50,  # about 250 calls per backend; the whole file runs in well under 30 s
    deadline=None,
    database=None,
    # One registry per test is emptied at the start of every example (see _empty);
    # hostile values are large on purpose, and a loaded CI machine is slow.
    suppress_health_check=list(HealthCheck),
)


class Role(enum.StrEnum):
    IO = "io"


class Level(enum.IntEnum):
    HIGH = 3


def _nested(depth: int, leaf: Any, kind: Callable[[list[Any]], Any] = list) -> Any:
    value = leaf
    for _ in range(depth):
        value = kind([value])
    return value


_cyclic: dict[str, Any] = {}
_cyclic["self"] = _cyclic

# Values no ordinary strategy draws, each a known past offender.
HOSTILE = [
    "\ud800",
    "a\udfffb",
    10**5000,
    -(10**400),
    2**63,
    -(2**63) - 1,
    math.nan,
    math.inf,
    -math.inf,
    True,
    b"bytes",
    bytearray(b"x"),
    {1, 2},
    frozenset({True}),
    object(),
    _nested(5000, 1),
    _nested(5000, "x", tuple),
    _nested(40, 1, lambda v: {"k": v[0]}),
    _cyclic,
    Role.IO,
    Level.HIGH,
    "x" * 70_000,
    [],
    {},
    (),
]


def _hostile(index: int) -> Any:
    return HOSTILE[index]


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.text(alphabet=st.characters(codec=None, categories=["Cs", "Lo", "Cc"]), max_size=4),
    st.binary(max_size=4),
    # By index: hypothesis reprs its strategies, and 10**5000 has no repr.
    st.integers(0, len(HOSTILE) - 1).map(_hostile),
)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.frozensets(st.one_of(st.integers(), st.text(max_size=3)), max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), inner, max_size=3),
    ),
    max_leaves=8,
)
keys = st.one_of(st.sampled_from(["a", "b", 1, ("t", 1), Role.IO, 2.0]), anything)
hashables = st.one_of(
    st.text(max_size=4),
    st.integers(),
    st.floats(),
    st.none(),
    st.booleans(),
    st.sampled_from([Role.IO, Level.HIGH, ("t", 1), frozenset({1})]),
)
metadata = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["role", "n", "tags"]), anything, max_size=3),
    st.dictionaries(hashables, anything, max_size=3),
    anything,
)
criteria = st.one_of(
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(["role", "n", "tags.x", "", "a..b"]), anything),
            st.one_of(st.sampled_from(["eq", "neq", "in", "not_in", "gt", "lte"]), anything),
            anything,
        ),
        max_size=3,
    ),
    anything,
)


# --------------------------------------------------------------------------- registries


def _registry_state(registry: Registry) -> dict[Any, Any]:
    return {e.key: (e.agent, dict(e.metadata)) for e in registry.list_all()}


def _empty(registry: Registry) -> None:
    for entry in registry.list_all():
        registry.unregister(entry.key)
    assert registry.count() == 0


def _check_call(call: Callable[[], object], state: Callable[[], object]) -> None:
    """Run one public call: success, or a FoundationError with a short message and no change."""
    before = state()
    error: FoundationError | None = None
    try:
        call()
    except FoundationError as exc:  # anything else propagates: not a library error
        error = exc
    if error is not None:
        message = str(error)
        assert len(message) < MESSAGE_LIMIT, f"{type(error).__name__} message: {len(message)}"
        assert state() == before, f"a failed call ({type(error).__name__}) changed state"


class _RefusedOption(FoundationError):
    """Stands in for the ``TypeError`` of a yes/no option given a non-bool, so that
    ``_check_call`` checks that call as any failed call (bounded, nothing changed)."""


def _bool_option(flag: object, call: Callable[[], object]) -> Callable[[], object]:
    """``call``; if ``flag`` is no bool, it must raise ``TypeError``, before anything else."""
    if flag is True or flag is False:
        return call

    def refused() -> None:
        with pytest.raises(TypeError, match="must be True or False") as info:
            call()
        raise _RefusedOption(str(info.value))

    return refused


@pytest.fixture(params=backend_params())
def fuzzed(request: pytest.FixtureRequest) -> Iterator[tuple[Registry, list[Any]]]:
    spec: BackendSpec = request.param
    stop = threading.Event()
    live = [spawn_thread(stop.wait, name=f"fuzz-agent-{i}") for i in range(2)]
    dead = spawn_thread(lambda: None, name="fuzz-dead")
    dead.join(10)
    agents = [*live, dead, None, "not an agent", 42]
    with spec.make(request, ("role", "tags")) as reg:
        yield reg, agents
    stop.set()
    for thread in live:
        thread.join(10)


def test_every_registry_call_succeeds_or_raises_a_library_error_and_changes_nothing(
    fuzzed: tuple[Registry, list[Any]],
) -> None:
    registry, agents = fuzzed

    ops = st.one_of(
        st.tuples(
            st.just("register"),
            keys,
            st.sampled_from(range(len(agents))),
            metadata,
            st.one_of(st.booleans(), anything),  # replace: a non-bool is TypeError
        ),
        st.tuples(st.just("update_metadata"), keys, metadata),
        st.tuples(st.just("unregister"), keys),
        st.tuples(st.just("lookup"), keys),
        st.tuples(st.just("contains"), keys),
        st.tuples(st.just("query"), criteria),
        st.tuples(st.just("find_by_attribute"), anything, anything),
        st.tuples(st.just("count")),
        st.tuples(
            st.just("register_many"),
            st.lists(st.tuples(keys, st.just(0), metadata)),
            st.one_of(st.booleans(), anything),
        ),
    )

    def call(op: tuple[Any, ...]) -> Callable[[], object]:
        name, *args = op
        if name == "register":
            key, agent, md, replace = args
            return _bool_option(
                replace, lambda: registry.register(key, agents[agent], md, replace=replace)
            )
        if name == "register_many":
            items = [(k, agents[a], md) for k, a, md in args[0]]
            return _bool_option(args[1], lambda: registry.register_many(items, replace=args[1]))
        if name == "contains":
            return lambda: args[0] in registry
        if name == "count":
            return lambda: (registry.count(), len(registry), registry.list_all())
        return lambda: getattr(registry, name)(*args)

    @FUZZ
    @given(st.lists(ops, min_size=1, max_size=8))
    def run(sequence: list[tuple[Any, ...]]) -> None:
        _empty(registry)
        for op in sequence:
            if op[0] == "register_many" and not hasattr(registry, "register_many"):
                continue
            _check_call(call(op), lambda: _registry_state(registry))

    run()


def test_update_metadata_with_an_unhashable_key_is_invalid_key_on_every_backend(
    fuzzed: tuple[Registry, list[Any]],
) -> None:
    registry, _ = fuzzed
    with pytest.raises(InvalidKey):
        registry.update_metadata([], {"a": 1})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- flags

FLAGS = [Flag("alpha"), Flag("beta", default=True), Flag("rollout")]


@pytest.fixture(params=["memory", "sqlite"])
def flags(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FeatureFlags]:
    store = SQLiteFlagStore(tmp_path / "flags.sqlite3") if request.param == "sqlite" else None
    with FeatureFlags(FLAGS, store=store) as service:
        yield service
    if store is not None:
        store.close()


def _flag_state(flags: FeatureFlags) -> tuple[Any, ...]:
    return tuple(flags.state(n) for n in flags.names), len(flags.history())


names = st.one_of(st.sampled_from(["alpha", "beta", "rollout", "Alpha", "nope"]), anything)
audit = st.one_of(st.none(), st.text(max_size=6), anything)
toml_bytes = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"[flags]\nalpha = true\n",
            b"[flags]\nalpha = '50%'\nbeta = 'off'\n",
            b"[flags]\nalpha = \xff\n",
            b"[flags]\nx = " + b"[" * 5000,
            b"[flags]\nalpha = " + b"{a=" * 3000,
            b"[tool]\nfoundation = 1\n",
            b"flags = 3\n",
        ]
    ),
    st.text(max_size=64).map(lambda t: ("[flags]\n" + t).encode("utf-8", "surrogatepass")),
)


def test_every_flags_call_succeeds_or_raises_a_library_error_and_changes_nothing(
    flags: FeatureFlags, tmp_path: Path
) -> None:
    flags.set_percentage("rollout", 50.0)
    config = tmp_path / "flags.toml"
    ops = st.one_of(
        st.tuples(st.just("enabled"), names, st.one_of(st.none(), anything)),
        st.tuples(st.just("state"), names),
        st.tuples(st.just("flag"), names),
        st.tuples(st.just("history"), st.one_of(st.none(), names)),
        st.tuples(st.just("enable"), names, audit, audit),
        st.tuples(st.just("disable"), names, audit, audit),
        st.tuples(st.just("clear"), names, audit, audit),
        st.tuples(st.just("set"), names, anything, audit),
        st.tuples(st.just("set_percentage"), names, anything, audit),
        st.tuples(st.just("allow"), names, anything, audit),
        st.tuples(st.just("deny"), names, anything, audit),
        st.tuples(
            st.just("load_mapping"),
            st.dictionaries(
                st.one_of(st.sampled_from(["alpha", "beta"]), hashables), anything, max_size=3
            ),
        ),
        st.tuples(st.just("load_file"), toml_bytes),
        st.tuples(st.just("load_env"), st.dictionaries(st.text(max_size=20), st.text(max_size=8))),
    )

    def call(op: tuple[Any, ...]) -> Callable[[], object]:
        name, *args = op
        if name in ("enable", "disable", "clear"):
            return lambda: getattr(flags, name)(args[0], by=args[1], reason=args[2])
        if name in ("set", "set_percentage", "allow", "deny"):
            return lambda: getattr(flags, name)(args[0], args[1], by=args[2])
        if name == "load_mapping":
            return lambda: flags.load_from_config(args[0], env=None)
        if name == "load_file":
            config.write_bytes(args[0])
            return lambda: flags.load_from_config(config, env=None)
        if name == "load_env":
            env = {"FOUNDATION_FLAG_" + k: v for k, v in args[0].items()}
            return lambda: flags.load_from_config(None, env=env)
        return lambda: getattr(flags, name)(*args)

    @FUZZ
    @given(st.lists(ops, min_size=1, max_size=8))
    def run(sequence: list[tuple[Any, ...]]) -> None:
        for op in sequence:
            _check_call(call(op), lambda: _flag_state(flags))

    run()


# --------------------------------------------------------------------------- the known offenders


def test_known_flag_offenders_raise_library_errors(flags: FeatureFlags) -> None:
    with pytest.raises(UnknownFlag):
        flags.enabled([])  # type: ignore[arg-type]
    with pytest.raises(UnknownFlag) as info:
        flags.enabled(_nested(5000, 1))
    assert len(str(info.value)) < 200
    with pytest.raises(InvalidFlagValue):
        flags.set_percentage("rollout", 10**400)
    with pytest.raises(InvalidFlagValue):
        flags.enable("alpha", by=42)  # type: ignore[arg-type]
    with pytest.raises(InvalidFlagValue):
        flags.enable("alpha", by="\ud800")
    for blank in ("", "   ", "\n"):  # by= names someone; a stored actor too
        with pytest.raises(InvalidFlagValue):
            flags.enable("alpha", by=blank)
        with pytest.raises(InvalidFlagValue):
            flags.allow("alpha", blank or " ", by="ops")
    assert flags.history() == []
    flags.set_percentage("rollout", 50.0)
    answer = flags.enabled("rollout", actor="\ud800")  # hashed with surrogates passed
    assert answer is flags.enabled("rollout", actor="\ud800")


def test_flag_config_files_that_are_not_utf8_too_deep_or_endless_are_invalid(
    flags: FeatureFlags, tmp_path: Path
) -> None:
    before = {n: flags.state(n) for n in flags.names}
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"[flags]\nalpha = '\xe9'\n")
    with pytest.raises(InvalidFlagValue, match="not UTF-8"):
        flags.load_from_config(bad, env=None)
    deep = tmp_path / "deep.toml"
    deep.write_text("[flags]\nalpha = " + "[" * 100_000)
    with pytest.raises(InvalidFlagValue, match="TOML"):
        flags.load_from_config(deep, env=None)
    big = tmp_path / "big.toml"
    big.write_bytes(b"[flags]\n" + b"#" * MAX_CONFIG_BYTES)
    with pytest.raises(InvalidFlagValue, match="larger than"):
        flags.load_from_config(big, env=None)
    if os.path.exists("/dev/zero"):
        tracemalloc.start()
        try:
            with pytest.raises(InvalidFlagValue, match="not a regular file"):
                flags.load_from_config("/dev/zero", env=None)  # endless: refused unread
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 8 * MAX_CONFIG_BYTES  # read up to the cap, never the endless rest
    assert {n: flags.state(n) for n in flags.names} == before  # refused: nothing changed
    assert flags.history() == []


def test_a_flag_config_file_just_under_the_cap_still_loads(
    flags: FeatureFlags, tmp_path: Path
) -> None:
    text = b"[flags]\nalpha = true\n"
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "ok.toml"
    path.write_bytes(text + b"#" * (MAX_CONFIG_BYTES - len(text)))
    flags.load_from_config(path, env=None)
    assert flags.enabled("alpha") is True
