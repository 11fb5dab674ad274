"""A flag-off ``update_metadata`` of a key unregistered with the flag on while the
legacy Redis side is down, in a plain interpreter (Redis really killed).

The legacy side could not take the unregister's mirror: its local copy stays
until the pass removes it, which runs once the legacy side says it is back.
Meanwhile a flag-off ``lookup`` answers that copy (documented: the legacy side
serves its local copy during an outage) and the update raised ``NotRegistered``
for a key ``lookup`` returned. Nothing definitive can be said while it is down:
``BackendUnavailable``, as any flag-off write then; once it is back and the
pass has run, ``lookup`` says None and the update ``NotRegistered``, agreeing.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

SCENARIO = """
from foundation import (
    FeatureFlags, Flag, MemoryRegistry, MigratingRegistry, RedisRegistry, spawn_thread,
)
from tests.redis_support import RedisServer

def entry_metadata(reg):
    entry = reg.lookup("k")
    return None if entry is None else dict(entry.metadata)

server = RedisServer()
server.start()
flags = FeatureFlags([Flag("use_ets_agent_registry")])
legacy = RedisRegistry(server.url, namespace="stale-copy", op_timeout=0.5)
reg = MigratingRegistry(legacy, MemoryRegistry(), flags)
stop = threading.Event()
try:
    reg.register("k", spawn_thread(stop.wait), {"i": 1})  # flag off: legacy first
    server.kill()
    wait_for(lambda: legacy.status().state != "connected", "the legacy side to say down")
    flags.enable("use_ets_agent_registry")
    print("unregister", reg.unregister("k"))  # the target's: its legacy mirror waits
    flags.disable("use_ets_agent_registry")
    print("down lookup", entry_metadata(reg))  # the legacy side's local copy
    print("down update", typed(lambda: reg.update_metadata("k", {"i": 2})))
    server.start()
    wait_for(lambda: legacy.status().state == "connected", "the legacy side to be back")
    wait_for(lambda: reg.lookup("k") is None, "the pass to remove the stale copy")
    print("back update", typed(lambda: reg.update_metadata("k", {"i": 3})))
    print("OK")
finally:
    stop.set()
    reg.close()
    legacy.close()
    flags.close()
    server.stop()
"""


def test_an_update_of_a_stale_legacy_copy_waits_for_the_legacy_side() -> None:
    result = run_scenario(SCENARIO)
    assert result.lines("unregister") == ["unregister True"]
    assert result.lines("down lookup") == ["down lookup {'i': 1}"]
    assert result.lines("down update") == [
        "down update BackendUnavailable: the legacy backend is disconnected"
    ]
    assert result.lines("back update") == ["back update NotRegistered: key 'k' is not registered"]
