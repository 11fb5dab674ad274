"""A Ctrl-C landing at any real check point of a public write leaves no lock held.

A SIGINT raises ``KeyboardInterrupt`` in the main thread at the interpreter's
next check point: as a C call returns (``lock.acquire()`` itself), at the
first instruction of a Python function (a Python ``__enter__``/``acquire``).
One landing between a lock's ``acquire()`` and the ``try:`` that releases it
left the lock held for good: the unwinding thread's ``close()`` (a ``with``
block's exit) then waited for it for ever, and Ctrl-C hung the program.

Each scenario runs every public write interrupted at its 1st, 2nd, ... check
point in the watched files (``tests._ctrl_c.interrupt_at_check_points``) until
a run completes; after each run, every lock of the object under test is free
(taken from another thread), and at the end the object still works and
``close()`` ends (``faulthandler.dump_traceback_later`` turns a hang into a
failure with every thread's stack). ``close()`` itself is cut the same way,
on a new object each run: what the cut call began is released, a second
``close()`` ends, and the object says ``Closed``. In a subprocess with the
interpreter's default hooks (``tests/faults/_subprocess.py``).

Holes found: ``FairRLock`` (FeatureFlags' lock: its Python acquire and
``__exit__``), ``MigratingRegistry``'s facade, pump and legacy-retry locks and
its close() (backends left open), ``SQLiteFlagStore``'s BEGIN before the try.
"""

from __future__ import annotations

import pytest

from tests._ctrl_c import CUT_GENERATOR_CLOSE
from tests.faults._subprocess import run_scenario

_COMMON = """
import faulthandler
from foundation.errors import Closed
from tests._ctrl_c import interrupt_at_check_points, lock_free

faulthandler.dump_traceback_later(100, exit=True)  # a hang fails with its stacks

def sweep(what, write, locks, watched, before_each=None):
    def check(n):
        for name, lock in locks().items():
            assert lock_free(lock), f"{what}: {name} left held: interrupted at point {n}"
    started = time.monotonic()
    interrupted = interrupt_at_check_points(
        write, watched, after_each=check, before_each=before_each
    )
    print("SWEPT", what, interrupted > 0, flush=True)
    took = time.monotonic() - started
    print(f"swept {what}: {interrupted} points, {took:.1f} s", file=sys.stderr)

def sweep_close(what, make, watched):
    # close() cut at each point, each time on a new object from make() ->
    # (close, locks, write); then close() again ends, every lock is free, and
    # a write says Closed, and no thread of it is left.
    made = []
    before = library_threads()
    def fresh():
        made.append(make())
    def close(n):
        made[-1][0]()
    def check(n):
        close, locks, write, *released = made[-1]
        for what_is, done in released:  # released by the cut close() itself
            assert done(), f"{what}: {what_is} left open: close cut at point {n}"
        close()  # ends (bounded by the faulthandler above)
        wait_for(lambda: library_threads() == before, f"{what}: its threads gone (point {n})")
        for name, lock in locks().items():
            assert lock_free(lock), f"{what}: {name} left held: close cut at point {n}"
        try:
            write()
        except Closed:
            pass
        else:
            raise AssertionError(f"{what}: a write after close() cut at point {n} was taken")
    interrupted = interrupt_at_check_points(close, watched, after_each=check, before_each=fresh)
    print("SWEPT", what, interrupted > 0, flush=True)

def closes(close):
    close()  # bounded by the faulthandler above
    print("CLOSED", flush=True)
"""

_MIGRATING = """
from foundation import FeatureFlags, Flag, MemoryRegistry, MigratingRegistry
from foundation.errors import Closed
from foundation.liveness import spawn_thread

FLAG = "use_ets_agent_registry"
WATCHED = ["foundation/registry/_migrating", "foundation/flags/_fair_lock.py"]
stop = threading.Event()
agent = spawn_thread(stop.wait)
for mode in ("off", "on", "flipping"):
    flags = FeatureFlags([Flag(FLAG)])
    legacy, target = MemoryRegistry(), MemoryRegistry()
    reg = MigratingRegistry(legacy, target, flags)
    reg.subscribe(lambda event: None)
    if mode == "on":
        flags.enable(FLAG)

    def locks():
        return {
            "facade": reg._lock, "flag": reg._flag_lock, "muted": reg._muted_lock,
            "pump": reg._pump_lock, "legacy retry": reg._legacy_retry_lock,
            "flags": flags._lock, "legacy": legacy._lock, "target": target._lock,
        }

    def flip():  # mid-migration: the flag turns over between the writes
        if mode == "flipping":
            (flags.disable if flags.enabled(FLAG) else flags.enable)(FLAG)

    def register(n):
        flip()
        reg.register(f"r-{n}", agent, {"n": n})

    def update_metadata(n):
        reg.register(f"m-{n}", agent)
        flip()
        reg.update_metadata(f"m-{n}", {"n": n})

    def unregister(n):
        reg.register(f"u-{n}", agent)
        flip()
        reg.unregister(f"u-{n}")

    def settle():
        # A write run to its end applies the mirrors an interrupted one left
        # for retry: else each run would find one more to apply, and none end.
        reg.register("settle", agent, replace=True)

    for write in (register, update_metadata, unregister):
        sweep(f"{mode} {write.__name__}", write, locks, WATCHED, settle)
    reg.register("after", agent)  # still works
    assert reg.lookup("after") is not None
    closes(reg.close)
    try:
        reg.register("closed", agent)
    except Closed:
        pass
    else:
        raise AssertionError("a closed MigratingRegistry took a write")
    legacy.close()
    target.close()
    flags.close()
stop.set()
agent.join()
print("OK")
"""

_CLOSES = """
import os, tempfile
from foundation import FeatureFlags, Flag, MemoryRegistry, MigratingRegistry, ThreadLocalRegistry
from foundation.flags import SQLiteFlagStore
from foundation.liveness import MonitorManager, spawn_thread

stop = threading.Event()
agent = spawn_thread(stop.wait)
FLAG = "use_ets_agent_registry"

def memory():
    reg = MemoryRegistry()
    reg.register("a", agent)
    return reg.close, lambda: {"registry": reg._lock}, lambda: reg.register("b", agent)

def thread_local():
    reg = ThreadLocalRegistry()
    reg.register("a", agent)
    return reg.close, dict, lambda: reg.register("b", agent)

def migrating(on):
    def make():
        flags = FeatureFlags([Flag(FLAG)])
        if on:
            flags.enable(FLAG)
        legacy, target = MemoryRegistry(), MemoryRegistry()
        reg = MigratingRegistry(legacy, target, flags)
        reg.subscribe(lambda event: None)
        reg.register("a", agent)
        locks = lambda: {
            "facade": reg._lock, "flag": reg._flag_lock, "pump": reg._pump_lock,
            "legacy retry": reg._legacy_retry_lock, "flags": flags._lock,
        }
        # Once the cut close() marked it closed (no later close() is owed):
        backends = ("both backends", lambda: not reg._closed or legacy._closed and target._closed)
        return reg.close, locks, lambda: reg.register("b", agent), backends
    return make

def flags_on(store_of):
    def make():
        store = store_of()
        flags = FeatureFlags([Flag("f")], store=store)
        store = flags.store  # (its own MemoryFlagStore when None)
        flags.subscribe(lambda change: None)
        flags.enable("f")
        def close():
            flags.close()
            store.close()
        locks = lambda: {"flags": flags._lock, "store": store._lock}
        return close, locks, lambda: flags.enable("f")
    return make

def manager():
    m = MonitorManager(name="ctrl-c")
    m.monitor(agent, lambda down: None)
    return m.close, lambda: {"manager": m._lock}, lambda: m.monitor(agent, lambda down: None)

folder = tempfile.mkdtemp()
sweep_close("MemoryRegistry", memory, ["foundation/registry/_memory.py"])
sweep_close("ThreadLocalRegistry", thread_local, ["foundation/registry/_thread_local.py"])
for on in (False, True):
    sweep_close(f"MigratingRegistry on={on}", migrating(on), ["foundation/registry/_migrating"])
sweep_close("FeatureFlags memory", flags_on(lambda: None), ["foundation/flags/"])
sweep_close(
    "FeatureFlags sqlite",
    flags_on(lambda: SQLiteFlagStore(os.path.join(folder, "flags.db"))),
    ["foundation/flags/"],
)
sweep_close("MonitorManager", manager, ["foundation/liveness/"])
stop.set()
agent.join()
print("OK")
"""

_THREAD_LOCAL = """
from foundation import ThreadLocalRegistry
from foundation.liveness import spawn_thread

stop = threading.Event()
agent = spawn_thread(stop.wait)
reg = ThreadLocalRegistry()

def register(n):
    reg.register(f"r-{n}", agent, {"n": n})

def unregister(n):
    reg.register(f"u-{n}", agent)
    reg.unregister(f"u-{n}")

def update_metadata(n):
    reg.register(f"m-{n}", agent)
    reg.update_metadata(f"m-{n}", {"n": n})

for write in (register, unregister, update_metadata):
    sweep(write.__name__, write, dict, ["foundation/registry/_thread_local.py"])
reg.register("after", agent)
assert reg.lookup("after") is not None
closes(reg.close)
stop.set()
agent.join()
print("OK")
"""

_FLAGS = """
import os, tempfile
from foundation import FeatureFlags, Flag
from foundation.flags import MemoryFlagStore, RedisFlagStore, SQLiteFlagStore

KIND = {kind!r}
server = None
if KIND == "memory":
    store = MemoryFlagStore()
    store_locks = lambda: {{"store": store._lock}}
elif KIND == "sqlite":
    store = SQLiteFlagStore(os.path.join(tempfile.mkdtemp(), "flags.db"))
    store_locks = lambda: {{"store": store._lock, "store read": store._read_lock}}
else:
    from tests.redis_support import RedisServer
    server = RedisServer()
    server.start()
    store = RedisFlagStore(server.url, namespace="ctrl-c", cache_path=None, timeout=5.0)
    store_locks = lambda: {{
        "store": store._lock, "txn": store._txn_lock, "conn": store._conn_lock,
        "copy": store._copy_lock,
    }}
flags = FeatureFlags([Flag(f"f{{i}}") for i in range(4)], store=store)
flags.subscribe(lambda change: None)
WATCHED = ["foundation/flags/"]

def locks():
    return {{"flags": flags._lock, **store_locks()}}

writes = {{
    "enable": lambda n: flags.enable("f0"),
    "disable": lambda n: flags.disable("f0"),  # the kill switch
    "set_percentage": lambda n: flags.set_percentage("f1", n % 100),
    "allow": lambda n: flags.allow("f2", f"actor-{{n}}"),
    "deny": lambda n: flags.deny("f3", f"actor-{{n}}"),
}}
# Each state validates its actors one by one: cleared before each run, or
# each run would add points (one more actor) and none would complete.
clear = {{"allow": lambda: flags.clear("f2"), "deny": lambda: flags.clear("f3")}}
for name, write in writes.items():
    sweep(f"{{KIND}} {{name}}", write, locks, WATCHED, clear.get(name))
# A read of the store's own: one read transaction (SQLite), cut anywhere.
sweep(f"{{KIND}} load_states", lambda n: store.load_states(), locks, WATCHED)
flags.enable("f0")  # still works
assert flags.enabled("f0") is True
assert store.load_states()["f0"].switch is True
if server is not None:
    # It still follows Redis: another node's kill switch reaches it (its node
    # copy, left mid-transaction by a cut write, refused every update).
    other_store = RedisFlagStore(server.url, namespace="ctrl-c", cache_path=None, timeout=5.0)
    other = FeatureFlags([Flag(f"f{{i}}") for i in range(4)], store=other_store)
    other.disable("f0")
    wait_for(lambda: flags.enabled("f0") is False, "another node's kill switch")
    other.close()
    other_store.close()
closes(lambda: (flags.close(), store.close()))
if server is not None:
    server.kill()
print("OK")
"""

_NODE_COPY = """
import pathlib, tempfile
from foundation.flags._node_cache import NodeCache

# RedisFlagStore's node copy, written by a writer's thread (which a Ctrl-C
# hits) and by the store's listener: a write cut as its BEGIN returned left
# the copy mid-transaction, refusing every later write (the listener's too).
for where in (None, pathlib.Path(tempfile.mkdtemp()) / "copy.db"):
    cache = NodeCache(where)
    def write(n):
        cache.set_catalogue({f"f{n}": "{}"})
    def read(n):
        cache.history_with_base()  # one read transaction
    for act in (write, read):
        sweep(f"{'file' if where else 'memory'} {act.__name__}", act,
              lambda: {"copy": cache._lock}, ["flags/_node_cache.py"])
    cache.set_catalogue({"last": "{}"})  # still works
    assert cache.catalogue() == {"last": "{}"}
    closes(cache.close)
print("OK")
"""

_MONITORS = """
from foundation.liveness import MonitorManager, spawn_thread

stop = threading.Event()
agent = spawn_thread(stop.wait)
manager = MonitorManager(name="ctrl-c")
WATCHED = ["foundation/liveness/"]

def locks():
    return {"manager": manager._lock}

def monitor(n):
    manager.monitor(agent, lambda down: None)

def demonitor(n):
    m = manager.monitor(agent, lambda down: None)
    m.demonitor()

for write in (monitor, demonitor):
    sweep(write.__name__, write, locks, WATCHED)
downs = []
manager.monitor(agent, downs.append)  # still works: the death is reported
stop.set()
agent.join()
wait_for(lambda: downs, "the death reported")
closes(manager.close)
print("OK")
"""

_SUPERVISOR = """
import itertools
from foundation.supervision import ChildSpec, Supervisor

def worker(ctx):
    ctx.ready()
    ctx.stopping.wait()

ids = itertools.count()
handle = Supervisor([ChildSpec("w", worker)], name="ctrl-c").run_in_thread()
WATCHED = ["foundation/supervision/_thread.py"]

def locks():
    return {"handle": handle._lock}

def start_child(n):
    handle.start_child(ChildSpec(f"extra-{n}", worker))

def terminate_child(n):
    cid = f"gone-{n}"
    handle.start_child(ChildSpec(cid, worker))
    handle.terminate_child(cid)

for write in (start_child, terminate_child):
    sweep(write.__name__, write, locks, WATCHED)
assert handle.count_children().active >= 1  # still works
closes(handle.stop)
print("OK")
"""


def _swept(result_lines: list[str]) -> list[str]:
    return [line for line in result_lines if not line.endswith("True")]


def test_migrating_registry_writes_leave_no_lock_held() -> None:
    result = run_scenario(_COMMON + _MIGRATING)
    assert len(result.lines("SWEPT")) == 9
    assert _swept(result.lines("SWEPT")) == []
    assert len(result.lines("CLOSED")) == 3


def test_a_ctrl_c_in_close_leaves_no_lock_held_and_close_ends() -> None:
    result = run_scenario(_COMMON + _CLOSES)
    assert len(result.lines("SWEPT")) == 7
    assert _swept(result.lines("SWEPT")) == []


def test_thread_local_registry_writes_survive_a_ctrl_c() -> None:
    result = run_scenario(_COMMON + _THREAD_LOCAL)
    assert len(result.lines("SWEPT")) == 3
    assert result.lines("CLOSED") == ["CLOSED"]


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_flag_writes_leave_no_lock_held(kind: str) -> None:
    result = run_scenario(_COMMON + _FLAGS.format(kind=kind), expect=(CUT_GENERATOR_CLOSE,))
    assert len(result.lines("SWEPT")) == 6
    assert _swept(result.lines("SWEPT")) == []
    assert result.lines("CLOSED") == ["CLOSED"]


def test_redis_store_node_copy_writes_leave_no_transaction_open() -> None:
    result = run_scenario(_COMMON + _NODE_COPY)
    assert len(result.lines("SWEPT")) == 4
    assert _swept(result.lines("SWEPT")) == []


def test_monitor_and_demonitor_leave_no_lock_held() -> None:
    result = run_scenario(_COMMON + _MONITORS)
    assert len(result.lines("SWEPT")) == 2
    assert _swept(result.lines("SWEPT")) == []
    assert result.lines("CLOSED") == ["CLOSED"]


def test_supervisor_handle_calls_leave_no_lock_held() -> None:
    result = run_scenario(_COMMON + _SUPERVISOR)
    assert len(result.lines("SWEPT")) == 2
    assert _swept(result.lines("SWEPT")) == []
    assert result.lines("CLOSED") == ["CLOSED"]
