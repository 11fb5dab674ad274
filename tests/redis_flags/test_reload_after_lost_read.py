"""A change heard from the stream is not heard again by the reload that catches up.

Found in a Sentinel failover (3 Sentinels, the old master killed after it
acknowledged ``enable("other")`` that its replica never got): node 2's listener
heard ``other`` go on, then, after node 1 restored the lost commit from its node
copy and committed a pending kill switch, heard ``other`` go False -> True AGAIN
as a "reload", although nothing turned it off. The cause is no failover: node 2's
store delivers a change BEFORE it refreshes its node copy (latency), and its
``FeatureFlags`` reloads from Redis in that delivery. When Redis is lost right
then, the reload answers the node copy, older than the change; the table stays
on the old state, and the resync's reload diffed old table against new table.

The interleaving is forced: a subscriber of node 2's store, called on its
listener thread before node 2's ``FeatureFlags`` (subscribed first), cuts node
2 off (a proxy) as the change is delivered. Runs in a plain interpreter
(``run_scenario``) with a real redis-server.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SETUP = """
from foundation import telemetry
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from tests.redis_flags._proxy import CutProxy
from tests.redis_support import RedisServer

srv = RedisServer(); srv.start()
import atexit; atexit.register(srv.stop)  # no redis-server left by a failed run
proxy = CutProxy(srv.port)
S1 = RedisFlagStore(srv.url, namespace="rl", timeout=0.5, cache_path=None)
S2 = RedisFlagStore(proxy.url, namespace="rl", timeout=0.5, cache_path=None,
                    resync_interval=0.3)
cut = threading.Event()

def cut_off_as_delivered(changes):
    # On node 2's listener thread, before F2's reload (subscribed after this).
    if changes and not cut.is_set():
        proxy.cut()
        cut.set()

S2.subscribe(cut_off_as_delivered)
# Node 2's "in_sync", told after its resync's reload: `synced` is set before that
# reload, so a commit made right after `synced` could be heard as part of it (a
# load flake: "kill_me ... reload" heard instead of the change by ops).
s2_in_sync = threading.Event()
telemetry.attach("foundation.flags.in_sync", lambda name, data: s2_in_sync.set()
                 if data["url"].endswith(f":{proxy.port}/0") else None)
declared = [Flag("kill_me", default=True), Flag("other"), Flag("later")]
F1 = FeatureFlags(declared, store=S1)
F2 = FeatureFlags(declared, store=S2)
heard = []
F2.subscribe(lambda c: heard.append((c.flag, c.old.switch, c.new.switch, c.by, c.reason)))
threads = library_threads()
F1.enable("other", by="ana", reason="launch")
wait_for(cut.is_set, "node 2 cut off as it delivers the change")
wait_for(lambda: heard, "node 2's listeners hear the change")
assert heard == [("other", False, True, "ana", "launch")], heard
wait_for(lambda: S2.stale, "node 2 stale (cut off)")
"""

_END = """
assert F2.enabled("other") and len(F2.history("other")) == 1, F2.history("other")
assert S2._thread.is_alive() and S1._thread.is_alive(), "a listener thread died"
assert library_threads() == threads, (threads, library_threads())
F1.close(); F2.close(); S1.close(); S2.close(); proxy.close(); srv.kill()
print("OK", flush=True)
"""


def test_a_change_is_not_heard_again_after_a_cut_during_its_delivery() -> None:
    run_scenario(
        _SETUP
        + """
proxy.restore()
wait_for(lambda: S2.synced and not S2.stale and S2.status().resyncs >= 1,
         "node 2 back in sync")
wait_for(s2_in_sync.is_set, "node 2's in_sync (after its reload)")
F1.disable("kill_me", by="ops", reason="after")  # a later change: everything before is told
# Heard after everything the resync's reload told (one thread, in order).
wait_for(lambda: heard[-1][0] == "kill_me", "node 2 hears the kill switch")
assert heard == [("other", False, True, "ana", "launch"),
                 ("kill_me", True, False, "ops", "after")], heard
"""
        + _END
    )


def test_a_lost_change_restored_by_another_node_is_not_heard_twice() -> None:
    """The explorer's failover: Redis comes back without the change (empty), node 1
    restores it from its copy and commits a kill switch made meanwhile; node 2
    reconnects after both and reloads: the kill switch is news, ``other`` is not."""
    run_scenario(
        _SETUP
        + """
srv.kill()
srv.start()  # empty: no persistence; the change is only in node 1's copy
F1.disable("kill_me", by="ops", reason="outage")  # kept pending if node 1 is not back yet
wait_for(lambda: S1.synced and not S1.pending() and S1.status().version == 2,
         "node 1 restored Redis and committed its kill switch")
assert S1.status().restores == 1, S1.status()
proxy.restore()
wait_for(lambda: S2.synced and not S2.stale and not F2.enabled("kill_me"),
         "node 2 back in sync, the kill switch applied")
# A later commit: node 2 hears it after everything its reload told.
F1.enable("later", by="ana", reason="marker")
wait_for(lambda: heard[-1][0] == "later", "node 2 hears the later change")
assert heard == [("other", False, True, "ana", "launch"),
                 ("kill_me", True, False, None, "reload"),
                 ("later", False, True, "ana", "marker")], heard
"""
        + _END
    )


def test_a_lost_change_nobody_restores_is_heard_taken_back() -> None:
    """Redis comes back without the change and no node holds it (node 1 left with
    its copy in memory): node 2's listeners heard it on, so the reload tells them
    it went back off (``old`` what they heard), where before they heard nothing."""
    run_scenario(
        _SETUP
        + """
F1.close(); S1.close()  # the only copy holding the change leaves
srv.kill()
srv.start()  # empty: no persistence
proxy.restore()
wait_for(lambda: S2.synced and not S2.stale and S2.status().resyncs >= 1, "node 2 back in sync")
wait_for(s2_in_sync.is_set, "node 2's in_sync (after its reload)")
S3 = RedisFlagStore(srv.url, namespace="rl", timeout=0.5, cache_path=None)
F3 = FeatureFlags(declared, store=S3)
# A later commit: node 2 hears it after everything its resync's reload told.
F3.enable("later", by="ana", reason="marker")
wait_for(lambda: heard[-1][0] == "later", "node 2 hears the later change")
assert heard == [("other", False, True, "ana", "launch"),
                 ("other", True, False, None, "reload"),
                 ("later", False, True, "ana", "marker")], heard
assert not F2.enabled("other") and F2.history("other") == [], F2.history("other")
assert S2._thread.is_alive(), "the listener thread died"
F3.close(); S3.close(); F2.close(); S2.close(); proxy.close(); srv.kill()
print("OK", flush=True)
"""
    )
