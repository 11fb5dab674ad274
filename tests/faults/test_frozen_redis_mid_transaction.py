"""A Redis that freezes in the middle of a flag transaction (after WATCH, before EXEC).

redis-py drops the socket of a read that times out while WATCHing (the body's
``HGETALL``, meta's ``HMGET``), then its ``reset()`` (run by its failure handler,
and again as the pipeline's ``with`` ends) reconnects only to send ``UNWATCH``:
on a frozen Redis one timeout more each. The write waited three timeouts, not
one, and opened two connections to the frozen server. ``RedisFlagStore`` now
never undoes the WATCH of a dropped socket (``_watch_pipeline``), and the read's
failure leaves as the timeout it is (redis-py says ``WatchError``): the next
write fails at once (``_fail_fast``).

Counted, not timed: connections waiting in the frozen server's accept queue
(``/proc/net/tcp``: a listening socket's ``rx_queue``). In a subprocess under
the interpreter's default hooks; no library thread dies.
"""

from __future__ import annotations

import textwrap

from tests.faults._redis_scenarios import FROZEN_PROBES
from tests.faults._subprocess import run_scenario

_FROZEN_MID_BODY = (
    """
import uuid
from foundation.errors import BackendUnavailable
from foundation.flags import RedisFlagStore

T = 1.0
# resync_interval: the listener's XREAD blocks 2 s, so it times out (and
# reconnects) a while after the writer's one timeout.
store = RedisFlagStore(server.url, namespace=f"frz-{uuid.uuid4().hex[:8]}", timeout=T,
                       resync_interval=10.0, cache_path=None)
threads_before = library_threads()

"""
    + FROZEN_PROBES
    + """

def freeze_then_read(txn):
    # WATCH and the meta read were answered; Redis freezes before the body's read.
    store._wake_listener()                        # its XREAD starts again: a full block
    server.freeze()
    wait_for(stopped, "redis-server to stop")
    assert queued_connections() == 0
    return txn.get("a")

try:
    store.transaction(freeze_then_read)
    raise AssertionError("a read from a frozen Redis answered")
except BackendUnavailable as exc:
    first = exc
reconnects = queued_connections()
print("FIRST", first, "| reconnects", reconnects)
assert reconnects == 0, ("the writer reconnected to the frozen Redis to UNWATCH", reconnects)
assert "no answer in time" in str(first), str(first)

# The next write: one got no answer in time a moment ago, nothing answered
# since (Redis is still frozen): it fails at once.
try:
    store.transaction(lambda txn: txn.get("a"))
    raise AssertionError("a read from a frozen Redis answered")
except BackendUnavailable as exc:
    second = exc
assert "timed out moments ago" in str(second), (str(first), str(second))

server.thaw()
def write_succeeds():
    try:
        store.transaction(lambda txn: txn.get("a"))
    except BackendUnavailable:
        return False                              # not yet back (or the window)
    return True
wait_for(write_succeeds, "a transaction to succeed after the thaw", timeout=30)
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
store.close()
print("OK")
"""
)


def test_a_read_timing_out_while_watching_costs_one_timeout_and_fails_next_fast() -> None:
    script = (
        "from tests.redis_support import RedisServer\n"
        "server = RedisServer()\nserver.start()\ntry:\n"
        + textwrap.indent(_FROZEN_MID_BODY, "    ")
        + "\nfinally:\n    server.thaw()\n    server.stop()\n"
    )
    run_scenario(script, timeout=120)
