"""A flag commit whose EXEC reached Redis but whose reply was lost (KNOWN BUG, xfail).

A proxy in front of a real redis-server forwards one transaction's ``EXEC`` and
then drops every reply on that connection: Redis commits, the store times out.
redis-py's ``Pipeline.execute`` turns a connection error or timeout while
WATCHing into ``WatchError`` (``_disconnect_raise_on_watching``), and
``RedisFlagStore._execute`` retries every ``WatchError`` as a conflict: the body
runs again on the state its own lost commit made. So one ``advance()`` moves two
stages, a ``rollback_to(0)`` that was committed raises ``MigrationError``
("nothing to roll back"), and an emergency rollback is recorded twice (the
second "from stage 0 to 0", which is also what its WARNING line says).

One part is fixed and pinned here: the node that made the lost commit used to
go on serving the state from before it for good (the retry writes nothing for
the flags already changed, and the listener skips this store's own commits), a
flag killed on every other node still on here. ``FeatureFlags`` now also serves
an earlier run's writes that the store holds.

The rest of the fix belongs in ``_redis_store.py``'s commit error handling (being changed
by another helper, so not made here): a ``WatchError`` whose ``__cause__`` is a
redis-py ``ConnectionError``/``TimeoutError`` means the outcome is unknown, not a
conflict; raise ``BackendUnavailable`` (the write may or may not be committed)
instead of running the body again. For the emergency rollback to be recorded
once after that, the pending kill switch must carry the lost attempt's identity:
the body's ``at`` taken once per ``FeatureFlags._transact`` call (``_Writer`` and
``Migration._move``), so ``committed_since`` finds it "already" committed.
The listener must then also deliver this store's own commits whose reply was
lost (they are not "already known to the writer"). Remove the xfail markers
with the fix.
"""

from __future__ import annotations

import pytest

from tests.faults._subprocess import run_scenario

_COMMON = """
import socket, sys, tempfile
from foundation import errors
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore, Stage
from tests.redis_support import RedisServer

warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage())
logging.getLogger("foundation").addHandler(Keep())

class LoseExecReply:
    # Forwards everything, except: once armed, the replies on the connection that
    # carries the next EXEC are dropped (that EXEC itself reaches Redis).
    def __init__(self, port):
        self.target = ("127.0.0.1", port)
        self.armed, self.fired = threading.Event(), threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            lost = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, lost), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, lost), daemon=True).start()

    def _up(self, client, upstream, lost):
        try:
            while data := client.recv(65536):
                if self.armed.is_set() and b"EXEC\\r\\n" in data:
                    self.armed.clear(); lost.set(); self.fired.set()
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            client.close(); upstream.close()

    def _down(self, upstream, client, lost):
        try:
            while data := upstream.recv(65536):
                if not lost.is_set():
                    client.sendall(data)
        except OSError:
            pass
        finally:
            client.close(); upstream.close()

    def lose_next_reply(self, call):
        self.fired.clear(); self.armed.set()
        try:
            call()
        except errors.BackendUnavailable:
            pass  # the outcome is unknown: an honest answer
        assert self.fired.is_set(), "no EXEC went through the proxy"

PLAN = MigrationPlan([Stage(1, "beta", ["beta"]), Stage(2, "gamma", ["gamma"])], name="plan")
srv = RedisServer(); srv.start()
proxy = LoseExecReply(srv.port)
store = RedisFlagStore(proxy.url, namespace="lost", cache_path=tempfile.mktemp(),
                       timeout=0.5, resync_interval=0.3)
flags = FeatureFlags([Flag("beta"), Flag("gamma")], store=store)
migration = Migration(flags, PLAN)

def actions():
    return [(e.action, e.from_stage, e.to_stage) for e in migration.history()]
"""


@pytest.mark.xfail(
    strict=True, reason="a lost EXEC reply is retried as a WATCH conflict (see module docs)"
)
def test_a_lost_exec_reply_never_runs_a_migration_step_twice() -> None:
    run_scenario(
        _COMMON
        + """
try:
    proxy.lose_next_reply(lambda: migration.advance(by="ana"))
    wait_for(lambda: store.synced, "in sync")
    assert actions() == [("advance", 0, 1)], actions()  # one advance() is one stage
    proxy.lose_next_reply(lambda: migration.rollback_to(0, by="ana"))  # not MigrationError
    assert actions()[1:] == [("rollback", 1, 0)], actions()
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
    )


@pytest.mark.xfail(
    strict=True, reason="a lost EXEC reply is retried as a WATCH conflict (see module docs)"
)
def test_a_lost_exec_reply_records_an_emergency_rollback_once() -> None:
    run_scenario(
        _COMMON
        + """
try:
    migration.advance(by="ana"); migration.advance(by="ana")
    proxy.lose_next_reply(lambda: migration.emergency_rollback("error spike", by="oncall"))
    assert migration.status().stage == 0, migration.status()
    assert not flags.enabled("beta") and not flags.enabled("gamma"), "not applied here"
    wait_for(lambda: store.synced and not store.pending(), "in sync, nothing pending")
    assert actions()[2:] == [("emergency_rollback", 2, 0)], actions()
    said = [w for w in warnings if "emergency_rollback from stage" in w]
    assert said == ["migration 'plan': emergency_rollback from stage 2 to 0 by oncall "
                    "(error spike)"], said
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
    )


def test_after_a_lost_exec_reply_this_node_serves_what_the_store_holds() -> None:
    """The emergency rollback, a kill switch and a rollout change, each committed with
    its reply lost: this process answers what Redis holds, and its listeners hear it."""
    run_scenario(
        _COMMON
        + """
heard = []
flags.subscribe(lambda change: heard.append((change.flag, change.new.switch)))
try:
    migration.advance(by="ana"); migration.advance(by="ana")
    proxy.lose_next_reply(lambda: migration.emergency_rollback("error spike", by="oncall"))
    wait_for(lambda: store.synced and not store.pending(), "in sync, nothing pending")
    assert store.load_states()["beta"].switch is False
    assert not flags.enabled("beta") and not flags.enabled("gamma"), "not applied here"
    assert ("beta", False) in heard and ("gamma", False) in heard, heard
    flags.enable("beta", by="ana")
    proxy.lose_next_reply(lambda: flags.set_percentage("beta", 30, by="ana"))
    wait_for(lambda: store.synced, "in sync")
    assert store.load_states()["beta"].percentage == 30.0
    assert flags.state("beta").percentage == 30.0, flags.state("beta")
    proxy.lose_next_reply(lambda: flags.disable("beta", by="oncall"))
    wait_for(lambda: store.synced and not store.pending(), "in sync, nothing pending")
    assert store.load_states()["beta"].switch is False
    assert not flags.enabled("beta", "anyone")
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
    )
