"""Raising flag subscribers and store callbacks, outside pytest.

A ``FeatureFlags`` subscriber that raises never fails the write that
triggered it (the change is committed exactly once and visible), and a
SQLite store callback that raises on another store object's write does not
stop the watcher: the next write is still delivered.
"""

from __future__ import annotations

import pytest

from tests.faults._subprocess import run_scenario

_STORES = {
    "memory": "from foundation import MemoryFlagStore\nstore = MemoryFlagStore()\n",
    "sqlite": (
        "import os, tempfile\nfrom foundation import SQLiteFlagStore\n"
        "store = SQLiteFlagStore(os.path.join(tempfile.mkdtemp(), 'flags.db'))\n"
    ),
}

_SUBSCRIBER = """
from foundation import FeatureFlags, Flag

flags = FeatureFlags([Flag("beta"), Flag("gamma")], store=store)

def broken(change):
    raise ListenerBug(f"flag-listener-bug on {change.flag}")

seen = []
flags.subscribe(broken)          # first: it raises before the recorder runs
flags.subscribe(lambda change: seen.append((change.flag, change.new.switch)))

assert flags.enable("beta", by="ana", reason="test") is None
assert flags.enabled("beta") is True
assert [(c.flag, c.by) for c in flags.history()] == [("beta", "ana")], flags.history()
assert store.load_states()["beta"].switch is True
assert seen == [("beta", True)], seen

# Later writes still work, each committed once and heard once.
flags.disable("beta", by="ana")
flags.enable("gamma", by="ana")
assert not flags.enabled("beta") and flags.enabled("gamma")
assert [c.flag for c in flags.history()] == ["beta", "beta", "gamma"]
assert seen == [("beta", True), ("beta", False), ("gamma", True)], seen
flags.close()
store.close()
print("OK")
"""


@pytest.mark.parametrize("store", sorted(_STORES))
def test_a_raising_flag_subscriber_never_fails_the_committed_write(store: str) -> None:
    result = run_scenario(_STORES[store] + _SUBSCRIBER)
    assert "ListenerBug: flag-listener-bug on beta" in result.stderr, result.stderr
    assert "LOG ERROR foundation.flags" in result.stderr, result.stderr


_REMOTE = """
import os, tempfile
from foundation import FeatureFlags, Flag, SQLiteFlagStore

path = os.path.join(tempfile.mkdtemp(), "flags.db")
declared = [Flag("beta"), Flag("gamma")]
here = SQLiteFlagStore(path, poll_interval=0.01)
there = SQLiteFlagStore(path, poll_interval=0.01)

def broken_callback(changes):
    raise ListenerBug(f"store-callback-bug on {[c.flag for c in changes]}")

delivered = []
here.subscribe(broken_callback)   # first: it raises before the recorder runs
here.subscribe(lambda changes: delivered.extend(c.flag for c in changes))

# A FeatureFlags over the same store object, with a raising subscriber too.
flags_here = FeatureFlags(declared, store=here)

def broken_listener(change):
    raise ListenerBug("remote-listener-bug")

heard = []
flags_here.subscribe(broken_listener)
flags_here.subscribe(lambda change: heard.append(change.flag))

flags_there = FeatureFlags(declared, store=there)
flags_there.enable("beta", by="bob")
wait_for(lambda: "beta" in delivered, "the first remote change to be delivered")
wait_for(lambda: "beta" in heard, "FeatureFlags to hear the first remote change")
assert flags_here.enabled("beta")

flags_there.enable("gamma", by="bob")    # the watcher survived the raising callback
wait_for(lambda: "gamma" in delivered, "the second remote change to be delivered")
wait_for(lambda: "gamma" in heard, "FeatureFlags to hear the second remote change")
assert flags_here.enabled("gamma")

for f in (flags_here, flags_there):
    f.close()
here.close()
there.close()
print("OK")
"""


def test_a_raising_sqlite_store_callback_does_not_stop_the_watcher() -> None:
    result = run_scenario(_REMOTE)
    assert "ListenerBug: store-callback-bug on ['beta']" in result.stderr, result.stderr
    assert "ListenerBug: remote-listener-bug" in result.stderr, result.stderr
    assert "LOG ERROR foundation.flags" in result.stderr, result.stderr
