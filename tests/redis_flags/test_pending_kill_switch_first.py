"""A write on a node holding pending kill switches commits them first, in order.

Two nodes A and B on one Redis, ``f`` on. Redis is made read-only
(``REPLICAOF``): A's ``disable("f")`` is kept pending (f off on A at once, on in
Redis). Redis takes writes again and, before A's listener replays the kill
switch (``resync_interval`` 60 s: it learns of it only from the write), A
itself calls ``allow("f", "ana")``. The defect: the allow was computed on
Redis' state (f on) and committed "on + ana", later than the kill switch,
which the replay then dropped as superseded: f served ON on both nodes, the
operator's kill switch lost to an unrelated actor allow. Now the write commits
A's pending kill switch first, then runs on that state: f stays off on both
nodes, the history holds the disable before the allow, and an explicit
``enable`` afterwards turns f on (docs/flags-outages.md, "The kill switch
during an outage"). Runs in a plain interpreter (``run_scenario``) with a real
redis-server.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario
from tests.redis_flags.test_write_over_pending_kill_switch import _COMMON

_SCENARIO = (
    _COMMON
    + """
try:
    def node():
        store = RedisFlagStore(srv.url, namespace="pkf", timeout=1.0, resync_interval=60.0,
                               cache_path=None)
        return store, FeatureFlags([Flag("f"), Flag("g")], store=store)

    sa, a = node()
    sb, b = node()
    a.enable("f", by="setup")
    wait_for(lambda: b.enabled("f"), "B to see f on")
    srv.make_read_only()
    a.disable("f", by="oncall", reason="incident")  # refused (READONLY): kept pending
    assert not a.enabled("f") and sa.status().pending_flags == ("f",), sa.status()
    wait_for(lambda: sa.status().read_only and sa.status().connected,
             "A in sync with a read-only replica")
    srv.make_writable()
    heard_b = []
    b.subscribe(lambda c: heard_b.append((c.flag, c.by, c.new.switch, tuple(sorted(c.new.allow)))))
    # Before A's replay: the write commits the kill switch first, then the allow.
    a.allow("f", "ana", by="dev")
    wait_for(lambda: not sa.status().pending, "A's kill switch committed or dropped")
    assert not a.enabled("f") and not a.enabled("f", "ana"), a.state("f")
    wait_for(lambda: "ana" in b.state("f").allow, "B to see the allow")
    assert not b.enabled("f") and not b.enabled("f", "ana"), b.state("f")
    assert switches(sa) == {"f": False} and switches(sb) == {"f": False}
    assert sa.load_states()["f"].allow == frozenset({"ana"})
    history = [(c.by, c.old.switch, c.new.switch, tuple(sorted(c.new.allow)))
               for c in a.history("f")]
    assert history == [("setup", False, True, ()), ("oncall", True, False, ()),
                       ("dev", False, False, ("ana",))], history
    assert of("pending_committed") == [("f",)] and not of("pending_superseded"), store_events
    print("heard_b", heard_b, flush=True)
    # B hears the records, or one "reload" if its listener resynced meanwhile (the
    # role change cut its read): f never comes back on there.
    assert heard_b and all(not on for _, _, on, _ in heard_b), heard_b
    assert heard_b[-1][2:] == (False, ("ana",)), heard_b
    # An explicit enable afterwards turns f on everywhere, as any later write.
    a.enable("f", by="oncall2", reason="fixed")
    wait_for(lambda: b.enabled("f"), "B to see the enable")
    assert a.enabled("f") and a.enabled("f", "ana") and b.enabled("f", "ana")
    assert of("pending_committed") == [("f",)] and not of("pending_superseded"), store_events
    assert sa._thread.is_alive() and sb._thread.is_alive(), "a listener thread died"
    print("threads", library_threads(), flush=True)
    a.close(); b.close(); sa.close(); sb.close()
finally:
    srv.stop()
print("OK")
"""
)


def test_a_write_commits_this_nodes_pending_kill_switch_first() -> None:
    """allow() after Redis takes writes, before the replay: f stays off on both nodes."""
    result = run_scenario(_SCENARIO)
    assert result.lines("heard_b"), result.stdout
    assert result.lines("threads"), result.stdout
