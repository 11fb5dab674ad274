"""A node whose wall clock runs ahead, frozen past its lease, must not take back
on thawing a key another node registered meanwhile (docs/redis.md, the row "a
node is frozen ... past lease_ttl": the other node keeps it).

Node Y runs in its own process with ``time.time`` a minute ahead (its heads'
times ``t`` with it; Redis and node X keep the real time). Y registers ``k``
(and ``kept``), is frozen (SIGSTOP) past its lease; X reaps it and registers
``k`` with a live agent; Y thaws and re-asserts. The re-assert orders the two
registrations of ``k`` to decide whether Y's may replace X's: by the nodes'
clocks, Y's (a minute ahead) looked the later and replaced X's live one. By the
server's order (the stream ids of the registration records), X's is the later:
X keeps ``k``, Y reports a conflict, and writes back ``kept``, which nobody took.
"""

from __future__ import annotations

from typing import Any

import pytest

from foundation.registry import RegistryEvent
from tests.redis.conftest import MakeRegistry
from tests.redis.support import NodeProcess, wait_until
from tests.redis_support import RedisServer

SKEW = 60.0  # Y's wall clock ahead of the real time, seconds

_NODE_Y = """
import json, sys, threading, time
_real = time.time
time.time = lambda: _real() + float(sys.argv[3])  # this node's wall clock runs ahead
from foundation import RedisRegistry, spawn_thread
stop = threading.Event()
reg = RedisRegistry(sys.argv[1], namespace=sys.argv[2], lease_ttl=1.0)
k, kept = spawn_thread(stop.wait), spawn_thread(stop.wait)
if sys.argv[4] == "register_many":
    assert reg.register_many([("k", k), ("kept", kept)]) == [None, None]
else:
    reg.register("k", k)
    reg.register("kept", kept)
print(json.dumps({"ready": reg.node, "written": reg.status().written}), flush=True)
for line in sys.stdin:
    if json.loads(line)["op"] != "report":  # {"op": "exit"}: NodeProcess.close()
        break
    st = reg.status()
    print(json.dumps({
        "state": st.state,
        "recoveries": st.recoveries,
        "conflicts": [c.key for c in reg.conflicts()],
        "k": reg.lookup("k") and reg.lookup("k").node,
        "kept": reg.lookup("kept") and reg.lookup("kept").node,
        "alive": k.is_alive() and kept.is_alive(),
    }), flush=True)
reg.close()
stop.set()
"""


def _skewed_node(url: str, namespace: str, how: str) -> NodeProcess:
    """Node Y: a RedisRegistry in a child process whose ``time.time`` is ahead."""
    return NodeProcess(url, namespace, argv=["-c", _NODE_Y, url, namespace, str(SKEW), how])


@pytest.mark.parametrize("how", ["register", "register_many"])
def test_a_node_with_its_clock_ahead_does_not_take_back_a_key_registered_after_its_reap(
    redis_server: RedisServer, make_registry: MakeRegistry, ns: str, agents: Any, how: str
) -> None:
    y = _skewed_node(redis_server.url, ns, how)
    try:
        x = make_registry(lease_ttl=1.0)
        events: list[RegistryEvent] = []
        x.subscribe(events.append)
        assert x.wait_for_version(y.ready["written"])
        held = x.lookup("k")
        assert held is not None
        assert held.node == y.node
        y.freeze()  # Y's heartbeat stops, its agents stay alive
        assert wait_until(lambda: x.lookup("k") is None, timeout=15), "X reaped Y"
        agent = agents()
        x.register("k", agent)  # the key is free: X takes it (with the real time)
        y.thaw()
        assert wait_until(
            lambda: (r := y.call("report"))["state"] == "connected" and r["recoveries"] >= 1,
            timeout=20,
        ), "Y recovered (re-asserted) after thawing"
        report = y.call("report")
        # X keeps its live registration; Y reports the conflict and keeps its
        # agents alive, and writes back the key nobody took.
        raw = redis_server.command("HGET", f"{{{ns}}}:owner", '"k"')
        assert raw == x.node.encode(), (raw, report)
        assert report["conflicts"] == ["k"], report
        assert report["alive"] is True
        assert wait_until(lambda: (e := x.lookup("kept")) is not None and e.node == y.node)
        entry = x.lookup("k")
        assert entry is not None
        assert entry.agent is agent, entry
        assert wait_until(lambda: y.call("report")["k"] == x.node), y.call("report")
        replaced = [e for e in events if e.kind == "unregistered" and e.entry.agent is agent]
        assert replaced == [], replaced
    finally:
        y.close()
