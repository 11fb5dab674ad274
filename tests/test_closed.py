"""``errors.Closed``: one answer for every call of every closed object (issue 11, item 4).

Registries are covered on every backend by ``tests/contract/test_use_after_close.py``;
this file covers the other closeables — ``FeatureFlags`` (and a ``Migration``
over it), the flag stores, ``MonitorManager``, the ``SupervisorThread`` handle —
and the backend-specific calls of ``ThreadLocalRegistry`` and
``MigratingRegistry``. Each closed object: every public call raises
``Closed`` (a ``RuntimeError`` and a ``FoundationError``), ``close()`` stays
idempotent, and the documented read-only figures keep answering.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import os
import threading
from collections.abc import Callable
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
    SQLiteFlagStore,
    ThreadLocalRegistry,
    spawn_thread,
)
from foundation.errors import Closed, FoundationError
from foundation.flags import FlagChange, FlagStore, MemoryFlagStore
from foundation.liveness import MonitorManager, OSProcess
from foundation.supervision import ChildSpec, Supervisor
from tests.contract.backends import BackendSpec, backend_params
from tests.redis_support import RedisServer

FLAG = "use_ets_agent_registry"
DECLARED = [
    Flag(FLAG),
    Flag("enable_migration_monitoring"),
    Flag("beta"),
    Flag("color", variants={"red": "#f00", "blue": "#00f"}, default="red"),
]


def assert_closed(call: Callable[[], object]) -> None:
    with pytest.raises(Closed) as info:
        call()
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, FoundationError)
    assert "closed" in str(info.value)


# ---------------------------------------------------------------------------- FeatureFlags

FLAGS_CALLS: dict[str, Callable[[FeatureFlags], object]] = {
    "enabled": lambda f: f.enabled("beta"),
    "enabled(actor)": lambda f: f.enabled("beta", actor="user-1"),
    "enabled(undeclared)": lambda f: f.enabled("nope"),
    "state": lambda f: f.state("beta"),
    "names": lambda f: f.names,
    "flag": lambda f: f.flag("beta"),
    "history": lambda f: f.history(),
    "history(name)": lambda f: f.history("beta"),
    "enable": lambda f: f.enable("beta"),
    "disable": lambda f: f.disable("beta"),
    "set": lambda f: f.set("beta", True),
    "set_percentage": lambda f: f.set_percentage("beta", 10),
    "allow": lambda f: f.allow("beta", "ana"),
    "deny": lambda f: f.deny("beta", "bob"),
    "deny(bad actor)": lambda f: f.deny("beta", [1]),  # type: ignore[arg-type]
    "allow(bad actor)": lambda f: f.allow("beta", [1]),  # type: ignore[arg-type]
    "clear": lambda f: f.clear("beta"),
    "reset_all": lambda f: f.reset_all(),
    "load_from_config": lambda f: f.load_from_config({"beta": True}, env=None),
    "load_from_config(env)": lambda f: f.load_from_config(),
    "subscribe": lambda f: f.subscribe(lambda change: None),
    "value": lambda f: f.value("color"),
    "value(actor)": lambda f: f.value("color", actor="user-1"),
    "variant": lambda f: f.variant("beta", actor="user-1"),
    "evaluate": lambda f: f.evaluate("beta"),
    "assign": lambda f: f.assign("color", "ana", "blue"),
    "set_split": lambda f: f.set_split("color", {"red": 50, "blue": 50}),
}


def test_every_public_call_of_feature_flags_is_checked() -> None:
    public = {
        n
        for n in dir(FeatureFlags)
        if not n.startswith("_")
        and not isinstance(inspect.getattr_static(FeatureFlags, n), classmethod | staticmethod)
    }
    checked = {n.split("(")[0] for n in FLAGS_CALLS} | {"close", "store"}
    assert public <= checked, f"add to FLAGS_CALLS: {public - checked}"


@pytest.mark.parametrize("call", list(FLAGS_CALLS))
def test_a_closed_feature_flags_refuses_every_call(call: str) -> None:
    flags = FeatureFlags(DECLARED)
    flags.set_percentage("beta", 50)  # a rollout: the actor path has a rule to consult
    unsubscribe = flags.subscribe(lambda change: None)
    flags.close()
    assert_closed(lambda: FLAGS_CALLS[call](flags))
    flags.close()  # idempotent
    unsubscribe()  # an earlier unsubscribe still works (does nothing)
    unsubscribe()


def test_the_store_of_a_closed_feature_flags_is_still_reachable_to_close_it(
    tmp_path: Path,
) -> None:
    flags = FeatureFlags(DECLARED, store=SQLiteFlagStore(tmp_path / "f.sqlite3"))
    flags.close()
    assert_closed(lambda: flags.enabled("beta"))
    flags.store.close()  # the documented exception: a store you passed is yours to close
    assert_closed(flags.store.load_states)


def test_a_closed_feature_flags_tells_listeners_nothing_more() -> None:
    store = MemoryFlagStore()
    seen: list[FlagChange] = []
    flags = FeatureFlags(DECLARED, store=store)
    flags.subscribe(seen.append)
    flags.enable("beta")
    flags.close()
    assert [c.flag for c in seen] == ["beta"]
    # A store passed in stays the caller's: open, and a new service reads it.
    with FeatureFlags(DECLARED, store=store) as again:
        assert again.enabled("beta") is True
    store.close()


def test_a_migration_over_closed_flags_answers_closed() -> None:
    flags = FeatureFlags(DECLARED)
    migration = Migration(flags, MigrationPlan.default())
    migration.advance(by="ana")
    flags.close()
    for call in (
        migration.status,
        migration.history,
        lambda: migration.advance(by="ana"),
        lambda: migration.rollback_to(0),
        lambda: migration.emergency_rollback("spike"),
        lambda: Migration(flags, MigrationPlan.default()),
    ):
        assert_closed(call)


# ---------------------------------------------------------------------------- flag stores

STORE_CALLS: dict[str, Callable[[FlagStore], object]] = {
    "load_states": lambda s: s.load_states(),
    "transaction": lambda s: s.transaction(lambda txn: txn.get("beta")),
    "kill_switch": lambda s: s.kill_switch(lambda txn: None),
    "history": lambda s: s.history(),
    "migration_stage": lambda s: s.migration_stage("default"),
    "migration_history": lambda s: s.migration_history("default"),
    "subscribe": lambda s: s.subscribe(lambda changes: None),
    "subscribe(None)": lambda s: s.subscribe(None),  # type: ignore[arg-type]
    "catalogue": lambda s: s.catalogue(),
    "record_catalogue": lambda s: s.record_catalogue([Flag("beta")]),
    "plans": lambda s: s.plans(),
    "record_plan": lambda s: s.record_plan("default", MigrationPlan.default()),
    "plan_flags": lambda s: s.plan_flags("default"),
}


def test_every_public_call_of_the_store_contract_is_checked() -> None:
    public = {n for n in dir(FlagStore) if not n.startswith("_")}
    checked = set(STORE_CALLS) | {"close"}
    assert public <= checked, f"add to STORE_CALLS: {public - checked}"


def _memory_store(tmp_path: Path, request: pytest.FixtureRequest) -> FlagStore:
    return MemoryFlagStore()


def _sqlite_store(tmp_path: Path, request: pytest.FixtureRequest) -> FlagStore:
    return SQLiteFlagStore(tmp_path / "flags.sqlite3")


def _redis_store(tmp_path: Path, request: pytest.FixtureRequest) -> FlagStore:
    from foundation.flags import RedisFlagStore

    server: RedisServer = request.getfixturevalue("redis_server")
    return RedisFlagStore(
        server.url, namespace=f"closed-{os.getpid()}-{id(tmp_path):x}", cache_path=tmp_path / "n"
    )


STORES = {"memory": _memory_store, "sqlite": _sqlite_store, "redis": _redis_store}


@pytest.mark.parametrize("kind", list(STORES))
def test_a_closed_store_refuses_every_call(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = STORES[kind](tmp_path, request)
    store.transaction(lambda txn: None)  # usable while open
    unsubscribe = store.subscribe(lambda changes: None)
    store.close()
    for name, call in STORE_CALLS.items():
        try:
            call(store)
        except Closed as exc:
            message = str(exc)
        except Exception as exc:
            pytest.fail(f"{kind} store: {name} raised {exc!r}, not Closed")
        else:
            pytest.fail(f"{kind} store: {name} answered after close")
        assert "closed" in message, name
    store.close()  # idempotent
    unsubscribe()


def test_a_closed_redis_store_refuses_pending_and_status(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = _redis_store(tmp_path, request)
    assert store.status().connected  # type: ignore[attr-defined]
    store.close()
    assert_closed(store.pending)  # type: ignore[attr-defined]
    assert_closed(store.status)  # type: ignore[attr-defined]  # as RedisRegistry.status()


def test_a_feature_flags_over_a_closed_store_refuses_to_start() -> None:
    store = MemoryFlagStore()
    store.close()
    assert_closed(lambda: FeatureFlags(DECLARED, store=store))


# ---------------------------------------------------------------------------- MonitorManager


def test_a_closed_monitor_manager_refuses_every_call_reads_included(
    stop: threading.Event,
) -> None:
    manager = MonitorManager(name="closed-test")
    manager.monitor(spawn_thread(stop.wait), lambda down: None)
    manager.close()
    manager.close()  # idempotent
    foreign = threading.Thread(target=stop.wait, daemon=True)
    foreign.start()
    for agent in (
        spawn_thread(stop.wait),
        foreign,
        concurrent.futures.Future(),
        OSProcess(os.getpid()),
    ):
        assert_closed(lambda agent=agent: manager.monitor(agent, lambda down: None))
        assert_closed(lambda agent=agent: manager.monitor(agent, None))  # type: ignore[arg-type]
    # Before any argument is judged: an unsupported agent, a callback that is none.
    assert_closed(lambda: manager.monitor(object(), lambda down: None))
    assert_closed(lambda: manager.monitor(object(), None))  # type: ignore[arg-type]
    # Reads too: the figures were the manager's, and it is gone.
    assert_closed(manager.active_count)
    assert_closed(manager.stats)
    assert manager.closed is True
    assert "closed" in repr(manager)


# ---------------------------------------------------------------------------- SupervisorThread


def _worker(ctx: Any) -> None:
    ctx.ready()
    ctx.stopping.wait()


SUPERVISOR_CALLS: dict[str, Callable[[Any], object]] = {
    "which_children": lambda h: h.which_children(),
    "count_children": lambda h: h.count_children(),
    "which_child": lambda h: h.which_child("w"),
    "get_childspec": lambda h: h.get_childspec("w"),
    "start_child": lambda h: h.start_child(ChildSpec("late", _worker)),
    "terminate_child": lambda h: h.terminate_child("w"),
    "restart_child": lambda h: h.restart_child("w"),
    "delete_child": lambda h: h.delete_child("w"),
}


def test_a_stopped_supervisor_handle_refuses_every_call() -> None:
    handle = Supervisor([ChildSpec("w", _worker)], name="closed-test").run_in_thread()
    assert handle.closed is False
    assert handle.count_children().active == 1
    handle.stop()
    assert handle.closed is True
    for call in SUPERVISOR_CALLS.values():
        assert_closed(lambda call=call: call(handle))
    handle.stop()  # idempotent
    handle.close()  # the same as stop()
    handle.wait()  # the supervisor has ended: wait() answers at once
    assert not handle.thread.is_alive()


def test_every_management_call_of_the_handle_is_checked() -> None:
    from foundation.supervision import SupervisorThread

    public = {n for n in dir(SupervisorThread) if not n.startswith("_")}
    answering = {"stop", "close", "wait", "closed", "thread", "loop"}
    assert public <= set(SUPERVISOR_CALLS) | answering, public - set(SUPERVISOR_CALLS)


# ---------------------------------------------------------------------------- registry extras


def test_a_closed_thread_local_registry_refuses_its_admin_calls(stop: threading.Event) -> None:
    registry = ThreadLocalRegistry()
    registry.register("w", spawn_thread(stop.wait))
    registry.close()
    assert_closed(registry.stats)
    assert_closed(registry.snapshot_all_threads)
    registry.close()


def test_a_closed_migrating_registry_refuses_its_migration_calls(stop: threading.Event) -> None:
    flags = FeatureFlags(DECLARED)
    registry = MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags)
    registry.register("w", spawn_thread(stop.wait))
    flags.enable(FLAG)
    registry.close()
    for call in (
        registry.divergences,
        registry.divergence_count,
        registry.readiness,
        registry.finish,
    ):
        assert_closed(call)
    # A flag change after close changes nothing and reaches no closed backend.
    flags.disable(FLAG)
    assert_closed(lambda: registry.lookup("w"))
    flags.close()


def test_a_flag_flip_racing_close_never_reopens_the_reader(stop: threading.Event) -> None:
    flags = FeatureFlags(DECLARED)
    for _ in range(20):
        registry = MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags)
        flipper = threading.Thread(target=lambda: [flags.set(FLAG, i % 2 == 0) for i in range(50)])
        flipper.start()
        registry.close()
        flipper.join()
        assert_closed(lambda registry=registry: registry.lookup("w"))
        assert_closed(lambda registry=registry: registry.count())
    flags.close()


def test_closed_keeps_existing_except_runtime_error_code_working() -> None:
    flags = FeatureFlags(DECLARED)
    flags.close()
    with pytest.raises(RuntimeError) as info:  # what callers wrote before Closed existed
        flags.enabled("beta")
    assert type(info.value) is Closed


# ---------------------------------------------------------------------------- `with` after close
#
# Entering a closed object is a call like any other: ``Closed`` at once, as httpx
# refuses a closed client ("Cannot reopen a client instance, once it has been
# closed"). Before, ``with registry:`` on a closed registry returned it, and the
# block failed later, at its first call, or not at all (a block that only closed).


def _entered(closeable: Any) -> None:
    with closeable:
        pytest.fail(f"{closeable!r}: the with block ran on a closed object")


@pytest.mark.parametrize("backend", backend_params())
def test_entering_a_closed_registry_raises_closed(
    backend: BackendSpec, request: pytest.FixtureRequest
) -> None:
    with backend.make(request, ()) as registry:
        with registry as entered:  # open: the block runs, on the registry itself
            assert entered is registry
        assert_closed(lambda: _entered(registry))  # the first block's exit closed it
        assert_closed(lambda: _entered(registry))


@pytest.mark.parametrize("kind", list(STORES))
def test_entering_a_closed_store_raises_closed(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = STORES[kind](tmp_path, request)
    with store as entered:
        assert entered is store
    assert_closed(lambda: _entered(store))


def test_entering_closed_feature_flags_raises_closed() -> None:
    flags = FeatureFlags(DECLARED)
    with flags as entered:
        assert entered is flags
    assert_closed(lambda: _entered(flags))


def test_entering_a_stopped_supervisor_handle_raises_closed() -> None:
    with Supervisor([ChildSpec("w", _worker)], name="enter-test").run_in_thread() as handle:
        assert handle.count_children().active == 1
    assert_closed(lambda: _entered(handle))
    assert not handle.thread.is_alive()


def test_entering_a_closed_monitor_manager_raises_closed() -> None:
    manager = MonitorManager(name="enter-test")
    with manager as entered:
        assert entered is manager
    assert_closed(lambda: _entered(manager))


def test_entering_a_closed_admin_server_raises_closed() -> None:
    pytest.importorskip("uvicorn")
    from foundation.admin import AdminServer

    server = AdminServer(bind="127.0.0.1:0")
    with server:
        assert server.url
    assert_closed(lambda: _entered(server))


# ---------------------------------------------------------------------------- RedisObserver

OBSERVER_CALLS: dict[str, Callable[[Any], object]] = {
    "list_all": lambda o: o.list_all(),
    "lookup": lambda o: o.lookup("k"),
    "query": lambda o: o.query([]),
    "query(bad criteria)": lambda o: o.query("bad"),  # Closed before the criteria are judged
    "count": lambda o: o.count(),
    "recently_dead": lambda o: o.recently_dead(),
    "nodes": lambda o: o.nodes(),
    "status": lambda o: o.status(),
    "subscribe": lambda o: o.subscribe(lambda event: None),
    "with": _entered,
}


def test_every_public_call_of_the_redis_observer_is_checked() -> None:
    from foundation.registry._redis._observer import RedisObserver

    public = {n for n in dir(RedisObserver) if not n.startswith("_")}
    checked = {n.split("(")[0] for n in OBSERVER_CALLS} | {"close", "connected"}
    assert public <= checked, f"add to OBSERVER_CALLS: {public - checked}"


@pytest.mark.parametrize("call", list(OBSERVER_CALLS))
def test_a_closed_redis_observer_refuses_every_call(
    call: str, request: pytest.FixtureRequest
) -> None:
    from foundation.registry._redis._observer import RedisObserver

    server: RedisServer = request.getfixturevalue("redis_server")
    observer = RedisObserver(server.url, namespace=f"closed-obs-{os.getpid()}", timeout=1.0)
    observer.close()
    assert_closed(lambda: OBSERVER_CALLS[call](observer))
    assert observer.connected is False
    observer.close()  # idempotent
