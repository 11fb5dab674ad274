"""The migrating facade when the non-authoritative legacy backend refuses its mirrors.

With the flag on, the target answers; writes are mirrored to the legacy
backend best effort. A legacy backend that is unreachable (raising
``BackendUnavailable``) must not fail a call whose authoritative write
succeeded — that would be a failed call that changed state. The refused
mirrors are retried by the next catch-up once the legacy backend is back, so
a flip back to the legacy side resurrects nothing and shows current metadata.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SCENARIO = """
from foundation import FeatureFlags, Flag, MemoryRegistry, MigratingRegistry, spawn_thread
from foundation.errors import BackendUnavailable

class Unreachable(MemoryRegistry):
    down = False
    def _check(self):
        if self.down:
            raise BackendUnavailable("legacy backend unreachable")
    def register(self, *args, **kwargs):
        self._check()
        return super().register(*args, **kwargs)
    def unregister(self, key):
        self._check()
        return super().unregister(key)
    def update_metadata(self, key, metadata):
        self._check()
        return super().update_metadata(key, metadata)

flags = FeatureFlags([Flag("use_ets_agent_registry")])
flags.enable("use_ets_agent_registry")
legacy, target = Unreachable(), MemoryRegistry()
reg = MigratingRegistry(legacy, target, flags)
stop = threading.Event()
agents = {k: spawn_thread(stop.wait, name=f"agent-{k}") for k in "abcd"}

reg.register("a", agents["a"], {"n": 1})
reg.register("b", agents["b"], {"n": 1})
assert legacy.lookup("a").metadata["n"] == 1

legacy.down = True                                   # the legacy backend becomes unreachable
assert reg.update_metadata("a", {"n": 2}) is None
assert reg.lookup("a").metadata["n"] == 2
assert reg.unregister("b") is True
assert reg.lookup("b") is None
assert reg.register("c", agents["c"], {"n": 1}) is None
assert reg.lookup("c") is not None
assert any(d.key == "c" for d in reg.divergences()), reg.divergences()

legacy.down = False                                  # back: the next write catches up
reg.register("d", agents["d"], {"n": 1})
assert legacy.lookup("a").metadata["n"] == 2, "the refused update was not retried"
assert legacy.lookup("b") is None, "the refused unregister was not retried"

flags.disable("use_ets_agent_registry")              # flip back to the legacy side
assert reg.lookup("b") is None, "an unregistered key came back"
assert reg.lookup("a").metadata["n"] == 2, "stale metadata after the flip"
stop.set()
reg.close()
print("OK")
"""


def test_a_refused_legacy_mirror_never_fails_the_call_and_is_retried() -> None:
    result = run_scenario(_SCENARIO)
    assert "LOG WARNING foundation" in result.stderr, result.stderr
    assert "legacy backend unreachable" in result.stderr, result.stderr
