"""A raising listener on one backend or flag store, in a plain interpreter.

    python -m tests.chaos.listeners BACKEND

BACKEND is a registry (``memory``, ``thread_local``, ``migrating``, ``redis``)
or a flag store (``memory_flags``, ``sqlite_flags``, ``redis_flags``). A
listener that always raises is subscribed first; then every kind of change is
made (writes by this caller, agent deaths seen by the monitor threads, changes
from another node or store object seen by the tail or watcher threads), each
at least twice so a thread that died on the first would miss the second.
Prints one ``CHAOS-RESULT {json}`` line of facts; ``test_chaos.py`` judges them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Final

from foundation._demo._redis_server import RedisServerProcess
from foundation.liveness import spawn_thread
from tests.chaos._harness import (
    Recorder,
    emit_result,
    library_threads,
    raising_listener,
    setup_logging,
    wait_until,
)

BOUND: Final = 5.0
"""Seconds within which a death or another writer's change must be seen."""
REGISTRIES: Final = ("memory", "thread_local", "migrating", "redis")
STORES: Final = ("memory_flags", "sqlite_flags", "redis_flags")


class Facts:
    def __init__(self) -> None:
        self.rec = Recorder()
        self.checks: dict[str, bool] = {}
        self.baseline: list[str] = []
        self.final: list[str] = []

    def check(self, name: str, ok: bool) -> None:
        self.checks[name] = bool(ok)

    def mark(self) -> None:
        self.baseline = library_threads()

    def mark_final(self) -> None:
        """While everything is still open (closing ends the threads, rightly)."""
        self.final = library_threads()

    def result(self, backend: str) -> dict[str, Any]:
        return {
            "backend": backend,
            "checks": self.checks,
            "exceptions": self.rec.exceptions,
            "baseline_threads": self.baseline,
            "final_threads": self.final,
        }


# --------------------------------------------------------------------------- registries


@contextlib.contextmanager
def _registries(backend: str) -> Iterator[tuple[Any, Any]]:
    """(the registry written to, a registry that sees it from elsewhere or None)."""
    if backend == "memory":
        from foundation.registry import MemoryRegistry

        with MemoryRegistry() as reg:
            yield reg, None
    elif backend == "thread_local":
        from foundation.registry import ThreadLocalRegistry

        with ThreadLocalRegistry() as reg:
            yield reg, None
    elif backend == "migrating":
        from foundation.flags import FeatureFlags, Flag
        from foundation.registry import MemoryRegistry, MigratingRegistry, ThreadLocalRegistry

        flags = FeatureFlags([Flag("use_ets_agent_registry")])
        flags.enable("use_ets_agent_registry")
        with MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags) as reg:
            yield reg, None
        flags.close()
    elif backend == "redis":
        from foundation.registry import RedisRegistry

        with RedisServerProcess() as server:
            a = RedisRegistry(server.url, namespace="chaos-listeners", node="a")
            b = RedisRegistry(server.url, namespace="chaos-listeners", node="b")
            try:
                yield a, b
            finally:
                b.close()
                a.close()
    else:
        raise ValueError(backend)


def _listed(reg: Any, key: str) -> bool:
    return reg.lookup(key) is not None


def _gone(reg: Any, key: str) -> bool:
    return reg.lookup(key) is None


def _is(flags: Any, name: str, want: bool) -> bool:
    return flags.enabled(name) is want


def _child_process() -> subprocess.Popen[bytes]:
    # Runs until its stdin is closed.
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )


def run_registry(backend: str, facts: Facts) -> None:
    rec = facts.rec
    procs: list[subprocess.Popen[bytes]] = []
    stops: list[threading.Event] = []
    try:
        with _registries(backend) as (reg, other):
            rec.call("subscribe", reg.subscribe, raising_listener)
            if other is not None:
                rec.call("subscribe (other node)", other.subscribe, raising_listener)
            for round_ in (1, 2):
                stop = threading.Event()
                stops.append(stop)
                key = f"thread-{round_}"
                ok, _ = rec.call(f"register {key}", reg.register, key, spawn_thread(stop.wait))
                facts.check(f"register {key} returned", ok)
                facts.check(f"register {key} stored", reg.lookup(key) is not None)
                ok, _ = rec.call(f"update {key}", reg.update_metadata, key, {"r": round_})
                entry = reg.lookup(key)
                facts.check(f"update {key} applied", ok and entry is not None and entry.metadata)
                if other is not None:
                    facts.check(
                        f"{key} seen by the other node (its tail survived)",
                        wait_until(partial(_listed, other, key), BOUND),
                    )
                proc = _child_process()
                procs.append(proc)
                pkey = f"process-{round_}"
                ok, _ = rec.call(f"register {pkey}", reg.register, pkey, proc)
                facts.check(f"register {pkey} returned", ok)
                if round_ == 1:
                    facts.mark()  # every monitor thread has started by now
                # Deaths: the monitor threads deliver them, and the listener raises there.
                stop.set()
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait()
                facts.check(f"dead {key} dropped", wait_until(partial(_gone, reg, key), BOUND))
                facts.check(f"dead {pkey} dropped", wait_until(partial(_gone, reg, pkey), BOUND))
                if other is not None:
                    facts.check(
                        f"dead {pkey} dropped on the other node",
                        wait_until(partial(_gone, other, pkey), BOUND),
                    )
                stop2 = threading.Event()
                stops.append(stop2)
                ukey = f"unregistered-{round_}"
                rec.call(f"register {ukey}", reg.register, ukey, spawn_thread(stop2.wait))
                ok, removed = rec.call(f"unregister {ukey}", reg.unregister, ukey)
                facts.check(f"unregister {ukey}", ok and removed is True)
                facts.check(f"unregister {ukey} removed it", reg.lookup(ukey) is None)
            facts.mark_final()
    finally:
        for stop in stops:
            stop.set()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- flag stores


@contextlib.contextmanager
def _stores(backend: str) -> Iterator[tuple[Any, Any]]:
    """(a store, a second store object on the same data or None).

    A ``MemoryFlagStore`` has no second writer by contract (and no watcher thread).
    """
    if backend == "memory_flags":
        from foundation.flags import MemoryFlagStore

        store = MemoryFlagStore()
        yield store, None
        store.close()
    elif backend == "sqlite_flags":
        from foundation.flags import SQLiteFlagStore

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "flags.db"
            one, two = SQLiteFlagStore(path), SQLiteFlagStore(path)
            try:
                yield one, two
            finally:
                two.close()
                one.close()
    elif backend == "redis_flags":
        from foundation.flags import RedisFlagStore

        with RedisServerProcess() as server:
            r_one = RedisFlagStore(server.url, namespace="chaos-listeners")
            r_two = RedisFlagStore(server.url, namespace="chaos-listeners")
            try:
                yield r_one, r_two
            finally:
                r_two.close()
                r_one.close()
    else:
        raise ValueError(backend)


def run_store(backend: str, facts: Facts) -> None:
    from foundation.flags import FeatureFlags, Flag

    rec = facts.rec
    declared = [Flag("beta"), Flag("gamma")]
    with _stores(backend) as (store, other_store):
        flags = FeatureFlags(declared, store=store)
        other = None if other_store is None else FeatureFlags(declared, store=other_store)
        rec.call("FeatureFlags.subscribe", flags.subscribe, raising_listener)
        rec.call("store.subscribe", store.subscribe, raising_listener)
        facts.mark()  # watcher threads start with the first subscription
        for round_ in (1, 2):
            ok, _ = rec.call(f"enable beta ({round_})", flags.enable, "beta")
            facts.check(f"enable beta returned ({round_})", ok)
            facts.check(f"beta enabled here ({round_})", flags.enabled("beta"))
            if other is not None:
                facts.check(
                    f"beta enabled on the other ({round_})",
                    wait_until(partial(_is, other, "beta", True), BOUND),
                )
            ok, _ = rec.call(f"disable beta ({round_})", flags.disable, "beta")
            facts.check(f"disable beta returned ({round_})", ok)
            facts.check(f"beta disabled here ({round_})", not flags.enabled("beta"))
            if other is not None:
                # Another writer: its change reaches us through the store's watcher thread.
                want = round_ == 1
                ok, _ = rec.call(f"other sets gamma ({round_})", other.set, "gamma", want)
                facts.check(
                    f"gamma={want} from the other seen here ({round_})",
                    wait_until(partial(_is, flags, "gamma", want), BOUND),
                )
        facts.mark_final()
        ok, hist = rec.call("history beta", flags.history, "beta")
        facts.check("history has every beta change", ok and len(hist or []) == 4)
        rec.call("close", flags.close)
        if other is not None:
            rec.call("close other", other.close)


def main(argv: list[str]) -> int:
    setup_logging()
    backend = argv[0]
    facts = Facts()
    run: Callable[[str, Facts], None] = run_registry if backend in REGISTRIES else run_store
    with tempfile.TemporaryDirectory(prefix="foundation-chaos-") as tmp:
        # RedisFlagStore's node copy goes here, never into the user's ~/.cache.
        os.environ["FOUNDATION_CACHE_DIR"] = tmp
        try:
            run(backend, facts)
        except Exception as exc:  # a public call outside Recorder.call raised
            facts.rec.record("scenario body", exc)
    emit_result(facts.result(backend))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
