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
    # Announced by A's listener thread (a write's replay hands it over: see below).
    wait_for(lambda: of("pending_committed") == [("f",)], "the kill switch's event")
    assert not of("pending_superseded"), store_events
    print("heard_b", heard_b, flush=True)
    # B hears the records, or one "reload" if its listener resynced meanwhile (the
    # role change cut its read): f never comes back on there. Race: B's state
    # shows the allow before its subscriber is called (FeatureFlags delivers after
    # its lock): waited for, not read at once.
    wait_for(lambda: heard_b and heard_b[-1][2:] == (False, ("ana",)), "B to hear the allow")
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


_HANDLER_WRITES = (
    _COMMON
    + """
try:
    store = RedisFlagStore(srv.url, namespace="pkh", timeout=1.0, resync_interval=60.0,
                           cache_path=None)
    flags = FeatureFlags([Flag("f"), Flag("g"), Flag("x")], store=store)
    flags.enable("f", by="setup")
    srv.make_read_only()
    flags.disable("f", by="oncall", reason="incident")  # kept pending
    wait_for(lambda: store.status().read_only and store.status().connected, "in sync")
    srv.make_writable()
    handled = []

    def handler(name, data):
        # Waits for another thread's write to the same FeatureFlags: on the writing
        # thread (which holds its FeatureFlags' lock) it waited for ever.
        writer = threading.Thread(target=lambda: flags.enable("x", by="handler"))
        writer.start()
        writer.join(30)
        handled.append((threading.current_thread().name, writer.is_alive()))

    telemetry.attach("foundation.flags.pending_committed", handler)
    done = threading.Event()
    caller = threading.Thread(target=lambda: (flags.allow("f", "ana", by="dev"), done.set()))
    caller.start()
    assert done.wait(30), "the write never returned (its replay's event ran under its lock)"
    wait_for(lambda: handled, "the handler")
    assert handled[0][1] is False, handled  # the handler's own write returned too
    assert handled[0][0].startswith("foundation-flags-redis"), handled  # the listener thread
    assert not flags.enabled("f") and flags.enabled("x"), flags.state("f")
    assert store._thread.is_alive(), "the listener thread died"
    print("threads", library_threads(), flush=True)
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
)


def test_a_telemetry_handler_of_the_replay_may_wait_for_a_write_of_the_same_flags() -> None:
    """The events of a write's replay are emitted by the listener thread, not under the
    writer's FeatureFlags lock: a handler that waits for another write returns."""
    result = run_scenario(_HANDLER_WRITES)
    assert result.lines("threads"), result.stdout
