"""A ``RedisObserver`` whose tail connection is cut over and over, outside pytest.

``CLIENT KILL`` in a loop (an operator's script, a flapping proxy, client
eviction) cuts the observer's tail while Redis answers; it is back within
milliseconds each time. Before, each cut was a WARNING under
``foundation.registry.redis`` (``observer of ... lost Redis``): one line per
cut in the admin server's log. Now it is damped as a registry node's and a
flag store's are (``foundation._flap``): the first cut as any outage, one
WARNING for the first repeat, the repeats at DEBUG, an INFO line once the flap
is over; a server gone during a flap is said at WARNING once the window has
passed. No thread dies.
"""

from __future__ import annotations

from tests.faults._redis_scenarios import RECORDS
from tests.faults._subprocess import run_scenario

_START = (
    RECORDS
    + """
import redis
from foundation import _flap
from foundation.registry._redis._observer import RedisObserver
from tests.redis_support import RedisServer

# Read at each call. During the cuts, longer than any gap between two of them
# however slow the machine (with 2 s, a gap of 2 s ended the flap: a second
# "lost Redis" WARNING); after them, 2 s: the scenario need not wait ten seconds.
_flap.FLAP_WINDOW = 600.0
server = RedisServer()
server.start()
admin = redis.Redis.from_url(server.url, decode_responses=True)
said = Records(logging.INFO)
logging.getLogger("foundation").addHandler(said)
observer = RedisObserver(server.url, namespace="o")
TAIL = "foundation-observer-tail[o]"
killed = set()

def reading():
    # A tail connection not yet killed, blocked in XREAD: resynchronised, connected.
    return any(c["name"] == TAIL and int(c["id"]) not in killed and c["cmd"] == "xread"
               for c in admin.client_list())

def cuts(n):
    for cut in range(n):
        wait_for(reading, f"the observer back before cut {cut}")
        for c in admin.client_list():
            if c["name"] == TAIL:
                killed.add(int(c["id"]))
                admin.client_kill_filter(_id=c["id"])
    wait_for(reading, "the observer back after the cuts")
    _flap.FLAP_WINDOW = 2.0
"""
)

_FLAP = (
    _START
    + """
try:
    threads = library_threads()
    cuts(8)
    wait_for(lambda: any("the flap is over" in m for m in said.messages), "the flap's end")
    for r in said.records:
        print("SAID", r.levelname, r.getMessage())
    assert observer.connected
    assert library_threads() == threads, (threads, library_threads())
    observer.close()
    print("OK")
finally:
    server.stop()
"""
)


def test_an_observer_cut_over_and_over_is_one_warning_not_one_per_cut() -> None:
    result = run_scenario(_FLAP, timeout=120)
    said = [line.removeprefix("SAID ") for line in result.lines("SAID ")]
    warnings = [line for line in said if line.startswith("WARNING")]
    # The first cut: a WARNING, as any outage; the second, right after: the one
    # WARNING of the flap; the rest at DEBUG; an INFO line when it is over.
    assert sum("lost Redis" in line for line in warnings) == 1, said
    assert sum("failed again, with the same error" in line for line in warnings) == 1, said
    assert len(warnings) == 2, said
    over = [line for line in said if "the flap is over" in line]
    assert len(over) == 1, said
    assert over[0].startswith("INFO "), said
    quiet = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("LOG DEBUG foundation.registry.redis ") and "lost Redis" in line
    ]
    assert len(quiet) >= 6, result.stderr
    assert "LOG ERROR" not in result.stderr, result.stderr


# A flap, then the server goes away: that drop is the cuts' cause (unreachable),
# so it is logged at DEBUG; once the window has passed with no return, one
# WARNING says the observer is still disconnected.
_FLAP_THEN_GONE = (
    _START
    + """
try:
    threads = library_threads()
    cuts(3)
    assert any("failed again, with the same error" in m for m in said.messages), said.messages
    said.records.clear()
    server.kill()
    wait_for(lambda: any("still disconnected" in m for m in said.messages), "the WARNING")
    still = [r for r in said.records if "still disconnected" in r.getMessage()]
    assert len(still) == 1 and still[0].levelname == "WARNING", still
    assert not observer.connected
    server.start()  # the same port, empty
    wait_for(lambda: observer.connected, "the observer back")
    assert library_threads() == threads, (threads, library_threads())
    observer.close()
    print("OK")
finally:
    server.stop()
"""
)


def test_a_server_gone_during_an_observer_flap_is_said_at_warning() -> None:
    result = run_scenario(_FLAP_THEN_GONE, timeout=120)
    assert "LOG ERROR" not in result.stderr, result.stderr
