"""RedisRegistry's error messages stay short whatever the key (issue 11, item 8).

Keys have no size limit (a 100 KB ``str`` or a 20,000-element tuple is a valid
key on every backend), but a message must be bounded. Before the fix every
``BackendUnavailable`` of ``register``/``unregister``/``update_metadata``
quoted the whole key (``failed while registering 'xxxx…'``: 100 KB), and so
did ``status().last_error`` and the lease thread's reports.

A fault scenario (Redis stopped), run in a subprocess under the interpreter's
default hooks.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SCENARIO = """
from foundation import RedisRegistry, spawn_thread
from foundation.errors import BackendUnavailable
from tests.redis_support import RedisServer

LIMIT = 1_000
stop, dying = threading.Event(), threading.Event()
server = RedisServer()
server.start()
try:
    reg = RedisRegistry(server.url, namespace="adversarial-messages", op_timeout=0.5)
    big = "x" * 100_000
    wide = tuple("k" * 10 for _ in range(20_000))
    reg.register(("doomed", big), spawn_thread(dying.wait))   # dies while Redis is down
    reg.register(big, spawn_thread(stop.wait))
    server.stop()
    calls = {
        "register": lambda: reg.register(("other", big), spawn_thread(stop.wait)),
        "register(tuple)": lambda: reg.register(wide, spawn_thread(stop.wait)),
        "unregister": lambda: reg.unregister(big),
        "update_metadata": lambda: reg.update_metadata(big, {"n": 1}),
        "register_many": lambda: reg.register_many([(("many", big), spawn_thread(stop.wait))]),
    }
    for name, call in calls.items():
        try:
            call()
        except BackendUnavailable as exc:
            assert len(str(exc)) <= LIMIT, (name, len(str(exc)))
        else:
            raise AssertionError(f"{name} succeeded with Redis stopped")
    last = reg.status().last_error or ""
    assert 0 < len(last) <= LIMIT, len(last)
    dying.set()   # the lease thread now fails to delete it in Redis, and says so briefly
    wait_for(lambda: reg.lookup(("doomed", big)) is None, "the death to reach the mirror")
    reg.close()
    print("OK")
finally:
    stop.set()
    dying.set()
    server.stop()
"""


def test_backend_errors_and_status_stay_short_whatever_the_key() -> None:
    result = run_scenario(_SCENARIO, timeout=120)
    # Every log line the scenario produced (the lease thread's reports of the
    # failed writes and deletes included) is bounded too.
    longest = max((len(line) for line in result.stderr.splitlines()), default=0)
    assert longest <= 2_000, longest
