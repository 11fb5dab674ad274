"""A node's recovery never undoes another node's unregister its tail had not applied.

A recovery (after a version gap on the change stream, or a connection the
server cut) re-asserts the node's live registrations before it reloads its
snapshot. Node b may meanwhile have unregistered (``unregister(key)`` works on
any node's key) or replaced one of node a's keys, with a's tail not yet past
that delete record. Re-asserting it then wrote the key back (the unregister
undone: a resurrection, seen by every node) or reported a conflict for a key
b had taken on purpose. Here a's tail thread is held (``TailHold``) while
b unregisters, replaces, and registers; then
either a stream record before b's deletes is removed (XDEL: a's tail meets a
version gap) or a's connections are cut (a recovery without a gap).

Runs in a subprocess with the interpreter's default hooks (``run_scenario``):
no library thread died.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from foundation.registry._redis._scripts import RegisterArgs
from tests.faults._redis_scenarios import CLOSE_ALL, REGISTRY_PAIR
from tests.faults._subprocess import run_scenario
from tests.redis.conftest import MakeRegistry
from tests.redis_support import RedisServer

_SCENARIO = (
    REGISTRY_PAIR
    + """
FAULT = {fault!r}
try:
    a, b = open_nodes("u", lease_ttl=5.0)
    threads = library_threads()
    for key in ("gone", "retaken", "swapped", "kept"):
        a.register(key, spawn_thread(stop.wait), {{"by": "a"}})
    assert b.wait_for_version(a.status().written)

    # a's tail, once it applied b's registration of "stall", waits until
    # released: a's tail stays behind what follows.
    from tests.redis.tail_hold import TailHold
    hold = TailHold(a, "stall")
    stalled, release = hold.stalled, hold.release
    seen = []
    def listener(event):
        seen.append((event.kind, event.reason, event.entry.key, event.entry.node))
    a.subscribe(listener)
    b.register("stall", spawn_thread(stop.wait))
    assert stalled.wait(10), "a's tail never delivered 'stall'"

    b.register("filler", spawn_thread(stop.wait))       # the record XDEL removes
    assert b.unregister("gone") is True                   # a's key, unregistered by b
    assert b.unregister("retaken") is True                # ... then registered by b
    b.register("retaken", spawn_thread(stop.wait), {{"by": "b"}})
    b.register("swapped", spawn_thread(stop.wait), {{"by": "b"}}, replace=True)
    assert b.unregister("swapped") is True                # replaced, then unregistered
    if FAULT == "gap":
        ids = [rid for rid, f in raw.xrange("{{u}}:log") if f.get("k") == '"filler"']
        assert raw.xdel("{{u}}:log", *ids) == 1
    else:
        for c in raw.client_list():
            if c["name"] == "foundation-tail:a":  # the tail's: its next read fails
                raw.client_kill_filter(_id=c["id"])
    resyncs = a.status().resyncs
    release.set()

    wait_for(lambda: a.status().resyncs > resyncs, "a's recovery")
    wait_for(lambda: a.status().state == "connected", "a connected")
    assert b.wait_for_version(a.status().written, timeout=10)
    assert a.wait_for_version(b.status().written, timeout=10)

    def view(n):
        return {{e.key: (e.node, dict(e.metadata)) for e in n.list_all()}}
    want = {{
        "kept": ("a", {{"by": "a"}}),
        "retaken": ("b", {{"by": "b"}}),
        "stall": ("b", {{}}),
        "filler": ("b", {{}}),
    }}
    owners = raw.hgetall("{{u}}:owner")
    print("A", view(a))
    print("B", view(b))
    print("REDIS", owners)
    print("CONFLICTS", a.conflicts())
    print("REASSERTS", a.status().reasserts, a.status().reasserted)
    assert owners == {{'"kept"': "a", '"retaken"': "b", '"stall"': "b", '"filler"': "b"}}, owners
    assert view(a) == view(b) == want
    assert a.conflicts() == []
    # a's listener heard each of its keys go, once (a courier delivers them).
    wait_for(lambda: not a._delivery.pending and not a._delivery.busy, "a's events delivered")
    gone = [(r, k) for kind, r, k, n in seen if kind == "unregistered" and n == "a"]
    assert sorted(k for _, k in gone) == ["gone", "retaken", "swapped"], seen
    wait_for(lambda: library_threads() == threads, "a's couriers to end")
    print("OK")
"""
    + CLOSE_ALL
)


@pytest.mark.parametrize("fault", ["gap", "cut"])
def test_a_recovery_does_not_write_back_what_another_node_unregistered(fault: str) -> None:
    result = run_scenario(_SCENARIO.format(fault=fault), timeout=120)
    assert "LOG ERROR" not in result.stderr, result.stderr[-3000:]
    lost = [line for line in result.stderr.splitlines() if "lost" in line and "LOG WARNING" in line]
    assert lost == [], "\n".join(lost[:5])


def test_the_reassert_script_does_not_write_back_a_key_deleted_past_since(
    make_registry: MakeRegistry, redis_server: RedisServer, agents: Callable[[], Any]
) -> None:
    # The window after the recovery's look at the stream: the delete lands
    # between that read and the re-assert script, which then finds it itself.
    a = make_registry(node="a")
    b = make_registry(node="b")
    a.register("k", agents(), {"by": "a"})
    own = a._sh.own["k"]
    ns = a._sh.prefix
    with redis.Redis.from_url(redis_server.url) as raw:
        before = raw.xinfo_stream(f"{ns}:log")["last-generated-id"].decode()
        assert b.unregister("k") is True
        after = raw.xinfo_stream(f"{ns}:log")["last-generated-id"].decode()

        def reassert(since: str) -> Any:
            args = RegisterArgs(
                a._sh.maxlen, "a", own.ek, own.head, own.meta, own.ix, "a", False, "", 2500, since
            )
            return a._sh.scripts["register"](keys=a._sh.keys, args=args.argv(), client=raw)

        assert reassert(before) == [b"GONE"]
        assert not raw.hexists(f"{ns}:owner", own.ek)
        # A delete before `since` was already seen by the caller; none: written
        # back (node a then deletes it as an orphan: it gave that agent up).
        assert reassert(after)[0] == b"OK"
