"""``unregister(key)`` fails (Redis frozen) after the key's agent died meanwhile.

While an unregister's script is on its way, a death of the key's agent is left
to that call (``_claims.on_down``): the script decides the reason. When the
script fails instead (outcome unknown), that death must still be handled as
any other: the dead agent's entry leaves this node's mirror with ONE "down"
event (with its ``Down``), and its delete reaches Redis once it answers.
Run in a subprocess with default hooks (tests/faults/_subprocess.py).
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SCENARIO = """
from foundation import errors, spawn_thread
from foundation.registry._redis import RedisRegistry
from foundation._demo._redis_server import RedisServerProcess

server = RedisServerProcess()
server.start()
stop, end = threading.Event(), threading.Event()
try:
    reg = RedisRegistry(server.url, namespace="d", lease_ttl=30.0, op_timeout=1.0)
    other = RedisRegistry(server.url, namespace="d", lease_ttl=30.0, op_timeout=1.0)
    threads = library_threads()
    heard, seen = [], []
    reg.subscribe(lambda e: e.kind == "unregistered" and heard.append(e))
    other.subscribe(lambda e: e.kind == "unregistered" and seen.append(e))
    reg.register("k", spawn_thread(end.wait))
    assert other.wait_for_version(reg.status().written)
    own = reg._sh.own["k"]

    outcome = []
    def unregistering():
        try:
            outcome.append(reg.unregister("k"))
        except errors.BackendUnavailable as exc:
            outcome.append(exc)

    server.freeze()
    caller = threading.Thread(target=unregistering)
    caller.start()
    wait_for(lambda: own.unregistering, "the unregister's script on its way")
    end.set()  # the agent dies while that script waits on the frozen server
    wait_for(lambda: own.died is not None, "the death left to the unregister")
    assert reg.lookup("k") is not None and not heard  # (the call decides)
    caller.join(30)
    assert isinstance(outcome[0], errors.BackendUnavailable), outcome
    wait_for(lambda: heard, "the down event after the failed unregister")
    assert reg.lookup("k") is None
    assert [(e.reason, e.down is not None) for e in heard] == [("down", True)], heard

    server.thaw()
    wait_for(lambda: reg.status().state == "connected", "reconnected after the thaw")
    # Redis may have run the timed-out script after the thaw ("unregistered"),
    # else the pending delete of the dead agent ran ("down"): either way the key
    # is gone everywhere, each node heard it go once, and nothing is left.
    wait_for(lambda: other.lookup("k") is None, "the key gone on the other node")
    wait_for(lambda: len(seen) == 1, "the other node's one event")
    assert reg.unregister("k") is False
    assert reg.count() == other.count() == 0
    assert len(heard) == 1 and len(seen) == 1, (heard, seen)
    assert not reg._sh.pending_downs, reg._sh.pending_downs
    assert library_threads() == threads, library_threads()
    reg.close()
    other.close()
    print("OK")
finally:
    stop.set()
    end.set()
    server.thaw()
    server.stop()
"""


def test_a_death_left_to_an_unregister_that_fails_is_handled_as_a_death() -> None:
    run_scenario(_SCENARIO, timeout=120)
