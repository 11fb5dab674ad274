"""Redis comes back from an older snapshot in which a key still belongs to the
node that had since unregistered it, while another node's live agent holds it.

Node X registers k0..k4, the snapshot is taken, X unregisters them and node Y
registers them (Y's agents stay alive). Redis is killed and restarted from the
snapshot, where X still holds the keys. X is frozen meanwhile, so Y's re-assert
meets X's stale claims before X's resync could delete them (the order that lost
the keys for good: Y yielded to X, then X deleted the claims it does not back).
Y must keep its live registrations: X's claims were registered before Y's, so
they cannot be the ones that hold the keys (docs/redis.md, "Redis came back
older").
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SCENARIO = """
import json
from foundation import spawn_thread
from foundation.registry._redis import RedisRegistry
from foundation._demo._redis_server import RedisServerProcess
from tests.redis.support import NodeProcess

server = RedisServerProcess()
server.start()
stop = threading.Event()
x = None
try:
    x = NodeProcess(server.url, "s", ttl=30.0)
    y = RedisRegistry(server.url, namespace="s", lease_ttl=30.0, op_timeout=0.5)
    threads = library_threads()
    events = []
    y.subscribe(events.append)
    keys = [("k", i) for i in range(5)]
    for k in keys:
        assert x.call("register", key=list(k))["ok"]
    server.command("SAVE")  # X holds the keys in the snapshot
    for k in keys:
        assert x.call("unregister", key=list(k))["removed"]
    assert y.wait_for_version(x.call("status")["status"]["written"])
    for k in keys:
        y.register(k, spawn_thread(stop.wait))
    before = y.status().recoveries
    x.freeze()  # X cannot resync (and delete its stale claims) before Y re-asserts
    server.kill()
    server.start()  # from the snapshot: X's claims are back, Y's are gone

    def owners():
        raw = server.command("HGETALL", "{s}:owner")
        return {tuple(json.loads(k)): v.decode() for k, v in zip(raw[::2], raw[1::2])}

    wait_for(
        lambda: y.status().state == "connected" and y.status().recoveries > before,
        "Y recovered (re-asserted) while X is frozen",
    )
    print("after Y's re-assert:", owners(), [c.key for c in y.conflicts()])
    assert y.conflicts() == [], y.conflicts()
    assert owners() == {k: y.node for k in keys}, owners()

    x.thaw()  # X recovers now: its resync finds Y holding the keys
    wait_for(
        lambda: all((x.call("lookup", key=list(k))["entry"] or {}).get("node") == y.node
                    for k in keys),
        "X's mirror shows Y's registrations",
    )
    wait_for(lambda: x.call("status")["status"]["state"] == "connected", "X connected")
    assert owners() == {k: y.node for k in keys}, owners()
    for k in keys:
        e = y.lookup(k)
        assert e is not None and e.node == y.node, (k, e)
    assert y.conflicts() == [], y.conflicts()
    gone = [(e.entry.key, e.reason) for e in events
            if e.kind == "unregistered" and e.entry.node == y.node]
    assert gone == [], gone
    assert library_threads() == threads, library_threads()
    y.close()
    print("OK")
finally:
    stop.set()
    if x is not None:
        x.close()
    server.stop()
"""


def test_a_live_key_moved_after_the_snapshot_survives_a_restart_from_it() -> None:
    result = run_scenario(_SCENARIO, timeout=120)
    assert "unexpected error" not in result.stderr, result.stderr
    assert "lost 5 key(s)" not in result.stderr, result.stderr
