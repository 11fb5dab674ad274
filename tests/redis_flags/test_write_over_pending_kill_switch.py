"""A write over a pending kill switch is a change: refused while Redis refuses writes.

Redis read-only (``REPLICAOF``) or out of memory (``maxmemory`` 1, ``noeviction``):
``disable("f")`` is kept pending (f off here, still on in Redis). The defect:
``enable("f")`` compared its result with Redis' state ("on"), found nothing to
write and returned as acknowledged, without an error; f stayed off, the admin
API answered 200 ``{"enabled": false, "sync": "pending"}``, and the kill switch
was committed when Redis returned. A write reads and changes the state this
node serves, so it must raise ``BackendUnavailable`` (admin: 503) and change
nothing; after recovery every flag is in the state of its last acknowledged
write. Once Redis takes writes again, the same ``enable`` commits the node's
pending kill switch first, then itself: f on, both in the history
(docs/flags-outages.md, "this node's kill switches land before its own writes").
Each scenario runs in a plain interpreter (``run_scenario``) with a real
redis-server.
"""

from __future__ import annotations

import pytest

from tests.faults._subprocess import run_scenario

_COMMON = """
import json, urllib.error, urllib.request
from foundation import telemetry
from foundation.admin import AdminServer
from foundation.errors import BackendUnavailable
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore, Stage
from tests.redis_support import RedisServer

lock = threading.Lock()
store_events = []
for name in ("pending_recorded", "pending_committed", "pending_superseded"):
    telemetry.attach("foundation.flags." + name,
                     lambda n, d: (lock.acquire(), store_events.append((n.rsplit(".", 1)[1],
                                                                        tuple(d["flags"]))),
                                   lock.release()))

def of(kind):
    with lock:
        return [flags for n, flags in store_events if n == kind]

def raises_unavailable(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except BackendUnavailable as exc:
        return str(exc)
    raise AssertionError(f"{call.__name__}{args} returned instead of BackendUnavailable")

def post(server, path, body):
    request = urllib.request.Request(
        server.url.rstrip("/") + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": "Bearer ana-secret", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())

def switches(store):
    return {n: s.switch for n, s in store.load_states().items()}

srv = RedisServer(); srv.start()
"""

_REFUSED = (
    _COMMON
    + """
fault = FAULT  # set by the test
try:
    store = RedisFlagStore(srv.url, namespace="wop", timeout=1.0, resync_interval=0.3,
                           cache_path=None)
    declared = [Flag("f"), Flag("g"), Flag("h", default=True), Flag("m1"), Flag("m2")]
    flags = FeatureFlags(declared, store=store)
    heard = []
    flags.subscribe(lambda c: heard.append((c.flag, c.old.switch, c.new.switch)))
    flags.enable("f", by="setup"); flags.enable("g", by="setup")
    migration = Migration(flags, MigrationPlan([Stage(1, "one", ["m1"]), Stage(2, "two", ["m2"])]))
    migration.advance(by="setup")  # stage 1: m1 on
    admin = AdminServer(flags=flags, migration=migration, bind="127.0.0.1:0",
                        token="ana:ana-secret").start()
    heard.clear()
    if fault == "readonly":
        srv.make_read_only()
        wait_for(lambda: store.status().read_only, "the store to see a read-only replica")
    else:
        srv.oom_on()
    # The kill switches: kept pending, served here at once (h has no runtime state).
    flags.disable("f", by="oncall", reason="incident")
    flags.disable("h", by="oncall", reason="incident")
    migration.emergency_rollback("incident", by="oncall")
    assert not flags.enabled("f") and not flags.enabled("h") and not flags.enabled("m1")
    assert set(store.status().pending_flags) == {"f", "h", "m1"}, store.status()
    assert store.migration_stage("default") == 0
    heard_before = list(heard)
    # Every write that changes what this node serves is refused, nothing changed.
    refused = [
        raises_unavailable(flags.enable, "f", by="oncall2"),  # Redis holds "on": the defect
        raises_unavailable(flags.set, "f", True, by="oncall2"),
        raises_unavailable(flags.clear, "h", by="oncall2"),  # Redis holds none: the defect
        raises_unavailable(flags.enable, "h", by="oncall2"),
        raises_unavailable(flags.set_percentage, "f", 100, by="oncall2"),
        raises_unavailable(flags.allow, "f", "ana", by="oncall2"),
        raises_unavailable(flags.reset_all, by="oncall2"),
        raises_unavailable(migration.advance, by="oncall2"),
        raises_unavailable(migration.rollback_to, 0, by="oncall2"),
    ]
    print("refused", len(refused), refused[0][:160], flush=True)
    if fault == "readonly":
        assert all("read-only" in r for r in refused), refused
    else:
        assert all("OOM" in r for r in refused), refused
    code, answer = post(admin, "/api/flags/f/enable", {"reason": "back"})
    assert code == 503 and answer["error"] == "BackendUnavailable", (code, answer)
    # A write that leaves what this node serves as it is stays a no-op.
    flags.enable("g", by="oncall2")
    flags.disable("f", by="oncall", reason="incident")
    assert not flags.enabled("f") and not flags.enabled("h") and flags.enabled("g")
    assert not flags.enabled("m1") and not flags.enabled("m2")
    assert heard == heard_before, (heard, heard_before)
    assert len(store.pending()) == 3, store.pending()
    # Redis takes writes again: the kill switches (the last acknowledged writes) commit.
    if fault == "readonly":
        srv.make_writable()
    else:
        srv.oom_off()
    wait_for(lambda: not store.status().pending and len(of("pending_committed")) == 3,
             "the kill switches committed")
    assert not of("pending_superseded"), store_events
    assert switches(store) == {"f": False, "g": True, "h": False, "m1": False, "m2": False}
    assert not flags.enabled("f") and not flags.enabled("h") and not flags.enabled("m1")
    assert store.migration_stage("default") == 0
    assert [(c.by, c.new.switch) for c in flags.history("f")] == [
        ("setup", True), ("oncall", False)], flags.history("f")
    assert all(c.by != "oncall2" for c in flags.history()), flags.history()
    # And a write now is committed as ever.
    code, answer = post(admin, "/api/flags/f/enable", {"reason": "back"})
    assert code == 200 and answer["enabled"] and answer["sync"] == "committed", (code, answer)
    assert store._thread.is_alive(), "the listener thread died"
    print("threads", library_threads(), flush=True)
    admin.close(); flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
)

_SUPERSEDES = (
    _COMMON
    + """
try:
    # A long resync_interval: the listener learns that Redis takes writes again
    # only from the write below, so that write comes before the replay.
    store = RedisFlagStore(srv.url, namespace="wos", timeout=1.0, resync_interval=60.0,
                           cache_path=None)
    flags = FeatureFlags([Flag("f")], store=store)
    flags.enable("f", by="setup")
    srv.make_read_only()
    flags.disable("f", by="oncall", reason="incident")  # refused (READONLY): kept
    assert not flags.enabled("f") and store.status().pending_flags == ("f",)
    wait_for(lambda: store.status().read_only and store.status().connected,
             "the store in sync with a read-only replica")
    srv.make_writable()
    heard = []
    flags.subscribe(lambda c: heard.append((c.by, c.old.switch, c.new.switch)))
    # The kill switch is committed first, then the enable: later, so f is on.
    flags.enable("f", by="oncall2", reason="fixed")
    assert flags.enabled("f") and not store.status().pending, store.status()
    wait_for(lambda: heard and heard[-1][2], "f on")
    # The kill switch's "committed" event is announced by the listener at its next
    # turn (after the enable returned; later still if the role change cut its XREAD
    # and it is reconnecting): wait for it, then check it came once, not superseded.
    wait_for(lambda: of("pending_committed"), "the kill switch's committed event")
    assert of("pending_committed") == [("f",)] and not of("pending_superseded"), store_events
    assert switches(store) == {"f": True}
    print("heard", heard, flush=True)
    assert [(c.by, c.old.switch, c.new.switch) for c in flags.history("f")] == [
        ("setup", False, True), ("oncall", True, False), ("oncall2", False, True)
    ], flags.history("f")
    assert store._thread.is_alive(), "the listener thread died"
    print("threads", library_threads(), flush=True)
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
)


@pytest.mark.parametrize("fault", ["readonly", "oom"])
def test_a_write_over_a_pending_kill_switch_fails_while_redis_refuses_writes(fault: str) -> None:
    """enable/clear/... of a killed flag raise BackendUnavailable (admin 503), change nothing."""
    result = run_scenario(f"FAULT = {fault!r}\n" + _REFUSED)
    assert result.lines("refused 9"), result.stdout
    assert result.lines("threads"), result.stdout


def test_an_enable_once_redis_takes_writes_lands_after_the_kill_switch() -> None:
    """The enable comes before the replay: it commits the kill switch first, f ends on."""
    result = run_scenario(_SUPERSEDES)
    assert result.lines("threads"), result.stdout
