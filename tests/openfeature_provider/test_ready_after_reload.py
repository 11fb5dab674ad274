"""``PROVIDER_READY`` after an outage is emitted once the flags are back in sync.

Found by an explorer (10/10): node A, cut off from Redis while node B changed a
flag, emitted ``PROVIDER_READY`` ("back in sync") BEFORE its ``FeatureFlags``
reloaded what B changed: a READY handler refreshing its cache read the values
of before the outage. The store told "in_sync" before delivering the reload.

A real redis-server; node A reaches it through a proxy that cuts A alone
(``tests.redis_flags._proxy``). Runs in a plain interpreter (``run_scenario``).
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

SCENARIO = """
from openfeature import api
from foundation import telemetry
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from foundation.openfeature import FoundationProvider
from tests.redis_flags._proxy import CutProxy
from tests.redis_support import RedisServer

server = RedisServer(); server.start()
import atexit; atexit.register(server.stop)  # no redis-server left by a failed run
proxy = CutProxy(server.port)
declared = [Flag("beta"), Flag("color", variants={"red": "r", "blue": "b"}, default="red")]
store_a = RedisFlagStore(proxy.url, namespace="rr", timeout=0.5, resync_interval=0.2,
                         cache_path=None)
store_b = RedisFlagStore(server.url, namespace="rr", timeout=0.5, cache_path=None)
flags_a = FeatureFlags(declared, store=store_a)
flags_b = FeatureFlags(declared, store=store_b)
seen_at_ready = []
seen_at_in_sync = []

class Recording(FoundationProvider):
    def emit_provider_ready(self, details):
        # What a READY handler reads: the flags as they are when it is emitted.
        seen_at_ready.append((flags_a.enabled("beta"), flags_a.value("color", "u")))
        super().emit_provider_ready(details)

detach = telemetry.attach("foundation.flags.in_sync", lambda name, data: seen_at_in_sync.append(
    flags_a.enabled("beta")) if data.get("url", "").endswith(str(proxy.port) + "/0") else None)
api.set_provider_and_wait(Recording(flags_a))
threads = library_threads()
proxy.cut()
wait_for(lambda: store_a.stale, "node A stale (cut off)")
flags_b.enable("beta", by="ops")
flags_b.set_split("color", {"blue": 100}, by="ops")
proxy.restore()
wait_for(lambda: seen_at_ready, "PROVIDER_READY after the cut")
assert seen_at_ready == [(True, "b")], seen_at_ready
assert seen_at_in_sync and all(seen_at_in_sync), seen_at_in_sync
assert flags_a.enabled("beta") and flags_a.value("color", "u") == "b"
# The provider's plan re-read worker comes and goes by design (after changes).
wait_for(lambda: "foundation-openfeature-plans" not in library_threads(), "plan re-read done")
assert library_threads() == threads, (threads, library_threads())
detach()
api.shutdown()
flags_a.close(); flags_b.close(); store_a.close(); store_b.close(); proxy.close(); server.stop()
print("OK", flush=True)
"""


def test_ready_is_emitted_after_the_reload_of_what_changed_meanwhile() -> None:
    run_scenario(SCENARIO)
