"""A kill switch repeated on a read-only replica is a no-op, as during an outage.

Redis made a read-only replica (``REPLICAOF``): the store stays in sync and
serves reads, writes get ``READONLY``. The first ``disable`` is applied here,
kept pending, heard once; repeating it changes nothing here, so it must record
nothing and notify nobody (docs/contract.md "No-op writes"), as a repeat does
while Redis is down. The defect: each repeat ran on Redis's state (the flag
still on there), its commit was refused, and the refused run was taken as
committed: a change logged, heard and emitted at every repeat. Once Redis
accepts writes the kill switch is committed once. Runs in a plain interpreter
(``run_scenario``) with a real redis-server.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SCENARIO = """
from foundation import telemetry
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from tests.redis_support import RedisServer
from tests._logs import keep_records

lock = threading.Lock()
emitted, store_events = [], []
telemetry.attach("flag.changed", lambda n, d: (lock.acquire(), emitted.append(d["flag"]),
                                                lock.release()))
for name in ("pending_recorded", "pending_committed", "pending_superseded"):
    telemetry.attach("foundation.flags." + name,
                     lambda n, d: (lock.acquire(), store_events.append((n, tuple(d["flags"]))),
                                   lock.release()))
logged = keep_records("foundation.flags", level=logging.INFO)

def changed_lines():
    return [m for m in logged.messages(name="foundation.flags") if " changed by " in m]

def of(events, name):
    with lock:
        return [flags for n, flags in events if n == "foundation.flags." + name]

srv = RedisServer(); srv.start()
try:
    store = RedisFlagStore(srv.url, namespace="rok", timeout=1.0, resync_interval=0.3,
                           cache_path=None)
    flags = FeatureFlags([Flag("f", default=True), Flag("g", default=True)], store=store)
    heard = []
    flags.subscribe(lambda change: heard.append((change.flag, change.old.switch,
                                                 change.new.switch)))
    srv.make_read_only()
    wait_for(lambda: store.status().read_only and store.status().connected,
             "the store in sync with a read-only replica")
    for _ in range(5):
        flags.disable("f", by="oncall", reason="incident")  # the kill switch, repeated
        assert not flags.enabled("f")
    status = store.status()
    assert status.read_only and not status.stale and status.pending == 1, status
    assert heard == [("f", True, False)], heard
    with lock:
        assert emitted == ["f"], emitted
    assert len(changed_lines()) == 1, changed_lines()
    assert len(flags.history("f")) == 0, flags.history("f")  # nothing committed yet
    assert of(store_events, "pending_recorded") == [("f",)], store_events
    # Another flag's kill switch while f's is pending: heard once, kept behind it.
    flags.disable("g", by="oncall", reason="incident 2")
    flags.disable("g", by="oncall", reason="incident 2")
    assert not flags.enabled("g")
    assert heard == [("f", True, False), ("g", True, False)], heard
    assert [p.flags for p in store.pending()] == [("f",), ("g",)], store.pending()
    kept = [m for m in logged.messages(name="foundation.flags") if "after them" in m]
    assert len(kept) == 1 and "read-only replica" in kept[0], kept
    srv.make_writable()
    wait_for(lambda: not store.status().pending and len(of(store_events, "pending_committed")) > 1,
             "both kill switches committed, and the events telling it")
    assert of(store_events, "pending_committed") == [("f",), ("g",)], store_events
    assert not of(store_events, "pending_superseded"), store_events
    assert [(c.by, c.reason, c.old.switch, c.new.switch) for c in flags.history("f")] == [
        ("oncall", "incident", True, False)
    ], flags.history("f")
    assert len(flags.history("g")) == 1, flags.history("g")
    assert b'"switch": false' in srv.command("HGET", "{rok}:flags:state", "f")
    assert b'"switch": false' in srv.command("HGET", "{rok}:flags:state", "g")
    # Committed, heard nothing more here; a repeat now is a no-op on Redis too.
    flags.disable("f", by="oncall", reason="incident")
    assert len(flags.history("f")) == 1, flags.history("f")
    assert heard == [("f", True, False), ("g", True, False)], heard
    with lock:
        assert emitted == ["f", "g"], emitted
    assert len(changed_lines()) == 2, changed_lines()
    assert store._thread.is_alive(), "the listener thread died"
    print("threads", library_threads(), flush=True)
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""


def test_a_repeated_kill_switch_on_a_read_only_replica_is_a_no_op() -> None:
    """One change heard, emitted, logged and committed for five repeats on a replica."""
    result = run_scenario(_SCENARIO)
    assert result.lines("threads"), result.stdout
