"""MigratingRegistry follows its flag even while a FeatureFlags listener is stuck.

All listeners of one ``FeatureFlags`` share one delivery queue, so a listener
that hangs holds every later delivery. The facade's cached flag is refreshed
by ``FeatureFlags``' table-swap hook, in the thread that applied the change,
so a flip (``advance()``, ``emergency_rollback()``, ``set()``, or another
process's write to a SQLite store) takes effect at the next call regardless.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from foundation import (
    FeatureFlags,
    Flag,
    MemoryRegistry,
    MigratingRegistry,
    Migration,
    MigrationPlan,
    ThreadLocalRegistry,
)
from foundation.flags import FlagChange, SQLiteFlagStore
from tests.faults._subprocess import run_scenario
from tests.migrating.support import FLAG, FLAGS, Agents, Worker, wait_until
from tests.test_fork_closes_inherited import in_child

DEADLINE = 30.0  # generous: a miss is a stale cache, not slowness
DECLARED = (*FLAGS, Flag("other"))
_ROOT = Path(__file__).resolve().parents[2]


class StuckListener:
    """A user listener that hangs on its first call until released (teardown)."""

    def __init__(self, flags: FeatureFlags) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._unsubscribe = flags.subscribe(self._listen)
        # Some unrelated write, in some request thread: it delivers, and hangs there.
        self._writer = threading.Thread(
            target=lambda: flags.enable("other", by="someone"), name="stuck-writer"
        )
        self._writer.start()
        assert self.entered.wait(DEADLINE), "the listener was never called"

    def _listen(self, change: FlagChange) -> None:
        self.entered.set()
        self.release.wait()

    def close(self) -> None:
        self._unsubscribe()
        self.release.set()
        self._writer.join(DEADLINE)
        assert not self._writer.is_alive()


@pytest.fixture
def memory_flags() -> Iterator[FeatureFlags]:
    flags = FeatureFlags(DECLARED)
    yield flags
    flags.close()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "flags.sqlite3"


def _facade(flags: FeatureFlags) -> MigratingRegistry:
    return MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags)


def _stuck(flags: FeatureFlags, request: pytest.FixtureRequest) -> StuckListener:
    stuck = StuckListener(flags)
    request.addfinalizer(stuck.close)
    return stuck


def _in_thread(fn: Callable[[], Any]) -> None:
    """Run ``fn`` in a thread of its own and wait for it (it must return)."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="flipper")
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive(), "the flag write did not return"
    assert not failed, failed


def _assert_routes_to_target(reg: MigratingRegistry, agents: Agents, worker: Worker) -> None:
    """The next calls answer from the shared target: another thread sees a register."""
    assert reg.flag_on
    key = f"on-{len(reg.target.list_all())}"
    reg.register(key, agents.new())
    assert reg.target.lookup(key) is not None
    assert worker.run(lambda: reg.lookup(key)) is not None  # a per-thread legacy would not


def _assert_routes_to_legacy(reg: MigratingRegistry, agents: Agents, worker: Worker) -> None:
    """The next calls answer from the per-thread legacy side: another thread sees nothing."""
    assert not reg.flag_on
    key = f"off-{len(reg.legacy.list_all())}"
    reg.register(key, agents.new())
    assert reg.legacy.lookup(key) is not None  # this thread's legacy view
    assert worker.run(lambda: reg.lookup(key)) is None  # the target would answer it


def test_advance_and_emergency_rollback_take_effect_while_a_listener_is_stuck(
    memory_flags: FeatureFlags,
    agents: Agents,
    worker: Worker,
    request: pytest.FixtureRequest,
) -> None:
    reg = _facade(memory_flags)
    request.addfinalizer(reg.close)
    migration = Migration(memory_flags, MigrationPlan.default())
    _stuck(memory_flags, request)

    _in_thread(lambda: migration.advance(by="ana", reason="stage 1"))
    assert memory_flags.enabled(FLAG)
    _assert_routes_to_target(reg, agents, worker)

    _in_thread(lambda: migration.emergency_rollback("error spike", by="oncall"))
    assert not memory_flags.enabled(FLAG)
    _assert_routes_to_legacy(reg, agents, worker)


def test_set_takes_effect_while_a_listener_is_stuck_both_ways(
    memory_flags: FeatureFlags,
    agents: Agents,
    worker: Worker,
    request: pytest.FixtureRequest,
) -> None:
    memory_flags.enable(FLAG)
    reg = _facade(memory_flags)
    request.addfinalizer(reg.close)
    _stuck(memory_flags, request)

    _in_thread(lambda: memory_flags.set(FLAG, False, by="oncall"))
    _assert_routes_to_legacy(reg, agents, worker)
    _in_thread(lambda: memory_flags.set(FLAG, True, by="oncall"))
    _assert_routes_to_target(reg, agents, worker)


_REMOTE_WRITER = textwrap.dedent(
    """
    import sys
    from foundation import FeatureFlags, Flag, Migration, MigrationPlan
    from foundation.flags import SQLiteFlagStore

    path, verb = sys.argv[1], sys.argv[2]
    declared = [Flag("use_ets_agent_registry"), Flag("enable_migration_monitoring"), Flag("other")]
    with SQLiteFlagStore(path) as store, FeatureFlags(declared, store=store) as flags:
        migration = Migration(flags, MigrationPlan.default())
        if verb == "advance":
            migration.advance(by="remote", reason="stage 1")
        else:
            migration.emergency_rollback("error spike", by="remote")
        print(verb, flags.enabled("use_ets_agent_registry"), flush=True)
    """
)


def _remote(path: Path, verb: str) -> None:
    """Another process runs the migration ``verb`` on the SQLite store at ``path``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-c", _REMOTE_WRITER, str(path), verb],
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == verb, proc.stdout


def test_another_process_flip_through_sqlite_takes_effect_while_a_listener_is_stuck(
    sqlite_path: Path,
    agents: Agents,
    worker: Worker,
    request: pytest.FixtureRequest,
) -> None:
    store = SQLiteFlagStore(sqlite_path)
    request.addfinalizer(store.close)
    flags = FeatureFlags(DECLARED, store=store)
    request.addfinalizer(flags.close)
    reg = _facade(flags)
    request.addfinalizer(reg.close)
    stuck = _stuck(flags, request)

    _remote(sqlite_path, "advance")  # applied by the store's watcher thread
    assert wait_until(lambda: reg.flag_on, DEADLINE), "the facade never followed the flip"
    _assert_routes_to_target(reg, agents, worker)

    _remote(sqlite_path, "rollback")
    assert wait_until(lambda: not reg.flag_on, DEADLINE), "the facade never followed the rollback"
    assert not flags.enabled(FLAG)
    _assert_routes_to_legacy(reg, agents, worker)
    assert not stuck.release.is_set()  # all the while, the listener was stuck


def test_finish_and_close_remove_the_swap_hook(memory_flags: FeatureFlags) -> None:
    before = len(memory_flags._swap_hooks.current)
    finished = _facade(memory_flags)
    closed = _facade(memory_flags)
    assert len(memory_flags._swap_hooks.current) == before + 2
    memory_flags.enable(FLAG)
    finished.finish()
    closed.close()
    assert len(memory_flags._swap_hooks.current) == before
    memory_flags.disable(FLAG)  # ignored once finished (the listener warns of it)
    assert finished.flag_on
    finished.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_the_hook_is_dropped_in_a_forked_child_and_kept_in_the_parent(
    memory_flags: FeatureFlags,
) -> None:
    reg = _facade(memory_flags)
    try:

        def child() -> dict[str, Any]:
            hooks = len(memory_flags._swap_hooks.current)
            reg.close()  # the inherited facade: its close neither hangs nor raises
            memory_flags.close()  # a no-op on an inherited FeatureFlags
            return {"hooks": hooks, "flag_on": reg.flag_on}

        assert in_child(child) == {"hooks": 0, "flag_on": False}
        memory_flags.enable(FLAG)  # the parent's facade still follows
        assert reg.flag_on
    finally:
        reg.close()


def test_a_stand_in_flags_without_the_hook_is_followed_by_its_listener(
    memory_flags: FeatureFlags,
) -> None:
    class StandIn:
        """Only what the constructor asks for: ``enabled`` and ``subscribe``."""

        def enabled(self, name: str) -> bool:
            return memory_flags.enabled(name)

        def subscribe(self, listener: Callable[[FlagChange], None]) -> Callable[[], None]:
            return memory_flags.subscribe(listener)

    reg = MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), StandIn())  # type: ignore[arg-type]
    try:
        assert memory_flags._swap_hooks.current == ()
        memory_flags.enable(FLAG)
        assert reg.flag_on
        memory_flags.disable(FLAG)
        assert not reg.flag_on
    finally:
        reg.close()


def test_a_raising_swap_hook_is_reported_and_never_breaks_the_write() -> None:
    """Default hooks: the write returns, the facade still follows, the error is logged."""
    result = run_scenario(
        """
        from foundation import FeatureFlags, Flag, MemoryRegistry, MigratingRegistry
        from foundation import ThreadLocalRegistry

        flags = FeatureFlags([Flag("use_ets_agent_registry"), Flag("other")])
        calls = []

        def broken(swapped):
            calls.append(swapped)
            raise ListenerBug("hook bug")

        flags._watch_tables(broken)  # before the facade's own hook
        reg = MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags)
        flags.enable("use_ets_agent_registry")
        assert reg.flag_on and calls == [flags], calls
        flags.disable("use_ets_agent_registry", by="oncall")
        assert not reg.flag_on and len(calls) == 2
        reg.close()
        flags.close()
        flags.close()
        print("OK")
        """
    )
    reports = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("LOG ERROR foundation.flags")
        and "exception ignored in flag table swap hook" in line
    ]
    assert len(reports) == 2, result.stderr
    assert "ListenerBug: hook bug" in result.stderr
