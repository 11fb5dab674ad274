"""No private exception class of the Redis flag store reaches a caller.

``_FailedFast`` (a write refused at once on a frozen Redis), ``_KeptInOrder`` (a
kill switch behind earlier pending ones) and ``_Unconfirmed`` (a commit whose reply
was lost) are ``BackendUnavailable`` subclasses the store tells apart inside. A
caller got them as they were: ``type(exc).__name__`` (the admin API's ``"error"``
field, an error tracker's grouping) then named a private class, and the same fault
split in two. Each must come out as ``BackendUnavailable`` itself, with its message.

Redis is frozen, killed or cut off here: each scenario runs in a plain interpreter.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario
from tests.redis_flags.test_lost_exec_reply import _COMMON as _LOST_REPLY

FROZEN = """
import httpx, tempfile
from foundation.admin import AdminServer
from foundation.errors import BackendUnavailable
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from tests.redis_support import RedisServer

def kind(exc):
    return f"{type(exc).__module__}.{type(exc).__qualname__}"

server = RedisServer(); server.start()
# A timeout long enough that the second write always comes within it: it fails fast.
store = RedisFlagStore(server.url, namespace="pub", timeout=2.0, cache_path=None)
flags = FeatureFlags([Flag("f")], store=store)
admin = AdminServer(flags=flags, token="ana:s3cret", bind="127.0.0.1:0")
admin.start()
server.freeze()
try:
    with httpx.Client(base_url=admin.url, timeout=30) as c:
        for i in range(2):
            r = c.post("api/flags/f/enable", json={"reason": "r"},
                       headers={"Authorization": "Bearer s3cret"})
            print(f"ADMIN{i}", r.status_code, r.json()["error"])
            print(f"ADMIN_TEXT{i}", r.json()["message"])
    for i in range(2):
        try:
            flags.enable("f", by="op", reason="r")
        except BackendUnavailable as exc:
            print(f"LIB{i}", kind(exc))
            print(f"LIB_TEXT{i}", exc)
finally:
    server.thaw()
admin.close(); flags.close(); store.close(); server.stop()
print("OK")
"""


def _out(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)


def test_failing_fast_on_a_frozen_redis_raises_backend_unavailable_itself() -> None:
    out = _out(run_scenario(FROZEN).stdout)
    assert out["ADMIN0"] == out["ADMIN1"] == "503 BackendUnavailable"
    assert out["LIB0"] == out["LIB1"] == "foundation.errors.BackendUnavailable"
    # The refused-at-once path was taken, and says so (its message is kept).
    assert "timed out moments ago" in out["ADMIN_TEXT1"]
    assert "timed out moments ago" in out["LIB_TEXT1"]


KEPT_IN_ORDER = """
import pathlib, tempfile
from foundation.errors import BackendUnavailable
from foundation.flags import FeatureFlags, Flag, FlagChange, FlagState, RedisFlagStore
from tests.redis_support import RedisServer

def switch_on(txn):  # not a kill switch: it must reach Redis or fail
    on = FlagState(switch=True)
    txn.put("g", on, FlagChange("g", FlagState(switch=False), on, by="op", at=time.time()))

with tempfile.TemporaryDirectory() as tmp, RedisServer() as server:
    store = RedisFlagStore(server.url, namespace="kio", timeout=0.5,
                           cache_path=pathlib.Path(tmp) / "n.db")
    flags = FeatureFlags([Flag("f", default=True), Flag("g")], store=store)
    server.kill()
    wait_for(lambda: store.stale, "the store stale")
    flags.disable("f", by="oncall", reason="r")  # kept pending: Redis is gone
    assert len(store.pending()) == 1, store.pending()
    try:
        store.kill_switch(switch_on)  # behind the pending one, and no kill switch
        raise AssertionError("a switch-on kept for later")
    except BackendUnavailable as exc:
        print("KEPT", f"{type(exc).__module__}.{type(exc).__qualname__}")
        print("KEPT_TEXT", exc)
    assert len(store.pending()) == 1, store.pending()  # nothing half-stored
    flags.close(); store.close()
print("OK")
"""


def test_a_write_behind_pending_kill_switches_raises_backend_unavailable_itself() -> None:
    out = _out(run_scenario(KEPT_IN_ORDER).stdout)
    assert out["KEPT"] == "foundation.errors.BackendUnavailable"
    assert "earlier kill switch(es) of this node are not committed yet" in out["KEPT_TEXT"]


UNCONFIRMED = (
    _LOST_REPLY
    + """
try:
    flags.enable("beta", by="ana")
    error = proxy.lose_next_reply(lambda: flags.set_percentage("beta", 30, by="ana"), cut=True)
    print("LOST", f"{type(error).__module__}.{type(error).__qualname__}")
    print("LOST_TEXT", error)
    proxy.heal()
    wait_for(lambda: store.synced, "in sync")
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
)


def test_a_commit_that_cannot_be_confirmed_raises_backend_unavailable_itself() -> None:
    out = _out(run_scenario(UNCONFIRMED).stdout)
    assert out["LOST"] == "foundation.errors.BackendUnavailable"
    assert "may or may not be committed" in out["LOST_TEXT"]
