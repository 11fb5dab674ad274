"""A change this node's listeners were told, replaced on the new master by another
commit at the same version (a fork at the told version), is not taken back silently.

The failover of ``test_told_change_lost_with_master``: node 2 is told a kill
switch (version 2) that node 1 committed on server A, which never replicated
it; server B, promoted, already holds another commit at version 2 (a Sentinel
client on another node that moved in time). Node 2's refresh after the reply
reaches B (its Sentinel client moved in time too): the node copy takes B's
version 2 and the resync finds Redis "in sync". The kill switch is told taken
back (the reload): once, with ONE WARNING naming it and the version (before: no
WARNING, the kill switch silently un-pulled).

Also: ``_keep_told``'s check of the shared node copy and its write are one
transaction: another store sharing the copy's file, writing B's version 2 into it
between the check and the write, no longer gets A's told commit written over it
(before: the copy held both commits of version 2, its history two forks mixed).
And a told commit the copy kept is named once, by the fork's own WARNING.
Runs in a plain interpreter (``run_scenario``) with real redis-servers.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario
from tests.redis_flags.test_told_change_lost_with_master import _B_PROMOTED, _END, _NODES

# B promoted with version 1, then the fork: another commit at version 2 on B
# (node 3); then node 1 pulls the kill switch on A (version 2 there too).
_FORK = (
    _B_PROMOTED
    + """\
S3 = RedisFlagStore(srv_b.url, namespace="tl", timeout=0.5, cache_path=None)
F3 = FeatureFlags(declared, store=S3)
F3.enable("later", by="bob", reason="on B")  # version 2 on B: the fork
"""
)

# Node 2's clients move to B as its listeners are told the kill switch (after
# the cut of _NODES' subscriber): its refresh after the reply reads B.
_MOVE = """
moved = threading.Event()

def move_to_b(changes):
    if any(c.flag == "kill_me" for c in changes) and not moved.is_set():
        proxy._target = ("127.0.0.1", srv_b.port)
        proxy.restore()
        S2.load_states()  # its client reconnects (to B), or drops the cut socket
        moved.set()

S2.subscribe(move_to_b)
"""

_SCENARIO = (
    _NODES
    + _MOVE
    + _FORK
    + """
F1.disable("kill_me", by="ops", reason="incident\\nERROR forged")  # version 2, on A only
wait_for(moved.is_set, "node 2 moved to B as it delivers the kill switch")
wait_for(lambda: ("kill_me", True, None, "reload") in heard, "the kill switch taken back")
wait_for(lambda: S2.synced and not S2.stale and S2.status().resyncs >= 1, "node 2 in sync")
F1.close(); S1.close(); srv_a.kill()  # node 1 and the old master die together
F3.disable("other", by="ana", reason="marker")  # version 3 on B: heard after the resync
wait_for(lambda: heard[-1][:2] == ("other", False), "node 2 hears the marker")
print("HEARD", heard, flush=True)
assert heard[:2] == [("other", True, "ana", "launch"),
                     ("kill_me", False, "ops", "incident\\nERROR forged")], heard
assert [h for h in heard if h[0] == "kill_me"][1:] == [("kill_me", True, None, "reload")], heard
assert F2.enabled("kill_me") and F3.enabled("kill_me"), "B's state wins (the fork's rule)"
assert S2.status().version == 3 and S2.status().restores == 0, S2.status()
"""
    + _END
)


_REPLACED = "a change this node's listeners were told was replaced by a different commit"


def _replaced_warnings(stderr: str) -> list[str]:
    """The fork-at-the-told-version WARNING lines."""
    return [
        line for line in stderr.splitlines() if line.startswith("LOG WARNING") and _REPLACED in line
    ]


def test_a_change_told_then_replaced_at_its_version_on_the_new_master_is_warned() -> None:
    result = run_scenario(_SCENARIO)
    warned = _replaced_warnings(result.stderr)
    assert len(warned) == 1, result.stderr
    assert "version 2" in warned[0], warned
    assert "kill_me by ops (incident\\nERROR forged)" in warned[0], warned
    # No other WARNING claims the fork (the copy never held the told commit).
    assert "no longer holds this node's last commits" not in result.stderr, result.stderr


# The copy race: node 2 is cut as it delivers the kill switch (_NODES), so it
# keeps the told commit in its copy (_keep_told). At its write, after its check
# of the copy, another store sharing the copy's file (node 2b, on B) refreshes
# the file to B's version 2 first: the one ordering point where the check and
# the write were apart (NodeCache.apply wrapped on node 2's copy: the real write
# runs right after node 2b's, no timing involved).
_RACE = """
S2b = []
raced = threading.Event()
real_apply = S2._cache.apply

def racing_apply(snap, *args, **kwargs):
    if cut.is_set() and not raced.is_set() and threading.current_thread() is S2._thread:
        S2b.append(RedisFlagStore(srv_b.url, namespace="tl", timeout=0.5,
                                  cache_path=os.path.join(work, "node2.db")))
        try:
            return real_apply(snap, *args, **kwargs)
        finally:
            raced.set()
    return real_apply(snap, *args, **kwargs)

S2._cache.apply = racing_apply
"""

_RACE_SCENARIO = (
    _NODES
    + _RACE
    + _FORK
    + """
F1.disable("kill_me", by="ops", reason="incident")  # version 2, on A only
wait_for(raced.is_set, "node 2 keeps the told commit as node 2b refreshes the copy")
history = S2._cache.history()
print("COPY", S2._cache.version, [(f["v"], f["txn"]) for _, f in history], flush=True)
versions = [f["v"] for _, f in history]
assert versions == ["1", "2"], history  # one commit per version: B's (node 2b's refresh)
assert '"later"' in history[-1][1]["change"], history  # B's commit, not A's kill switch
F1.close(); S1.close(); srv_a.kill()
proxy._target = ("127.0.0.1", srv_b.port)
proxy.restore()
wait_for(lambda: S2.synced and not S2.stale and S2.status().resyncs >= 1, "node 2 in sync")
wait_for(lambda: ("kill_me", True, None, "reload") in heard, "the kill switch taken back")
assert S2._thread.is_alive() and S2b[0]._thread.is_alive() and S3._thread.is_alive()
for c in (F3, S3, F2, S2, S2b[0], proxy):
    c.close()
srv_b.kill()
print("OK", flush=True)
"""
)


def test_a_told_commit_is_not_written_over_a_refresh_of_a_process_sharing_the_copy() -> None:
    result = run_scenario(_RACE_SCENARIO)
    assert len(_replaced_warnings(result.stderr)) == 1, result.stderr


# Node 2 cut off as it is told the kill switch (version 2, on A only) and heard
# it; then node 1 and A die.
_TOLD_THEN_A_DIES = """
F1.disable("kill_me", by="ops", reason="incident")  # version 2, on A only
wait_for(cut.is_set, "node 2 cut off as it delivers the kill switch")
wait_for(lambda: len(heard) == 2, "node 2's listeners hear the kill switch")
F1.close(); S1.close(); srv_a.kill()
"""

# Node 2 back in sync with the kill switch kept pulled (the fork's WARNING).
_KEPT_END = (
    """\
wait_for(lambda: S2.synced and not S2.stale and S2.status().resyncs >= 1, "node 2 in sync")
wait_for(lambda: not S2.pending() and not F3.enabled("kill_me"), "the kill switch kept")
"""
    + _END
)


def _assert_fork_named_once(stderr: str) -> None:
    """One fork WARNING names the kill switch; no 'replaced' WARNING names it again."""
    forks = [line for line in stderr.splitlines() if "no longer holds this node's" in line]
    assert len(forks) == 1, stderr
    assert "1 kill switch(es)" in forks[0], forks
    assert not _replaced_warnings(stderr), stderr


# The same fork, node 2 cut as it delivers (_NODES): its copy kept the told
# commit, so the refresh against B tells the fork as one (its WARNING, the kill
# switch kept pending and committed again): named there, not a second time.
_KEPT_SCENARIO = (
    _NODES
    + _FORK
    + _TOLD_THEN_A_DIES
    + """\
proxy._target = ("127.0.0.1", srv_b.port)
proxy.restore()
"""
    + _KEPT_END
)


def test_a_told_commit_the_copy_kept_is_named_once_by_the_forks_warning() -> None:
    result = run_scenario(_KEPT_SCENARIO)
    _assert_fork_named_once(result.stderr)


# The kept commit's fork again, node 2's first resync against B lost amid it: its
# catch-up took the fork (the WARNING naming the kill switch, kept pending), then
# the proxy is cut as it reads the catalogue (a real outage; the wrap only times
# it). The next resync finds the copy at B's version 2: its told commit, compared
# again there, was named a second time as "replaced ... not kept pending".
_RETRIED_SCENARIO = (
    _NODES
    + _FORK
    + _TOLD_THEN_A_DIES
    + """\
lost_again = threading.Event()
real_keep_records = S2._keep_records

def cut_amid_resync(keys, doing):
    if (doing == "reading the catalogue and plans" and not lost_again.is_set()
            and threading.current_thread() is S2._thread):
        proxy.cut()
        lost_again.set()
    return real_keep_records(keys, doing)

S2._keep_records = cut_amid_resync
proxy._target = ("127.0.0.1", srv_b.port)
proxy.restore()
wait_for(lost_again.is_set, "node 2's first resync takes the fork, then loses Redis")
proxy.restore()
"""
    + _KEPT_END
)


def test_a_told_commit_is_named_once_when_the_resync_that_took_the_fork_failed() -> None:
    result = run_scenario(_RETRIED_SCENARIO)
    _assert_fork_named_once(result.stderr)
