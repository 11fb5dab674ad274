"""What other nodes hear when Redis loses registrations (FLUSHALL, a restart empty).

A snapshot taken after the loss lacks registrations their owners still hold
(each owner writes its live ones back within a lease round). Other nodes, and
a ``RedisObserver``, must not hear a live registration ``unregistered`` (reason
``"unregistered"``: nobody unregistered it) then ``registered`` again; a
registration whose agent died meanwhile, or whose node died, leaves as
``"down"`` (``src/foundation/registry/_redis/_vanished.py``).
"""

from __future__ import annotations

import pytest

from tests.faults._subprocess import run_scenario

_SCENARIO = """
from foundation import spawn_thread
from foundation.registry._redis import RedisRegistry
from foundation.registry._redis._observer import RedisObserver
from tests.redis.support import NodeProcess
from tests.redis_support import RedisServer

LOSS = {loss!r}
server = RedisServer()
server.start()
stop, dies = threading.Event(), threading.Event()
d = None
try:
    opts = dict(namespace="v", lease_ttl=2.0, op_timeout=0.5)
    a = RedisRegistry(server.url, **opts)
    b = RedisRegistry(server.url, **opts)
    o = RedisObserver(server.url, namespace="v", timeout=0.5)
    d = NodeProcess(server.url, "v", ttl=2.0)  # a node that will die (kill -9)
    a.register("live", spawn_thread(stop.wait), {{"n": 1}})
    a.register("dies", spawn_thread(dies.wait), {{"n": 2}})
    assert d.call("register", key="dnode", meta={{"n": 3}})["ok"]
    keys = ("live", "dies", "dnode")
    for who, reg in (("B", b), ("observer", o)):
        wait_for(lambda: all(reg.lookup(k) is not None for k in keys), who + " sees all")
    heard = {{"B": [], "observer": []}}

    def listener(name):
        def on(e):
            if e.entry.key in keys:
                heard[name].append(
                    (e.entry.key, e.kind, e.reason, e.down.reason if e.down else None)
                )
        return on

    b.subscribe(listener("B"))
    o.subscribe(listener("observer"))
    gaps = []  # a lookup of the live key that answered None on B or the observer
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            for who, reg in (("B", b), ("observer", o)):
                if reg.lookup("live") is None:
                    gaps.append(who)
            time.sleep(0.002)  # sleep-ok: a sampler's pace, not synchronisation

    sampler = threading.Thread(target=sample)
    sampler.start()

    d.kill()  # its lease goes with the data: nobody ever reaps it
    # "dies" dies while Redis lacks its registration (or is down): no delete
    # record can say so, and A does not write it back.
    if LOSS == "flushall":
        server.command("FLUSHALL")
    else:
        server.kill()
    dies.set()
    wait_for(lambda: a.lookup("dies") is None, "A to see its agent die")
    if LOSS == "restart":
        server.start()  # the same port, empty
    # A write by B: it finds its lease gone and recovers at once (a resync),
    # most often before A writes "live" back.
    deadline = time.monotonic() + 20
    while True:
        try:
            b.register("probe", spawn_thread(stop.wait))
            break
        except Exception:
            assert time.monotonic() < deadline, "B never wrote again"
            time.sleep(0.05)  # sleep-ok: retrying with a deadline while Redis restarts
    for who, reg in (("B", b), ("observer", o)):
        # Listeners run after the mirror changed (a courier, the observer's
        # thread once its lock is released): wait for what they hear.
        wait_for(
            lambda: {{h[0] for h in heard[who] if h[1] == "unregistered"}} >= {{"dies", "dnode"}},
            who + " to hear the dead go",
            timeout=30,
        )
    wait_for(lambda: server.command("HEXISTS", "{{v}}:head", '"live"') == 1, "live back")
    sampling.set()
    sampler.join()
    for who, reg in (("B", b), ("observer", o)):
        got = sorted(heard[who], key=lambda t: t[0])
        assert got == [
            ("dies", "unregistered", "down", "noproc"),
            ("dnode", "unregistered", "down", "lease_expired"),
        ], (who, list(heard[who]))
        assert reg.lookup("live") is not None, who
    assert gaps == [], gaps
    assert sorted(dd.event.entry.key for dd in o.recently_dead()) == ["dies", "dnode"]
    o.close()
    a.close()
    b.close()
    print("OK")
finally:
    stop.set()
    dies.set()
    if d is not None:
        d.kill()
    server.stop()
"""


@pytest.mark.parametrize("loss", ["flushall", "restart"])
def test_other_nodes_keep_a_live_registration_redis_lost_and_hear_the_dead_as_down(
    loss: str,
) -> None:
    result = run_scenario(_SCENARIO.format(loss=loss), timeout=120)
    assert "unexpected error" not in result.stderr, result.stderr


_BEHIND = """
import json
from foundation import spawn_thread
from foundation.registry._redis import RedisRegistry
from foundation.registry._redis._observer import RedisObserver
from tests.redis.support import NodeProcess
from tests.redis_support import RedisServer

server = RedisServer()
server.start()
stop, kstop, gate, held = (threading.Event() for _ in range(4))
b = None
try:
    # A long lease: B, frozen a moment, must not be reaped; a short stream, so
    # what B and the observer miss meanwhile is trimmed past their position.
    a = RedisRegistry(server.url, namespace="w", lease_ttl=30.0, stream_maxlen=100)
    b = NodeProcess(server.url, "w", ttl=30.0, maxlen=100)
    o = RedisObserver(server.url, namespace="w")
    heard = []

    def on(e):
        if e.entry.key == "hold":
            held.set()
            gate.wait()  # the observer's thread stops reading the stream here
        elif e.entry.key == "k":
            heard.append((e.kind, e.reason, e.down.reason if e.down else None))

    o.subscribe(on)
    a.register("k", spawn_thread(kstop.wait))
    got = b.call("wait_keys", keys=["k"])
    assert got["ok"], got
    wait_for(lambda: o.lookup("k") is not None, "the observer sees k")
    a.register("hold", spawn_thread(stop.wait))
    wait_for(held.is_set, "the observer's thread held")
    b.freeze()
    for i in range(300):  # trims the stream far past B's and the observer's position
        a.register(("f", i), spawn_thread(stop.wait))
        a.unregister(("f", i))
    kstop.set()  # k's agent dies: its delete record is on the stream, after the gap
    wait_for(lambda: server.command("HEXISTS", "{w}:head", '"k"') == 0, "k deleted")
    b.thaw()
    gate.set()
    got = b.call("wait_keys", keys=["hold"], timeout=20)
    assert got["ok"], got
    wait_for(lambda: len(heard) >= 2, "the observer to hear k go", timeout=20)
    def b_log():
        return [ev for ev in b.call("events")["log"] if ev[2] == json.dumps("k")]

    # B's listeners run on a courier thread, after its mirror changed: wait for them.
    wait_for(lambda: len(b_log()) >= 2, "B's listener to hear k go")
    assert b_log() == [["registered", None, '"k"'], ["unregistered", "down", '"k"']], b_log()
    assert heard == [("registered", None, None), ("unregistered", "down", "normal")], heard
    assert b.call("status")["status"]["resyncs"] >= 1
    o.close()
    a.close()
    print("OK")
finally:
    stop.set()
    kstop.set()
    gate.set()
    if b is not None:
        b.kill()
    server.stop()
"""


def test_a_delete_missed_behind_a_gap_is_told_as_its_record_says_at_once() -> None:
    """A mirror behind a trimmed stream resynchronises; a delete record still on the
    stream past its position says why the entry went (here a death), not a guess."""
    result = run_scenario(_BEHIND, timeout=120)
    assert "unexpected error" not in result.stderr, result.stderr
