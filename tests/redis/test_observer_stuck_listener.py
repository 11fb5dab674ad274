"""A stuck ``RedisObserver`` listener freezes neither its view nor its ``close()``.

Before, the observer called its listeners on its only thread: a listener that
blocked (a webhook with no timeout) froze the mirror (``count()`` 1 while the
node had 200, ``lookup`` None) and ``close()`` waited for the listener. Now the
thread applies changes and queues their events; a courier runs the listeners,
in the order of the changes, as every other ``subscribe`` of the library does.

Run in a plain interpreter (the interpreter's default hooks): no library
thread may die.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario
from tests.redis_support import RedisServer

_STUCK = """
from foundation.liveness import spawn_thread
from foundation.registry._redis import RedisRegistry
from foundation.registry._redis._observer import RedisObserver

URL, NS, N = {url!r}, {ns!r}, 50
stop = threading.Event()
hold = [threading.Event()]  # the gate the listener waits at (one per phase)
heard = []

def stuck(event):
    heard.append(event)
    hold[0].wait()  # a webhook call with no timeout, say

node = RedisRegistry(URL, namespace=NS)
observer = RedisObserver(URL, namespace=NS)
try:
    observer.subscribe(stuck)
    threads = library_threads()
    node.register("agent-0", spawn_thread(stop.wait), {{"i": 0}})
    wait_for(lambda: heard, "the listener to hear the first event (and block)")
    for i in range(1, N):
        node.register(f"agent-{{i}}", spawn_thread(stop.wait), {{"i": i}})
    # The view keeps up with the node while the listener is stuck.
    wait_for(lambda: observer.count() == N, "the observer's view to keep up")
    print("LOOKUP", observer.lookup(f"agent-{{N - 1}}") is not None)
    print("HEARD WHILE STUCK", len(heard))
    assert library_threads() == threads, (threads, library_threads())
    # Released, the listener hears every change, in the order made.
    hold[0].set()
    wait_for(lambda: len(heard) == N, "the queued events")
    print("ORDER", [e.entry.key for e in heard] == [f"agent-{{i}}" for i in range(N)])
    # Stuck again: close() returns while the listener is still blocked.
    hold[0] = threading.Event()
    node.register(f"agent-{{N}}", spawn_thread(stop.wait), {{}})
    wait_for(lambda: len(heard) == N + 1, "the listener to block again")
    closer = threading.Thread(target=observer.close)
    closer.start()
    wait_for(lambda: not closer.is_alive(), "close() with a stuck listener")
    print("CLOSED WHILE STUCK", not hold[0].is_set(), len(heard) == N + 1)
    print("OK")
finally:
    hold[0].set()
    observer.close()
    node.close()
    stop.set()
"""


def test_a_stuck_listener_freezes_neither_the_view_nor_close(
    redis_server: RedisServer, ns: str
) -> None:
    result = run_scenario(_STUCK.format(url=redis_server.url, ns=ns), timeout=60)
    assert result.lines("LOOKUP") == ["LOOKUP True"], result.stdout
    # Only the first event reached the listener: it was blocked meanwhile.
    assert result.lines("HEARD WHILE STUCK") == ["HEARD WHILE STUCK 1"], result.stdout
    assert result.lines("ORDER") == ["ORDER True"], result.stdout
    assert result.lines("CLOSED WHILE STUCK") == ["CLOSED WHILE STUCK True True"], result.stdout
