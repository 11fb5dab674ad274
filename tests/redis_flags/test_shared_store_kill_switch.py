"""A kill switch written during a Redis outage through one FeatureFlags (an admin
tool) on a RedisFlagStore shared with another FeatureFlags (the application).

The writer applies it at once; the application on the same store object, like
another process (here: another store object, another origin), hears it once it
is committed, when Redis returns (at least once: the resync's reload may show it
before its record does), and the writer does not hear it a second time then.
(Handing it to the application at once was tried and taken back: a second
delivery thread broke the order of what listeners hear.) Run in a plain
interpreter with the default hooks (``run_scenario``).
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SCENARIO = """
import os, tempfile
from foundation import telemetry
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from tests.redis_support import RedisServer

FLAGS = (Flag("beta"), Flag("kill_switch", default=True))
work = tempfile.mkdtemp()
committed = threading.Event()
telemetry.attach("foundation.flags.pending_committed", lambda n, d: committed.set())

def open_store(url, name):
    return RedisFlagStore(url, namespace="shks", cache_path=os.path.join(work, name),
                          timeout=0.5, resync_interval=0.3)

def heard(flags):
    got = []
    flags.subscribe(lambda c: got.append((c.flag, c.by)))
    return got

with RedisServer() as server:
    store, remote_store = open_store(server.url, "a.sqlite3"), open_store(server.url, "b.sqlite3")
    app = FeatureFlags(FLAGS, store=store)
    admin = FeatureFlags.from_store(store)
    remote = FeatureFlags(FLAGS, store=remote_store)  # another origin: as another process
    app_heard, admin_heard, remote_heard = heard(app), heard(admin), heard(remote)
    assert app.enabled("kill_switch") and admin.enabled("kill_switch")

    server.kill()
    admin.disable("kill_switch", by="oncall", reason="incident")  # deferred: Redis is down
    assert not admin.enabled("kill_switch")
    assert remote.enabled("kill_switch")  # another node: only through Redis

    server.start()
    wait_for(committed.is_set, "the kill switch committed")
    wait_for(lambda: not app.enabled("kill_switch"), "the app to see the kill switch")
    wait_for(lambda: not remote.enabled("kill_switch"), "the other node to see it")
    # A fence: a later commit through the same store object. Its stream entry
    # follows the replayed kill switch's, delivered in stream order by one thread.
    admin.enable("beta", by="fence")
    wait_for(lambda: ("beta", "fence") in app_heard, "the fence at the app")
    wait_for(lambda: ("beta", "fence") in remote_heard, "the fence at the other node")

    told = lambda got: [h for h in got if h[0] == "kill_switch"]
    # The writer: once, at the write (its replay is not told back to it).
    assert told(admin_heard) == [("kill_switch", "oncall")], admin_heard
    # The others: as any commit, at least once (a resync's reload may show it
    # before the stream entry is read).
    for got in (app_heard, remote_heard):
        assert told(got) and set(told(got)) <= {
            ("kill_switch", "oncall"), ("kill_switch", None)}, got
    assert not app.enabled("kill_switch") and not admin.enabled("kill_switch")
    app.close(); admin.close(); remote.close(); store.close(); remote_store.close()
    assert library_threads() == [], library_threads()
print("OK")
"""


def test_a_kill_switch_deferred_through_one_flags_reaches_the_other_when_committed() -> None:
    run_scenario(_SCENARIO)
