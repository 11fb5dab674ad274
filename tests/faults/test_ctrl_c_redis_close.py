"""A Ctrl-C cutting ``close()`` of a Redis object anywhere (``RedisRegistry``,
``RedisObserver``, ``RedisFlagStore``): the next ``close()`` does what is left.

Was: ``close()`` marked the node closed first and returned at once the next
time, so a close cut after that left the lease and tail threads running, the
node's registrations in Redis (other nodes saw them until the lease expired),
its monitors and its connections for good; the observer and the flag store
their thread and connections (and the store its local copy). As ``MonitorManager``,
``MemoryRegistry`` and the flag stores (``test_ctrl_c_close.py``), only a
close that ran to its end makes the next one return.

Run in a subprocess with the interpreter's default hooks.
"""

from __future__ import annotations

from tests._ctrl_c import SCENARIO_AGENTS
from tests.faults._redis_scenarios import REGISTRY_PAIR
from tests.faults._subprocess import run_scenario

_SCENARIO = (
    REGISTRY_PAIR
    + SCENARIO_AGENTS  # (after: its `stop` is the one end() sets)
    + """
from foundation.errors import Closed

def node_clients():
    return sorted(c["name"] for c in raw.client_list() if c["name"].endswith(":cut"))

try:
    observer = RedisRegistry(server.url, namespace="cut", node="observer")
    opened.append(observer)
    made = {}
    def fresh():
        made["threads"], made["fds"] = library_threads(), fds()
        reg = RedisRegistry(server.url, namespace="cut", node="cut", op_timeout=1.0)
        reg.register("thread", foreign)
        reg.register("process", process)
        made["reg"] = reg
    def close(n):
        made["reg"].close()
    def after(n):
        reg = made.pop("reg")
        reg.close()  # again: does what the cut one left
        wait_for(lambda: library_threads() == made["threads"],
                 f"its threads gone (close cut at point {n}): {library_threads()}")
        wait_for(lambda: fds() == made["fds"], f"its fds closed (close cut at point {n})")
        wait_for(lambda: node_clients() == [], f"its connections closed (point {n})")
        assert raw.hgetall("{cut}:head") == {}, f"its registrations kept (point {n})"
        assert observer.wait_for_version(int(raw.get("{cut}:ver") or 0))
        assert observer.list_all() == [], f"seen by another node (point {n})"
        try:
            reg.lookup("thread")
        except Closed:
            pass
        else:
            raise AssertionError(f"a read after close() answered (point {n})")
    cut = interrupt_at_check_points(close, ["foundation/registry/_redis/"],
                                     after_each=after, before_each=fresh)
    print("CUT", cut, flush=True)
finally:
    for reg in opened:
        reg.close()
    end()
    server.stop()
print("OK")
"""
)


_OTHERS = (
    REGISTRY_PAIR
    + SCENARIO_AGENTS
    + """
from foundation.flags import RedisFlagStore
from foundation.registry._redis._observer import RedisObserver

def sweep(what, make):
    made = {}
    def fresh():
        made["threads"], made["fds"] = library_threads(), fds()
        made["it"] = make()
    def close(n):
        made["it"].close()
    def after(n):
        it = made.pop("it")  # (kept: its sockets must not close by collection)
        it.close()  # again: does what the cut one left
        wait_for(lambda: library_threads() == made["threads"],
                 f"{what}: its threads gone (close cut at point {n}): {library_threads()}")
        wait_for(lambda: fds() == made["fds"], f"{what}: its fds closed (point {n})")
    cut = interrupt_at_check_points(close, ["foundation/"], after_each=after, before_each=fresh)
    print("CUT", what, cut, flush=True)

try:
    RedisRegistry(server.url, namespace="seen", node="a").close()
    sweep("RedisObserver", lambda: RedisObserver(server.url, namespace="seen"))
    sweep("RedisFlagStore", lambda: RedisFlagStore(
        server.url, namespace="cut", cache_path=None, timeout=5.0))
finally:
    end()
    server.stop()
print("OK")
"""
)


def test_a_cut_observer_or_flag_store_close_is_finished_by_the_next_close() -> None:
    result = run_scenario(_OTHERS, timeout=300)
    counts = {line.split()[1]: int(line.split()[2]) for line in result.lines("CUT")}
    assert counts.keys() == {"RedisObserver", "RedisFlagStore"}, result.stdout
    assert all(n >= 4 for n in counts.values()), counts  # each step of close() was cut


def test_a_cut_redis_registry_close_is_finished_by_the_next_close() -> None:
    result = run_scenario(_SCENARIO, timeout=300)
    [line] = result.lines("CUT")
    assert int(line.split()[1]) > 10, line  # every step of close() was cut
