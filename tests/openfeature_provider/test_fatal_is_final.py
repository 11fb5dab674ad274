"""FATAL is final: a Redis outage and return after ``flags.close()`` change nothing.

Before the fix, once a resolution had found ``flags`` closed (``PROVIDER_ERROR``
with ``PROVIDER_FATAL``, status ``FATAL``), the caller's still-open
``RedisFlagStore`` losing and regaining Redis made the provider emit
``PROVIDER_STALE`` then ``PROVIDER_READY``: the SDK reported the provider
``STALE``, then ``READY``, while every resolution still answered
``PROVIDER_FATAL``. Now the provider drops its health listeners when it goes
fatal and ``_on_health`` does nothing once fatal.

Runs in a plain interpreter (``run_scenario``: default hooks), so a library
thread dying on the way fails the test. Synchronisation: the scenario's own
telemetry listener, attached after the provider's, runs after it for the same
event (listeners run in order), and the SDK sets a provider's status in
``emit`` itself, so the status read after that listener fired is final.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario
from tests.redis_support import redis_server_binary

SCENARIO = """
import os, tempfile
from openfeature import api
from openfeature.provider import ProviderStatus
from foundation import telemetry
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from foundation.openfeature import FoundationProvider
from tests.redis_support import RedisServer

server = RedisServer()
server.start()
try:  # no redis-server left behind by a failed run
    store = RedisFlagStore(server.url, namespace="of", timeout=0.5, resync_interval=0.2,
                           cache_path=os.path.join(tempfile.mkdtemp(), "copy.sqlite3"))
    flags = FeatureFlags([Flag("beta")], store=store)
    flags.enable("beta")
    provider = FoundationProvider(flags)
    api.set_provider_and_wait(provider)
    client = api.get_client()
    assert client.get_provider_status() == ProviderStatus.READY

    flags.close()
    d = client.get_boolean_details("beta", False)
    assert (d.reason, d.error_code) == ("ERROR", "PROVIDER_FATAL"), d
    assert client.get_provider_status() == ProviderStatus.FATAL
    for name in ("foundation.flags.stale", "foundation.flags.in_sync"):
        assert provider._on_health not in telemetry.listeners(name), name  # detached

    # Our own listeners, attached last, run after any the provider still had.
    heard = {name: threading.Event()
             for name in ("foundation.flags.stale", "foundation.flags.in_sync")}
    def on_health(name, data):
        if data.get("namespace") == "of":
            heard[name].set()
    for name in heard:
        telemetry.attach(name, on_health)

    server.kill()
    assert heard["foundation.flags.stale"].wait(20), "the store never went stale"
    assert store.stale
    assert client.get_provider_status() == ProviderStatus.FATAL, client.get_provider_status()
    # A health callback in flight is ignored too (the SDK's status is unchanged):
    provider._on_health("foundation.flags.stale", {"namespace": "of", "error": "x"})
    assert client.get_provider_status() == ProviderStatus.FATAL

    server.start()  # same port, empty: the store restores it from its copy
    assert heard["foundation.flags.in_sync"].wait(20), "the store never came back"
    assert not store.stale
    assert client.get_provider_status() == ProviderStatus.FATAL, client.get_provider_status()
    d = client.get_boolean_details("beta", False)
    assert (d.reason, d.error_code) == ("ERROR", "PROVIDER_FATAL"), d

    api.shutdown()
    store.close()
finally:
    server.stop()
print("OK")
"""


def test_fatal_stays_fatal_across_a_redis_outage_and_return() -> None:
    redis_server_binary()  # fails (not skips) when redis-server is missing, as the suite does
    result = run_scenario(SCENARIO)
    assert "lost Redis" in result.stderr, result.stderr  # the outage did happen
