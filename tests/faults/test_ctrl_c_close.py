"""A Ctrl-C cutting ``close()`` (or ``finish()``) anywhere: the next call does what is left.

``tests/faults/test_ctrl_c_locks.py`` cuts ``close()`` and checks that a
second ``close()`` ends, with no lock held. Here the second call must also
release everything the object held: no ``foundation-*`` thread left alive, no
file descriptor left open (``/proc/self/fd`` before the object was made and
after), monitors dropped, an owned store closed, an SQLite file reusable by a
new store. The objects watch what starts threads and opens fds: a foreign
thread (the thread poller) and an OS process (the pidfd selector, its epoll
and wake-up pipe).

Holes found: ``MonitorManager.close()`` and ``MemoryRegistry.close()`` set
``_closed`` first, so a close cut after that returned at once the next time:
the watcher threads, the epoll, the pidfds and the excepthook (the registry's
monitors and its own manager) stayed for good. ``FeatureFlags.close()`` the
same for its store subscription and its own store. ``MigratingRegistry.finish()``
cut after it marked itself finished left the legacy backend open (neither a
second ``finish()`` nor ``close()`` closed it) and subscribed. Below them:
``Monitor.demonitor()`` (and its copy inlined in ``MemoryRegistry.unregister``)
cut between its two removals left the monitor counted for good (and, the
last of a process, its pidfd open); ``SQLiteFlagStore.close()`` cut before
its end left its connections open; an unsubscribe cut before its store left
the listener subscribed, each time with the next call doing nothing.

Each scenario runs in a subprocess with the interpreter's default hooks
(``tests/faults/_subprocess.py``).
"""

from __future__ import annotations

from tests._ctrl_c import CUT_GENERATOR_CLOSE, SCENARIO_AGENTS
from tests.faults._subprocess import run_scenario

_COMMON = (
    SCENARIO_AGENTS
    + """
from foundation.errors import Closed

def sweep_release(what, make, watched):
    # close() cut at each point of a new object from make() -> (close, check,
    # *then): then close() again ends and (once the steps `then` closed what
    # the object does not own) every thread and fd it held is released;
    # check(n) what else it must have released.
    made = {}
    def fresh():
        made["threads"], made["fds"] = library_threads(), fds()
        made["it"] = make()
    def close(n):
        made["it"][0]()
    def after(n):
        close, check, *then = made.pop("it")
        close()  # ends (bounded by the faulthandler above)
        for step in then:
            step()
        wait_for(lambda: library_threads() == made["threads"],
                 f"{what}: its threads gone (close cut at point {n}): {library_threads()}")
        wait_for(lambda: fds() == made["fds"],
                 f"{what}: its fds closed (close cut at point {n}): {fds()} {made['fds']}")
        check(n)
    interrupted = interrupt_at_check_points(close, watched, after_each=after, before_each=fresh)
    print("SWEPT", what, interrupted > 0, flush=True)
    print(f"swept {what}: {interrupted} points", file=sys.stderr)

def sweep_call(what, make, watched):
    # call() cut at each point of a new object from make() -> (call, check):
    # check(n) then finds it consistent, finishes it and closes it, and every
    # thread and fd made since is released.
    made = {}
    def fresh():
        made["threads"], made["fds"] = library_threads(), fds()
        made["it"] = make()
    def call(n):
        made["it"][0]()
    def after(n):
        made.pop("it")[1](n)
        wait_for(lambda: library_threads() == made["threads"],
                 f"{what}: its threads gone (cut at point {n}): {library_threads()}")
        wait_for(lambda: fds() == made["fds"],
                 f"{what}: its fds closed (cut at point {n}): {fds()} {made['fds']}")
    interrupted = interrupt_at_check_points(call, watched, after_each=after, before_each=fresh)
    print("SWEPT", what, interrupted > 0, flush=True)
    print(f"swept {what}: {interrupted} points", file=sys.stderr)

def refused(write, what):
    try:
        write()
    except Closed:
        return
    raise AssertionError(f"{what}: a write after close() was taken")

"""
)

_MONITORS = """
from foundation.liveness import MonitorManager

def manager():
    m = MonitorManager(name="ctrl-c")
    m.monitor(foreign, lambda down: None)
    m.monitor(process, lambda down: None)
    def check(n):
        assert lock_free(m._lock), f"manager lock left held: close cut at point {n}"
        assert not m._monitors, f"monitors left: close cut at point {n}"
        refused(lambda: m.monitor(foreign, lambda down: None), "MonitorManager")
    return m.close, check

sweep_release("MonitorManager", manager, ["foundation/liveness/"])
end()
print("OK")
"""

_REGISTRIES = """
from foundation import MemoryRegistry, ThreadLocalRegistry
from foundation.liveness import MonitorManager, spawn_thread

def memory():
    reg = MemoryRegistry()
    reg.register("thread", foreign)
    reg.register("process", process)
    manager = reg._manager
    def check(n):
        assert lock_free(reg._lock), f"registry lock left held: close cut at point {n}"
        assert manager.closed, f"its own manager left open: close cut at point {n}"
        refused(lambda: reg.register("b", foreign), "MemoryRegistry")
    return reg.close, check

shared = MonitorManager(name="shared")  # the caller's: its threads live on
for watched in (foreign, process):
    shared.monitor(watched, lambda down: None)

def memory_shared_manager():
    reg = MemoryRegistry(manager=shared)
    reg.register("thread", foreign)
    reg.register("process", process)
    monitors = [e._registration.watched_by() for e in reg._live.values()]
    def check(n):
        assert not any(m.active for m in monitors), f"monitors left: close cut at point {n}"
        refused(lambda: reg.register("b", foreign), "MemoryRegistry")
    return reg.close, check

agent = spawn_thread(stop.wait)

def thread_local():
    reg = ThreadLocalRegistry()
    reg.register("a", agent)
    reg.subscribe(lambda event: None)
    def check(n):
        refused(lambda: reg.register("b", agent), "ThreadLocalRegistry")
        assert not reg._listeners.current, f"listeners kept: close cut at point {n}"
        assert all(not s.entries for s in reg._live_stores()), f"entries kept: point {n}"
    return reg.close, check

sweep_release("MemoryRegistry", memory, ["foundation/registry/_memory.py", "foundation/liveness/"])
sweep_release("MemoryRegistry, shared manager", memory_shared_manager,
              ["foundation/registry/_memory.py", "foundation/liveness/"])
sweep_release("ThreadLocalRegistry", thread_local, ["foundation/registry/_thread_local.py"])
shared.close()
end()
print("OK")
"""

_FLAGS = """
import tempfile
from foundation import FeatureFlags, Flag
from foundation.flags import SQLiteFlagStore

def owned_memory_store():
    flags = FeatureFlags([Flag("f")])  # its own MemoryFlagStore
    flags.subscribe(lambda change: None)
    flags.enable("f")
    store = flags.store
    def check(n):
        assert lock_free(flags._lock), f"flags lock left held: close cut at point {n}"
        assert lock_free(store._lock), f"store lock left held: close cut at point {n}"
        assert store._closed, f"its own store left open: close cut at point {n}"
        refused(lambda: flags.enable("f"), "FeatureFlags")
    return flags.close, check

folder = tempfile.mkdtemp()

def sqlite_store():
    path = os.path.join(folder, "flags.db")
    store = SQLiteFlagStore(path)
    flags = FeatureFlags([Flag("f")], store=store)
    flags.subscribe(lambda change: None)
    flags.enable("f")
    def check(n):
        assert not store._callbacks, f"still subscribed to the store: close cut at point {n}"
        for name, lock in (("flags", flags._lock), ("store", store._lock),
                           ("store read", store._read_lock)):
            assert lock_free(lock), f"{name} lock left held: close cut at point {n}"
        refused(lambda: flags.enable("f"), "FeatureFlags")
        # The file is whole and free: a new store opens it and writes.
        again = SQLiteFlagStore(path)
        other = FeatureFlags([Flag("f")], store=again)
        assert other.enabled("f") is True, f"the flag lost: close cut at point {n}"
        other.disable("f")
        other.enable("f")
        other.close()
        again.close()
    return flags.close, check, store.close

sweep_release("FeatureFlags memory", owned_memory_store, ["foundation/flags/"])
sweep_release("FeatureFlags sqlite", sqlite_store, ["foundation/flags/"])
end()
print("OK")
"""


_MIGRATING = """
from foundation import FeatureFlags, Flag, MemoryRegistry, MigratingRegistry, ThreadLocalRegistry
from foundation.liveness import spawn_thread

FLAG = "use_ets_agent_registry"
WATCHED = ["foundation/registry/", "foundation/flags/_fair_lock.py"]
agent = spawn_thread(stop.wait)

def migrating(legacy_of, on):
    # Entries written with the flag off (mirrored to the target) and on (the
    # target's, mirrored back): a foreign thread and a process, so that the
    # target's manager runs its watcher threads and holds fds.
    flags = FeatureFlags([Flag(FLAG)])
    legacy, target = legacy_of(), MemoryRegistry()
    reg = MigratingRegistry(legacy, target, flags)
    reg.subscribe(lambda event: None)
    reg.register("old", agent, {"n": 1})
    flags.enable(FLAG)
    reg.register("thread", foreign, {"n": 2})
    reg.register("process", process, {"n": 3})
    reg.update_metadata("old", {"n": 4})
    if not on:
        flags.disable(FLAG)
    return reg, flags, legacy, target

def locks_free(reg, flags, target, n):
    locks = {"facade": reg._lock, "flag": reg._flag_lock, "muted": reg._muted_lock,
             "pump": reg._pump_lock, "legacy retry": reg._legacy_retry_lock,
             "flags": flags._lock, "target": target._lock}
    for name, lock in locks.items():
        assert lock_free(lock), f"{name} lock left held: cut at point {n}"

def nothing_lost(reg, n):
    got = {e.key: dict(e.metadata) for e in reg.list_all()}
    want = {"old": {"n": 4}, "thread": {"n": 2}, "process": {"n": 3}}
    assert got == want, f"entries after a cut at point {n}: {got}"

def legacy_retired(reg, legacy, n):
    assert reg.finished, f"not finished: cut at point {n}"
    assert reg._legacy_unsubscribe is None, f"still subscribed to the legacy side: point {n}"
    assert legacy._closed, f"the legacy backend left open: finish() cut at point {n}"
    if isinstance(legacy, MemoryRegistry):
        assert legacy._released, f"the legacy monitors left: finish() cut at point {n}"

def finish_cut(legacy_of):
    def make():
        reg, flags, legacy, target = migrating(legacy_of, on=True)
        def check(n):
            locks_free(reg, flags, target, n)
            if n % 2:  # close() instead: it closes what the cut finish() left
                reg.close()
                flags.close()
                assert legacy._closed, f"legacy left open: finish() cut at point {n}, closed"
                assert target._released, f"target left open: finish() cut at point {n}"
                return
            reg.finish()  # again: completes what the cut one began
            legacy_retired(reg, legacy, n)
            nothing_lost(reg, n)
            reg.register("new", agent)  # still works, on the target alone
            assert target.lookup("new") is not None
            reg.close()
            flags.close()
            assert target._released, f"target left open: finish() cut at point {n}"
        return reg.finish, check
    return make

def flip_cut(legacy_of, on):
    # The flag flipped (either way) by a FeatureFlags write cut anywhere: the
    # facade answers from a backend holding everything, and flips again.
    def make():
        reg, flags, legacy, target = migrating(legacy_of, on=on)
        flip = flags.disable if on else flags.enable
        def check(n):
            locks_free(reg, flags, target, n)
            nothing_lost(reg, n)
            reg.register("new", agent)
            assert reg.lookup("new") is not None, f"a write lost after a flip cut at {n}"
            reg.unregister("new")
            flags.disable(FLAG)
            nothing_lost(reg, n)
            flags.enable(FLAG)
            nothing_lost(reg, n)
            reg.finish()
            legacy_retired(reg, legacy, n)
            reg.close()
            flags.close()
        return lambda: flip(FLAG), check
    return make

def close_cut(legacy_of, on):
    def make():
        reg, flags, legacy, target = migrating(legacy_of, on=on)
        def check(n):
            locks_free(reg, flags, target, n)
            for side, backend in (("legacy", legacy), ("target", target)):
                assert backend._closed, f"{side} left open: close cut at point {n}"
                if isinstance(backend, MemoryRegistry):
                    assert backend._released, f"{side} monitors left: close cut at point {n}"
            refused(lambda: reg.register("b", agent), "MigratingRegistry")
        return reg.close, check, flags.close
    return make

for legacy_of in (MemoryRegistry, ThreadLocalRegistry):
    name = legacy_of.__name__
    for on in (False, True):
        sweep_release(f"close {name} on={on}", close_cut(legacy_of, on), WATCHED)
    sweep_call(f"finish {name}", finish_cut(legacy_of), WATCHED)
    for on in (False, True):
        sweep_call(f"flip {name} from on={on}", flip_cut(legacy_of, on),
                   [*WATCHED, "foundation/flags/"])
end()
print("OK")
"""


# Holes the sweeps above found in what close() calls:

_DEMONITOR = """
from foundation import MemoryRegistry
from foundation.liveness import MonitorManager

m = MonitorManager(name="demonitor")
m.monitor(process, lambda down: None)
made = {}
def fresh():
    made["mon"] = m.monitor(process, lambda down: None)
def check(n):
    made["mon"].demonitor()  # again
    assert m.active_count() == 1, f"demonitor() cut at point {n}: {m.active_count()} counted"
swept = interrupt_at_check_points(lambda n: made["mon"].demonitor(), ["foundation/liveness/"],
                                  after_each=check, before_each=fresh)
print("SWEPT demonitor", swept > 0, flush=True)

# The process's last monitor: the next demonitor() also closes its pidfd
# (cut in the manager's release too: see tests/faults/test_ctrl_c_monitor.py).
last = MonitorManager(name="demonitor-last")
last.monitor(process, lambda down: None).demonitor()  # its epoll, kept: not counted
def fresh_last():
    made["fds"] = fds()
    made["mon"] = last.monitor(process, lambda down: None)  # a pidfd
def check_last(n):
    made["mon"].demonitor()  # again
    assert last.active_count() == 0, f"demonitor() cut at point {n}: still counted"
    assert last.stats().watched_agents == 0, f"demonitor() cut at point {n}: still watched"
    assert fds() == made["fds"], f"a demonitor() cut at point {n} left its pidfd: {fds()}"
swept = interrupt_at_check_points(lambda n: made["mon"].demonitor(), ["foundation/liveness/"],
                                  after_each=check_last, before_each=fresh_last)
print("SWEPT last demonitor", swept > 0, flush=True)
last.close()

# MemoryRegistry.unregister inlines demonitor(): a cut anywhere in it never
# leaves a monitor taken from its watch yet counted (no later call reaches it:
# the entry is gone). A cut before that release leaves the monitor live until
# its agent dies (unregister's own steps, not demonitor's): released here.
reg = MemoryRegistry(manager=m)
kept = list(m._monitors)
def fresh_entry():
    reg.register("p", process)
def check_entry(n):
    reg.unregister("p")  # again, if the cut one had not unpublished it
    taken = [mon for mon in m._monitors if mon not in mon._watch.monitors]
    assert not taken, f"unregister() cut at point {n}: a released monitor still counted"
    for mon in list(m._monitors):
        if mon not in kept:
            mon.demonitor()
    assert m.active_count() == 1, f"unregister() cut at point {n}: {m.active_count()} counted"
swept = interrupt_at_check_points(lambda n: reg.unregister("p"),
                                  ["foundation/registry/_memory.py", "foundation/liveness/"],
                                  after_each=check_entry, before_each=fresh_entry)
print("SWEPT unregister", swept > 0, flush=True)
reg.close()
m.close()
end()
print("OK")
"""

_SQLITE_STORE_CLOSE = """
import tempfile
from foundation.flags import SQLiteFlagStore

path = os.path.join(tempfile.mkdtemp(), "flags.db")
made = {}
def fresh():
    made["fds"] = fds()
    made["store"] = SQLiteFlagStore(path)
    made["store"].subscribe(lambda changes: None)
def check(n):
    made["store"].close()  # again
    wait_for(lambda: library_threads() == [], f"its watcher gone (point {n})")
    assert fds() == made["fds"], f"close() cut at point {n} left fds open: {fds()}"
interrupt_at_check_points(lambda n: made["store"].close(), ["foundation/flags/"],
                          after_each=check, before_each=fresh)
end()
print("OK")
"""

_UNSUBSCRIBE = """
import tempfile
from foundation import FeatureFlags, Flag
from foundation.flags import SQLiteFlagStore

store = SQLiteFlagStore(os.path.join(tempfile.mkdtemp(), "flags.db"))
made = {}
def fresh():
    made["flags"] = FeatureFlags([Flag("f")], store=store)
def check(n):
    made["flags"].close()  # again
    assert not store._callbacks, f"close() cut at point {n} left it subscribed"
interrupt_at_check_points(lambda n: made["flags"].close(),
                          ["foundation/flags/", "foundation/_listeners.py"],
                          after_each=check, before_each=fresh)
store.close()
end()
print("OK")
"""


def test_a_cut_demonitor_is_finished_by_the_next() -> None:
    result = run_scenario(_COMMON + _DEMONITOR)
    assert result.lines("SWEPT") == [
        "SWEPT demonitor True",
        "SWEPT last demonitor True",
        "SWEPT unregister True",
    ]


def test_a_cut_sqlite_store_close_is_finished_by_the_next() -> None:
    run_scenario(_COMMON + _SQLITE_STORE_CLOSE)


def test_a_cut_unsubscribe_is_finished_by_the_next() -> None:
    run_scenario(_COMMON + _UNSUBSCRIBE)


def _not_swept(result_lines: list[str]) -> list[str]:
    return [line for line in result_lines if not line.endswith("True")]


def test_a_cut_monitor_manager_close_is_finished_by_the_next_close() -> None:
    result = run_scenario(_COMMON + _MONITORS)
    assert result.lines("SWEPT") == ["SWEPT MonitorManager True"]


def test_a_cut_registry_close_is_finished_by_the_next_close() -> None:
    result = run_scenario(_COMMON + _REGISTRIES)
    assert len(result.lines("SWEPT")) == 3
    assert _not_swept(result.lines("SWEPT")) == []


def test_a_cut_feature_flags_close_is_finished_by_the_next_close() -> None:
    result = run_scenario(_COMMON + _FLAGS)
    assert len(result.lines("SWEPT")) == 2
    assert _not_swept(result.lines("SWEPT")) == []


def test_a_cut_finish_flip_or_close_leaves_a_migrating_registry_whole() -> None:
    result = run_scenario(_COMMON + _MIGRATING, expect=(CUT_GENERATOR_CLOSE,))
    assert len(result.lines("SWEPT")) == 10
    assert _not_swept(result.lines("SWEPT")) == []
