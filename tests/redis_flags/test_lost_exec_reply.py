"""A flag commit whose EXEC reached Redis but whose reply was lost.

A proxy in front of a real redis-server forwards one transaction's ``EXEC`` and
then drops every reply on that connection: Redis commits, the store times out.
redis-py's ``Pipeline.execute`` turns a connection error or timeout while
WATCHing into ``WatchError`` (``_disconnect_raise_on_watching``); retried as a
conflict, the body ran again on the state its own lost commit made: one
``advance()`` moved two stages, a committed ``rollback_to(0)`` raised
``MigrationError`` ("nothing to roll back"), an emergency rollback was recorded
twice (the second "from stage 0 to 0").

``RedisFlagStore`` now reads the commit back (its entries' ``txn`` id): landed
is committed, not landed (``drop``: the EXEC never reached Redis) is retried.
With Redis out of reach too (``cut``) it cannot tell: a write raises
``BackendUnavailable`` ("may or may not be committed"), a kill switch is kept
and its replay finds the lost commit already there. ``FeatureFlags`` also serves
an earlier run's writes that the store holds (``_committed_writes``).
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_COMMON = """
import socket, sys, tempfile
from foundation import errors
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore, Stage
from tests.redis_support import RedisServer
from tests._logs import keep_records

warned = keep_records("foundation", level=logging.WARNING)

class LoseExecReply:
    # Forwards everything, except: once armed, the replies on the connection that
    # carries the next EXEC are dropped (that EXEC itself reaches Redis). With
    # `cut`, Redis is then out of reach too: every client connection is closed
    # (the EXEC's once it was forwarded) and new ones are closed at once, until heal().
    # With `drop`, that EXEC (and what came with it) never reaches Redis. With
    # `hold`, it reaches Redis late: just before the next EXEC of another connection.
    def __init__(self, port):
        self.target = ("127.0.0.1", port)
        self.armed, self.fired = threading.Event(), threading.Event()
        self.cut_after, self.drop_exec, self.dark = False, False, threading.Event()
        self.hold_exec, self.held, self.ran_late = False, None, threading.Event()
        self.lose_next_too = False  # hold: the replies to that next EXEC are lost too
        self.clients, self.lock = set(), threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
                if self.dark.is_set():
                    client.close(); continue
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            with self.lock:
                self.clients.add(client)
            lost = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, lost), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, lost), daemon=True).start()

    def _up(self, client, upstream, lost):
        try:
            while data := client.recv(65536):
                fire = self.armed.is_set() and b"EXEC\\r\\n" in data
                if fire:
                    self.armed.clear(); lost.set(); self.fired.set()
                if fire and self.hold_exec:
                    self.held = (upstream, data)  # its upstream stays open (see finally)
                    continue
                if b"EXEC\\r\\n" in data and self.held is not None:
                    # The held EXEC runs first (it lands after its read-back said "not
                    # there", before the retry's EXEC): wait for its (dropped) reply.
                    (late, chunk), self.held = self.held, None
                    late.sendall(chunk)
                    assert self.ran_late.wait(10), "the held EXEC got no reply"
                    late.close()
                    if self.lose_next_too:
                        lost.set()
                if not (fire and self.drop_exec):
                    upstream.sendall(data)
                if fire and self.cut_after:
                    self._go_dark()
        except OSError:
            pass
        finally:
            client.close()
            if self.held is None or self.held[0] is not upstream:
                upstream.close()

    def _go_dark(self):
        self.dark.set()
        with self.lock:
            clients, self.clients = self.clients, set()
        for c in clients:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def heal(self):
        self.dark.clear()

    def _down(self, upstream, client, lost):
        try:
            while data := upstream.recv(65536):
                if not lost.is_set():
                    client.sendall(data)
                elif self.hold_exec:
                    self.ran_late.set()  # (the held EXEC's reply: it ran)
        except OSError:
            pass
        finally:
            client.close(); upstream.close()

    def lose_next_reply(self, call, cut=False, drop=False, hold=False, twice=False):
        self.fired.clear(); self.ran_late.clear()
        self.cut_after, self.drop_exec, self.hold_exec = cut, drop, hold
        self.lose_next_too = twice
        self.armed.set()
        try:
            call()
        except errors.BackendUnavailable as exc:
            # Only when the outcome cannot be read back (Redis cut off too).
            assert cut and "may or may not be committed" in str(exc), exc
            return exc
        finally:
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
    # An EXEC that never reached Redis, no reply either: read back, not there, retried.
    proxy.lose_next_reply(lambda: migration.advance(by="ana"), drop=True)
    assert actions()[2:] == [("advance", 0, 1)], actions()
    assert migration.status().stage == 1, migration.status()
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
    )


def test_an_exec_landing_after_its_read_back_said_not_there_is_not_run_again() -> None:
    """Race: the EXEC whose reply timed out reaches Redis late (a slow network), after
    the read-back found nothing and the retry WATCHed: it lands (nothing broke its
    WATCH), the retry's EXEC then fails as a conflict, and a third run applied the
    body on top of the late commit (one ``advance()`` moved two stages). Each
    attempt after a lost reply looks the lost commit up again once ``meta`` moved."""
    run_scenario(
        _COMMON
        + """
try:
    proxy.lose_next_reply(lambda: migration.advance(by="ana"), hold=True)
    assert proxy.ran_late.is_set() and proxy.held is None, "the held EXEC never ran"
    assert migration.status().stage == 1, migration.status()
    wait_for(lambda: store.synced, "in sync")
    assert actions() == [("advance", 0, 1)], actions()  # one advance() is one stage
    assert flags.enabled("beta", "anyone") and not flags.enabled("gamma", "anyone")
    migration.advance(by="ana")  # the store goes on as usual
    assert actions()[1:] == [("advance", 1, 2)], actions()
    # The same, and the retry's reply (a conflict: the late commit broke its WATCH)
    # times out too: the late commit is the write's, not "nothing was written".
    proxy.lose_next_reply(lambda: migration.rollback_to(0, by="ana"), hold=True, twice=True)
    assert migration.status().stage == 0, migration.status()
    wait_for(lambda: store.synced, "in sync")
    assert actions()[2:] == [("rollback", 2, 0)], actions()
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
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
    said = [w for w in warned.messages() if "emergency_rollback from stage" in w]
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


def test_a_lost_exec_reply_with_redis_gone_is_kept_or_refused_and_never_doubled() -> None:
    """Redis out of reach right after an EXEC whose reply was lost: nobody can tell
    whether it landed. The emergency rollback is kept (applied here) and, once
    Redis is back, found already committed: recorded once. Another write raises
    ``BackendUnavailable`` saying it may or may not be committed; once Redis is
    back, this process serves what Redis holds."""
    run_scenario(
        _COMMON
        + """
kept = []
from foundation import telemetry
telemetry.attach("foundation.flags.pending_committed", lambda name, data: kept.append(data))
try:
    migration.advance(by="ana"); migration.advance(by="ana")
    assert proxy.lose_next_reply(
        lambda: migration.emergency_rollback("error spike", by="oncall"), cut=True
    ) is None, "a kill switch is kept, not refused"
    assert len(store.pending()) == 1, store.pending()
    assert migration.status().stage == 0, migration.status()
    assert not flags.enabled("beta") and not flags.enabled("gamma"), "not applied here"
    proxy.heal()
    # (the event follows the pending record's removal: wait for it too)
    wait_for(lambda: store.synced and not store.pending() and kept, "in sync, replayed")
    assert actions()[2:] == [("emergency_rollback", 2, 0)], actions()
    assert [k["already"] for k in kept] == [True], kept
    said = [w for w in warned.messages() if "emergency_rollback from stage" in w]
    assert said == ["migration 'plan': emergency_rollback from stage 2 to 0 by oncall "
                    "(error spike)"], said

    flags.enable("beta", by="ana")
    error = proxy.lose_next_reply(lambda: flags.set_percentage("beta", 30, by="ana"), cut=True)
    assert error is not None, "no answer for a write nobody can confirm"
    proxy.heal()
    wait_for(lambda: store.synced, "in sync")
    # It had landed. (Read from Redis once the store's own connection is back:
    # until then load_states answers from the node copy, which may lag.)
    wait_for(lambda: store.load_states()["beta"].percentage == 30.0, "Redis to hold it")
    wait_for(lambda: flags.state("beta").percentage == 30.0, "served here")
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
    )


# Another node, reaching Redis directly (OTHER_FLAGS, OTHER_PLAN: its declarations;
# _SAME_FLAGS: the same as this node's), the kill switch events heard (kind, data) and the
# INFO records of foundation.flags.
_SAME_FLAGS = """
OTHER_FLAGS, OTHER_PLAN = [Flag("beta"), Flag("gamma")], PLAN
"""
_OTHER_NODE = """
from foundation import telemetry
told = []
for kind in ("pending_committed", "pending_superseded"):
    telemetry.attach(f"foundation.flags.{kind}",
                     lambda name, data: told.append((name.rsplit(".", 1)[1], data)))
infos = keep_records("foundation.flags", level=logging.INFO)
other_store = RedisFlagStore(f"redis://127.0.0.1:{srv.port}/0", namespace="lost",
                             cache_path=None, timeout=2.0)
other_flags = FeatureFlags(OTHER_FLAGS, store=other_store)
other = Migration(other_flags, OTHER_PLAN)
"""


def test_a_landed_kill_switch_followed_by_another_nodes_write_is_told_committed() -> None:
    """The emergency rollback lands, its reply is lost and Redis goes out of reach:
    kept pending. Another node (reaching Redis) then advances the plan again. The
    replay finds the rollback in Redis' history, with that advance after it: it was
    told "SUPERSEDED ... and not applied" (a WARNING, ``pending_superseded``) while
    the history shows it applied (an operator might pull it again, undoing the
    re-advance). It is committed ("it already was"), the later change named."""
    run_scenario(
        _COMMON
        + _SAME_FLAGS
        + _OTHER_NODE
        + """
try:
    migration.advance(by="ana"); migration.advance(by="ana")
    # (this node answers from its copy: wait until it took both advances, so the
    # kill switch names beta and gamma, whose later changes then follow it)
    wait_for(lambda: flags.enabled("beta") and flags.enabled("gamma"), "both stages here")
    assert proxy.lose_next_reply(
        lambda: migration.emergency_rollback("error spike", by="oncall"), cut=True
    ) is None, "a kill switch is kept, not refused"
    assert len(store.pending()) == 1, store.pending()
    wait_for(lambda: other.status().stage == 0, "the other node to see the rollback")
    other.advance(by="lead", reason="fixed: forward again")  # after the rollback
    proxy.heal()
    wait_for(lambda: store.synced and not store.pending() and told, "in sync, replayed")
    assert actions()[2:] == [("emergency_rollback", 2, 0), ("advance", 0, 1)], actions()
    assert migration.status().stage == 1, migration.status()  # the re-advance stands
    assert [kind for kind, _ in told] == ["pending_committed"], told
    data = told[0][1]
    assert data["already"] is True, data
    later = data["followed_by"]  # the advance: its event, and beta's change if named
    # Race: this node's listener may take the landed rollback from the stream before
    # the cut; the kill switch kept then names the plan only (its flags were off
    # here), and its flags' later changes are none of its own.
    named = [("FlagChange", "lead")] if "beta" in data["flags"] else []
    assert sorted((type(e).__name__, e.by) for e in later) == [
        *named, ("MigrationEvent", "lead")], data
    assert not [w for w in warned.messages() if "SUPERSEDED" in w], warned.messages()
    said = [r.getMessage() for r in list(infos)
            if r.levelno == logging.INFO and "kill switch by oncall" in r.getMessage()]
    assert len(said) == 1 and "(it already was; newer committed changes followed it: " in said[0]
    assert "by='lead'" in said[0], said
    other_flags.close(); other_store.close()
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
    )


def test_the_changes_named_after_a_landed_kill_switch_are_bounded_in_its_log_line() -> None:
    """Hundreds of changes by another node after the lost-reply rollback: the event
    names them all, its INFO line the first ones and how many more (it was one line of
    ~100,000 characters: every change's repr), with no newline from a reason."""
    run_scenario(
        _COMMON
        + _SAME_FLAGS
        + _OTHER_NODE
        + """
try:
    migration.advance(by="ana"); migration.advance(by="ana")
    # (this node answers from its copy: wait until it took both advances, so the
    # kill switch names beta and gamma, whose later changes then follow it)
    wait_for(lambda: flags.enabled("beta") and flags.enabled("gamma"), "both stages here")
    assert proxy.lose_next_reply(
        lambda: migration.emergency_rollback("spike", by="oncall"), cut=True
    ) is None
    wait_for(lambda: other.status().stage == 0, "the other node to see the rollback")
    for _ in range(100):  # 400 changes of its plan (and plan flags) after it
        other.advance(by="bot", reason="ramp\\nFORGED")
        other.rollback_to(0, by="bot", reason="ramp\\nFORGED")
    proxy.heal()
    wait_for(lambda: store.synced and not store.pending() and told, "in sync, replayed")
    assert [kind for kind, _ in told] == ["pending_committed"], told
    data = told[0][1]
    assert data["already"] is True, data
    assert len(data["followed_by"]) >= 200, len(data["followed_by"])
    said = [r.getMessage() for r in list(infos)
            if r.levelno == logging.INFO and "kill switch by oncall" in r.getMessage()]
    assert len(said) == 1, said
    assert len(said[0]) < 2000, len(said[0])
    assert said[0].endswith(" more)"), said[0][-200:]
    assert "\\n" not in said[0]
    other_flags.close(); other_store.close()
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
    )


def test_a_kept_emergency_rollback_switches_off_the_plan_flags_redis_holds_on() -> None:
    """This node's copy lags behind Redis: it is cut off (its flags stored off by an
    earlier rollback) while another node advances the plan twice, then its emergency
    rollback is kept. The kept kill switch named only the plan (each flag was
    already off in the copy: no change there); replayed, it moved Redis to stage 0
    and left beta and gamma on, served on here too once in sync. The replay switches
    off the flags of the plan (as this process recorded it) that Redis holds on."""
    run_scenario(
        _COMMON
        + _SAME_FLAGS
        + _LAGGING
        + """
try:
    lag_and_roll_back()
    proxy.heal()
    wait_for(lambda: store.synced and not store.pending(), "in sync, replayed")
    states = other_store.load_states()
    assert other.status().stage == 0, other.status()
    assert not states["beta"].switch and not states["gamma"].switch, states
    wait_for(lambda: not flags.enabled("beta") and not flags.enabled("gamma"), "off here")
    history = [(c.flag, c.by, c.new.switch) for c in other_flags.history()]
    assert history[-2:] == [("beta", "oncall", False), ("gamma", "oncall", False)], history
    assert said() and said()[-1].endswith("on beta, gamma, plan committed"), said()
    other_flags.close(); other_store.close()
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
    )


_LAGGING = (
    _OTHER_NODE
    + """
def lag_and_roll_back():
    # This node's copy lags (its flags off) while the other node advances twice;
    # its emergency rollback, kept, names the plan only.
    migration.advance(by="ana"); migration.advance(by="ana"); migration.rollback_to(0, by="ana")
    wait_for(lambda: store.synced and flags.state("gamma").switch is False, "the rollback here")
    proxy._go_dark()  # (no EXEC: this node is cut off, its copy stays as it is)
    wait_for(lambda: not store.synced, "this node cut off")
    other.advance(by="lead"); other.advance(by="lead")
    migration.emergency_rollback("spike", by="oncall")
    assert [p.plans for p in store.pending()] == [("plan",)], store.pending()

def said():
    return [r.getMessage() for r in list(infos) if "kill switch by oncall" in r.getMessage()]
"""
)


def test_a_kept_emergency_rollback_whose_plan_flags_are_unreadable_still_commits() -> None:
    """Redis' plan flags key is no hash when the lagging node's emergency rollback is
    replayed: reading it raised (WRONGTYPE) and blocked the replay and every write
    of the node for as long as it stayed so. The plan's flags as this process
    recorded the plan are switched off all the same, with one WARNING."""
    run_scenario(
        _COMMON
        + """
"""
        + _SAME_FLAGS
        + _LAGGING
        + """
import redis
try:
    lag_and_roll_back()
    raw = redis.Redis(port=srv.port)
    raw.delete(store._k_plan_flags); raw.set(store._k_plan_flags, "not a hash")
    proxy.heal()
    wait_for(lambda: store.synced and not store.pending() and told, "in sync, replayed")
    assert [kind for kind, _ in told] == ["pending_committed"], told
    assert other.status().stage == 0, other.status()
    states = other_store.load_states()
    assert not states["beta"].switch and not states["gamma"].switch, states
    wait_for(lambda: not flags.enabled("beta") and not flags.enabled("gamma"), "off here")
    unread = [w for w in warned.messages() if "is unreadable" in w]
    assert len(unread) == 1 and "WRONGTYPE" in unread[0], warned.messages()
    assert said()[-1].endswith("on beta, gamma, plan committed"), said()
    raw.delete(store._k_plan_flags); raw.close()
    other_flags.close(); other_store.close()
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
    )


def test_a_later_change_of_a_flag_the_replay_adds_leaves_that_flag_only() -> None:
    """The lagging node's kept emergency rollback names the plan only; after it, the
    other node denies gamma to a tenant. That change superseded the whole rollback
    (stage 2 and the flags left on): it is judged on what it named, and only gamma,
    changed after it, is left as it is (named in its line); beta is switched off.
    A flag of another version of the plan this node does not declare (delta) stays
    on, as the online rollback's WARNING says."""
    run_scenario(
        _COMMON
        + """
OTHER_FLAGS = [Flag("beta"), Flag("gamma"), Flag("delta")]
OTHER_PLAN = MigrationPlan(
    [Stage(1, "beta", ["beta"]), Stage(2, "gamma", ["gamma", "delta"])], name="plan")
"""
        + _LAGGING
        + """
try:
    lag_and_roll_back()
    kept_at = store.pending()[0].at
    wait_for(lambda: time.time() > kept_at, "a later time")
    other_flags.deny("gamma", "tenant-7", by="support", reason="tenant-7 complains")
    proxy.heal()
    wait_for(lambda: store.synced and not store.pending() and told, "in sync, replayed")
    assert [kind for kind, _ in told] == ["pending_committed"], told
    assert not [w for w in warned.messages() if "SUPERSEDED" in w], warned.messages()
    assert other.status().stage == 0, other.status()
    states = other_store.load_states()
    assert not states["beta"].switch, states
    assert states["gamma"].switch and "tenant-7" in states["gamma"].deny, states
    assert states["delta"].switch, states  # not declared here: stays as it is
    assert said()[-1].endswith("on beta, plan committed; left on: gamma (changed after it)"), said()
    other_flags.close(); other_store.close()
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
    )


def test_a_kept_emergency_rollback_replayed_by_a_process_that_recorded_no_plan() -> None:
    """The lagging node's kept rollback (plan only) is replayed by a store that
    recorded no plan (the process restarted: its store replays at once, before its
    Migration records anything; or the `foundation` command on that node): it added
    no flag and left the plan's flags on at stage 0. It takes the plan as Redis'
    plans hash records it."""
    run_scenario(
        _COMMON
        + """
"""
        + _SAME_FLAGS
        + _LAGGING
        + """
try:
    lag_and_roll_back()
    copy_file = store.cache_path
    flags.close(); store.close()  # the process ends with its rollback kept
    proxy.heal()
    fresh = RedisFlagStore(proxy.url, namespace="lost", cache_path=copy_file, timeout=0.5,
                           resync_interval=0.3)
    wait_for(lambda: fresh.synced and not fresh.pending() and told, "replayed by the new store")
    assert [kind for kind, _ in told] == ["pending_committed"], told
    assert other.status().stage == 0, other.status()
    states = other_store.load_states()
    assert not states["beta"].switch and not states["gamma"].switch, states
    fresh.close(); other_flags.close(); other_store.close()
finally:
    srv.stop()
print("OK")
"""
    )
