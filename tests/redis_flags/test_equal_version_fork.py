"""A fork at the copy's own version is told as a fork, never taken silently.

Found by an explorer (two nodes, SIGSTOP, Redis killed and restarted empty):
node A's ``Migration.advance()`` returned; B, whose copy lagged, reached the
empty Redis first, restored its older copy (or had nothing to restore) and
wrote; then A came back. Redis now held A's version number with B's history:

- cold (B's copy empty: its write started a new epoch): A took Redis' state
  as a new deployment, and its acknowledged advance was gone without a word;
- warm (B restored its copy: same epoch): A took the fewer flag states and
  stages for an eviction and restored its copy over B's acknowledged write.

Both are the fork of docs/flags-outages.md ("An old snapshot with a write in
between"): Redis' state wins, the copy's kill switches are kept, and every
other change of the copy that Redis lost is named in ONE WARNING. Nodes are
cut off with a proxy (no SIGSTOP, no sleep); a plain interpreter
(``run_scenario``) with a real redis-server restarted empty.
"""

from __future__ import annotations

import pytest

from tests.faults._subprocess import run_scenario

_SCENARIO = """
import os, tempfile
from foundation import FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore
from foundation.flags import DEFAULT_FLAGS
from tests.redis_flags._proxy import CutProxy
from tests.redis_support import RedisServer

WARM, KILL = {warm}, {kill}
srv = RedisServer(); srv.start()
import atexit; atexit.register(srv.stop)  # no redis-server left by a failed run
tmp = tempfile.mkdtemp()
proxies = {{name: CutProxy(srv.port) for name in "AB"}}

def node(name):
    store = RedisFlagStore(proxies[name].url, namespace="eqf", timeout=0.5,
                           cache_path=os.path.join(tmp, name + ".sqlite3"),
                           resync_interval=0.2)
    flags = FeatureFlags([Flag("f"), Flag("k", default=True)] + list(DEFAULT_FLAGS), store=store)
    return store, flags, Migration(flags, MigrationPlan.default())

SA, FA, MA = node("A")
if WARM:
    for p in (5, 10, 15):
        FA.set_percentage("f", p, by="A", reason="warm-up")
SB, FB, MB = node("B")
wait_for(lambda: SB.status().version == SA.status().version, "B's copy at A's version")
lagging = SB.status().version
proxies["B"].cut()  # B away: its copy lags from here on
wait_for(lambda: SB.stale, "B stale")
if KILL:
    FA.disable("k", by="A", reason="incident")  # a kill switch: the fork keeps it
else:
    event = MA.advance(by="A", reason="stage 1")
    assert (event.from_stage, event.to_stage, MA.status().stage) == (0, 1, 1), event
proxies["A"].cut()  # A away with the only copy holding its advance
wait_for(lambda: SA.stale, "A stale")
srv.kill()
srv.start()  # empty: no persistence
proxies["B"].restore()
wait_for(lambda: SB.synced and not SB.stale, "B back (restored its older copy, if any)")
FB.set_percentage("f", 42, by="B", reason="after")  # acknowledged
assert SB.status().version == lagging + 1 == SA.status().version, (SB.status(), SA.status())
proxies["A"].restore()
wait_for(lambda: SA.synced and not SA.stale and SA.status().version >= SB.status().version,
         "A back in sync")
wait_for(lambda: not SA.pending() and MA.status().stage == MB.status().stage
         and FA.store.load_states() == FB.store.load_states(), "A and B agree")
# Each node's flags apply what its store holds by a delivery (the stream, or the
# reload that follows `synced`): waited for, not assumed (a load flake: "K False True").
def applied(flags):
    states = flags.store.load_states()
    return all(flags.state(name) == states[name] for name in ("f", "k") if name in states)
wait_for(lambda: applied(FA) and applied(FB), "each node's flags apply its store's states")
print("K", FA.enabled("k"), FB.enabled("k"), SA.status().restores, flush=True)
print("STAGE", MA.status().stage, MB.status().stage, flush=True)
print("F", FA.store.load_states()["f"].percentage, FB.store.load_states()["f"].percentage,
      flush=True)
for s in (SA, SB):
    assert s._thread.is_alive(), "a listener thread died"
FA.close(); FB.close(); SA.close(); SB.close()
for p in proxies.values():
    p.close()
srv.kill()
print("OK", flush=True)
"""


def _fork_warnings(stderr: str) -> list[str]:
    """The fork's WARNING lines (the lost commits named)."""
    return [
        line
        for line in stderr.splitlines()
        if line.startswith("LOG WARNING") and "no longer holds this node's last commits" in line
    ]


@pytest.mark.parametrize("warm", [False, True], ids=["new-epoch", "same-epoch"])
def test_a_fork_at_the_copys_version_is_told_and_redis_wins(warm: bool) -> None:
    result = run_scenario(_SCENARIO.format(warm=warm, kill=False))
    forks = _fork_warnings(result.stderr)
    # The fork's rule: Redis' state (B's acknowledged write) wins on both nodes...
    assert result.lines("STAGE") == ["STAGE 0 0"], result.stdout
    assert result.lines("F") == ["F 42.0 42.0"], result.stdout
    assert not [line for line in result.stderr.splitlines() if "lost keys of version" in line]
    # ... and A's acknowledged advance, lost to it, is named, once (no kill switch kept).
    assert len(forks) == 1, forks
    assert "0 kill switch(es)" in forks[0], forks
    assert "other changes lost: " in forks[0], forks
    assert "migration default advance by A (stage 1)" in forks[0], forks
    assert "f by B" not in forks[0], forks


@pytest.mark.parametrize("warm", [False, True], ids=["new-epoch", "same-epoch"])
def test_a_kill_switch_lost_to_a_fork_at_the_copys_version_is_committed_again(
    warm: bool,
) -> None:
    """The same fork, A's lost commit a kill switch: kept pending from the copy and
    committed on top of Redis' state (B's write kept), on both nodes."""
    result = run_scenario(_SCENARIO.format(warm=warm, kill=True))
    forks = _fork_warnings(result.stderr)
    assert result.lines("K") == ["K False False 1"], result.stdout
    assert result.lines("F") == ["F 42.0 42.0"], result.stdout
    assert len(forks) == 1, forks
    assert "1 kill switch(es)" in forks[0], forks
    assert "A (incident) on k" in forks[0], forks
