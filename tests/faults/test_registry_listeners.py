"""A raising registry listener, outside pytest: the write succeeds, nothing breaks.

For each in-process backend (and the migrating facade with its flag on and
off): register, update, unregister and an agent's death, each with a listener
that raises. The call returns normally, the state is what it would be without
the listener, the next listener still gets the event, later operations work,
and the error is logged under ``foundation.registry`` with its traceback,
once (the interpreter's default unraisable hook is not called on top).
"""

from __future__ import annotations

import textwrap

import pytest

from tests.faults._subprocess import run_scenario

_BUILD = {
    "memory": """
        from foundation import MemoryRegistry
        reg = MemoryRegistry()
        DOWN_EVENTS = True
    """,
    "thread_local": """
        from foundation import ThreadLocalRegistry
        reg = ThreadLocalRegistry()
        DOWN_EVENTS = False  # the legacy store monitors nothing: dead entries are filtered
    """,
    "migrating_on": """
        from foundation import FeatureFlags, Flag, MemoryRegistry, MigratingRegistry
        from foundation import ThreadLocalRegistry
        flags = FeatureFlags([Flag("use_ets_agent_registry")])
        flags.enable("use_ets_agent_registry")
        reg = MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags)
        assert reg.flag_on
        DOWN_EVENTS = True  # the target's monitor sees the death and it is forwarded
    """,
    "migrating_off": """
        from foundation import FeatureFlags, Flag, MemoryRegistry, MigratingRegistry
        from foundation import ThreadLocalRegistry
        flags = FeatureFlags([Flag("use_ets_agent_registry")])
        reg = MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags)
        assert not reg.flag_on
        DOWN_EVENTS = False  # the legacy side answers, and it emits no death events
    """,
}

_SCENARIO = """
from foundation import spawn_thread

def broken(event):
    raise ListenerBug(f"listener-bug on {event.kind} of {event.entry.key}")

seen = []
reg.subscribe(broken)            # first: it raises before the recorder runs
reg.subscribe(lambda e: seen.append((e.kind, e.entry.key, e.reason)))

stops = {k: threading.Event() for k in "abc"}
agents = {k: spawn_thread(stops[k].wait, name=f"agent-{k}") for k in "abc"}

assert reg.register("a", agents["a"], {"n": 1}) is None
assert reg.lookup("a").metadata["n"] == 1, "register did not store the entry"
assert ("registered", "a", None) in seen, seen

assert reg.update_metadata("a", {"n": 2}) is None
assert reg.lookup("a").metadata["n"] == 2, "update_metadata did not apply"
assert ("updated", "a", None) in seen, seen

assert reg.unregister("a") is True
assert reg.lookup("a") is None, "unregister did not remove the entry"
assert ("unregistered", "a", "unregistered") in seen, seen
assert reg.unregister("a") is False

reg.register("b", agents["b"], {"n": 3})
stops["b"].set()                 # the agent dies; listeners run on its own thread
agents["b"].join()
wait_for(lambda: reg.lookup("b") is None, "the dead agent's entry to go")
if DOWN_EVENTS:
    wait_for(lambda: ("unregistered", "b", "down") in seen, "the down event")

# Everything still works afterwards.
reg.register("c", agents["c"], {"n": 4})
reg.update_metadata("c", {"n": 5})
assert [e.metadata["n"] for e in reg.list_all()] == [5]
assert reg.count() == 1
stops["c"].set()
reg.close()
print("OK")
"""


@pytest.mark.parametrize("backend", sorted(_BUILD))
def test_a_raising_listener_never_fails_the_write_nor_the_death_handler(backend: str) -> None:
    result = run_scenario(textwrap.dedent(_BUILD[backend]) + _SCENARIO)
    for kind in ("registered", "updated", "unregistered"):
        text = f"ListenerBug: listener-bug on {kind} of a"
        assert text in result.stderr, f"no traceback for {kind}\n{result.stderr}"
    if backend in ("memory", "migrating_on"):  # the backends that emit death events
        assert "ListenerBug: listener-bug on unregistered of b" in result.stderr, result.stderr
    assert "LOG ERROR foundation.registry" in result.stderr, result.stderr
    # Logged once: the default unraisable hook does not print it a second time.
    assert result.stderr.count("ListenerBug: listener-bug on updated of a") == 1, result.stderr
