"""PROVIDER_STALE / PROVIDER_READY as a RedisFlagStore loses and regains a real redis-server.

Runs in a plain interpreter (``tests.faults._subprocess.run_scenario``: the
default ``sys.unraisablehook`` and ``threading.excepthook``), so a library
thread dying on the way would show in stderr and fail the test.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario
from tests.redis_support import redis_server_binary

SCENARIO = """
import tempfile, queue, os
from openfeature import api
from openfeature.event import ProviderEvent
from openfeature.provider import ProviderStatus
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from foundation.openfeature import FoundationProvider
from tests.redis_support import RedisServer

events = queue.Queue()

def handler(kind):
    return lambda details: events.put((kind, details))

def next_event(kind):
    # Events other than `kind` may come first (a reload's configuration changes).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            got, details = events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if got == kind:
            return details
    raise AssertionError(f"no {kind} event")

server = RedisServer()
server.start()
work = tempfile.mkdtemp()
store = RedisFlagStore(server.url, namespace="of", timeout=0.5, resync_interval=0.2,
                       cache_path=os.path.join(work, "copy.sqlite3"))
flags = FeatureFlags([Flag("beta"), Flag("color", variants={"red": "r", "blue": "b"},
                                         default="red")], store=store)
flags.enable("beta")
flags.set_split("color", {"blue": 100})
api.set_provider_and_wait(FoundationProvider(flags))
client = api.get_client()
for kind in ProviderEvent:
    client.add_handler(kind, handler(kind))
assert next_event(ProviderEvent.PROVIDER_READY) is not None  # ready: runs at once
assert client.get_provider_status() == ProviderStatus.READY

server.kill()
details = next_event(ProviderEvent.PROVIDER_STALE)
assert details.provider_name == "foundation", details
assert "lost" in (details.message or ""), details
assert client.get_provider_status() == ProviderStatus.STALE
# Stale, the provider still answers from the node copy.
d = client.get_boolean_details("beta", False)
assert (d.value, d.reason, d.error_code) == (True, "STATIC", None), d
d = client.get_string_details("color", "x", None)
assert (d.value, d.variant, d.reason) == ("b", "blue", "SPLIT"), d
# The kill switch works during the outage, and the provider hears it.
flags.disable("beta", by="ops", reason="outage drill")
changed = next_event(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED)
assert changed.flags_changed == ["beta"], changed
assert client.get_boolean_details("beta", True).reason == "DISABLED"

server.start()  # same port, empty: the store restores it from its copy
details = next_event(ProviderEvent.PROVIDER_READY)
assert client.get_provider_status() == ProviderStatus.READY
d = client.get_boolean_details("beta", True)
assert (d.value, d.reason) == (True, "DISABLED"), d
assert store.load_states()["beta"].switch is False  # the pending kill switch was committed

# A second outage: the same transitions again.
server.kill()
next_event(ProviderEvent.PROVIDER_STALE)
server.start()
next_event(ProviderEvent.PROVIDER_READY)
assert client.get_provider_status() == ProviderStatus.READY

alive = library_threads()
assert "foundation-flags-redis[of]" in alive, alive
print("threads", alive)
api.shutdown()
flags.close()
store.close()
server.stop()
print("OK")
"""


def test_stale_then_ready_across_a_redis_restart() -> None:
    redis_server_binary()  # fails (not skips) when redis-server is missing, as the suite does
    result = run_scenario(SCENARIO)
    assert result.lines("threads "), result.stdout
    assert "lost Redis" in result.stderr, result.stderr  # the store's own WARNING
