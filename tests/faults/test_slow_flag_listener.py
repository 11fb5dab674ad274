"""A blocked ``FeatureFlags.subscribe`` listener on one node, outside pytest.

Node 2's listener blocks (a webhook that hangs, a lock it waits for) on the
first change node 1 makes. Before, node 2 ran its listeners on the store's own
thread (RedisFlagStore's pubsub listener, SQLiteFlagStore's watcher) holding
its write lock: node 1's kill switch then sat in node 2's store while
``enabled()`` kept answering the old state, and node 2's own writes waited for
the listener. Now a remote change is applied on the store's thread and handed
to a courier thread for the listeners: ``enabled()`` answers the kill switch
at once, node 2's own writes go on, and the listener gets every change, in
order, once it returns. ``flag.changed`` telemetry follows the same thread
and order. No library thread dies.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

# Needs ``open_node()`` -> (store, FeatureFlags over flags x and y) and
# ``close_stores()`` from the store-specific part before it.
_SLOW_LISTENER = """
from foundation import telemetry

release = threading.Event()
held = threading.Event()
heard = []      # (thread, flag, by, switch) of every change node 2's listener got
changes = []    # those changes (node 2's flag.changed carries these very objects)
emitted = []    # (thread, change) of every flag.changed

def slow(change):
    heard.append((threading.current_thread().name, change.flag, change.by, change.new.switch))
    changes.append(change)
    if len(heard) == 1:
        held.set()
        release.wait(30)   # blocked until the test releases it

def on_telemetry(name, data):
    emitted.append((threading.current_thread().name, data["change"]))

def of_node_2():  # node 1 emits too (one process): node 2's are its listener's changes
    return [(name, c) for name, c in emitted if any(c is h for h in changes)]

store1, f1 = open_node()
store2, f2 = open_node()
detach = lambda: None
try:
    # Race (of this test): node 2 applies a change, then its courier tells the
    # listeners; waiting for enabled("y") alone let `slow`, subscribed below,
    # hear "y on" too when the courier started late. Wait for a listener instead.
    first = []
    f2.subscribe(lambda change: first.append(change.flag))
    f1.enable("y", by="ops")
    wait_for(lambda: "y" in first, "node 2's listeners to hear y on")
    wait_for(lambda: "foundation-flags-events" not in library_threads(), "the couriers to end")
    threads = library_threads()
    detach = telemetry.attach("flag.changed", on_telemetry)
    f2.subscribe(slow)
    f1.set_percentage("x", 50, by="ops")
    assert held.wait(20), "node 2's listener never got the first change"
    # The listener is blocked. Node 1's kill switch reaches node 2's answers ...
    f1.disable("y", by="ops", reason="kill")
    wait_for(lambda: not f2.enabled("y"), "node 2 to apply the kill switch", timeout=20)
    # ... node 2's own writes are not stalled either ...
    done = threading.Event()
    spawn = threading.Thread(target=lambda: (f2.set_percentage("x", 20, by="local-2"), done.set()))
    spawn.start()
    assert done.wait(20), "node 2's own write waited for the blocked listener"
    assert f2.state("x").percentage == 20
    assert len(heard) == 1, heard
    # ... and the listener gets every change, in order, once it returns.
    release.set()
    wait_for(lambda: len(heard) >= 3, "node 2's listener to get the later changes")
    print("HEARD", heard)
    assert [(f, by, on) for _, f, by, on in heard] == [
        ("x", "ops", True), ("y", "ops", False), ("x", "local-2", True)
    ], heard
    # flag.changed: after the listeners of each change, in the same thread and order.
    wait_for(lambda: len(of_node_2()) == 3, "node 2's flag.changed for each change")
    assert [c for _, c in of_node_2()] == changes, (of_node_2(), changes)
    # Never on the store's thread: a courier (or a writer) delivers.
    on = {name for name, *_ in heard} | {name for name, _ in of_node_2()}
    assert on == {"foundation-flags-events"}, (heard, emitted)
    wait_for(lambda: library_threads() == threads, "the couriers to end")
    print("OK")
finally:
    release.set()
    detach()
    f1.close()
    f2.close()
    close_stores(store1, store2)
"""

_REDIS = """
from foundation import FeatureFlags, Flag, RedisFlagStore
from tests.redis_support import RedisServer

server = RedisServer()
server.start()

def open_node():
    store = RedisFlagStore(server.url, namespace="slow", timeout=1.0, cache_path=None)
    return store, FeatureFlags([Flag("x"), Flag("y")], store=store)

def close_stores(*stores):
    for store in stores:
        store.close()
    server.stop()
"""

_SQLITE = """
import os, tempfile
from foundation import FeatureFlags, Flag, SQLiteFlagStore

path = os.path.join(tempfile.mkdtemp(), "flags.db")

def open_node():
    store = SQLiteFlagStore(path)
    flags = FeatureFlags([Flag("x"), Flag("y")], store=store)
    flags.subscribe(lambda change: None)  # starts the store's watcher thread
    return store, flags

def close_stores(*stores):
    for store in stores:
        store.close()
"""


def test_redis_a_blocked_listener_delays_neither_remote_changes_nor_writes() -> None:
    result = run_scenario(_REDIS + _SLOW_LISTENER, timeout=120)
    assert "LOG ERROR" not in result.stderr, result.stderr


def test_sqlite_a_blocked_listener_delays_neither_remote_changes_nor_writes() -> None:
    result = run_scenario(_SQLITE + _SLOW_LISTENER, timeout=120)
    assert "LOG ERROR" not in result.stderr, result.stderr
