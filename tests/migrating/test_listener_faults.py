"""MigratingRegistry ``subscribe()`` listeners that raise, call the facade back
or wait, in a subprocess with the interpreter's default hooks.

Memory scenarios (flag on with a private or a shared legacy, flag off with a
shared legacy, after ``finish()``): a death is seen by a backend's monitor
while another thread's facade write is inside that backend (holding the
facade lock); the death listener calls the facade back (``register``,
``update_metadata``, ``lookup``, ``unregister``). A listener run on the
monitor's thread, inside the backend's delivery, would wait for the facade
lock while the writer waits for that delivery: a deadlock. A listener that
raises comes first in each scenario: reported, never killing a thread, and
the other listeners still get every event once, in per-key order.

Redis scenario (a shared ``RedisRegistry`` legacy, another node writing the
same namespace): remote changes delivered by the legacy's tail, with the
flag off, reach a listener that calls back, one that hands work to a thread
and waits for it, and a slow one (other threads' writes go on meanwhile);
then, with the flag on, a death seen by the target's monitor, and
``finish()``.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.faults._subprocess import run_scenario

_MEMORY = """
from foundation import (FeatureFlags, Flag, MemoryRegistry, MigratingRegistry,
    ThreadLocalRegistry, spawn_thread)

FLAG = "use_ets_agent_registry"
MODE = {mode!r}

class Gated(MemoryRegistry):
    # A real MemoryRegistry whose register of gate_key reports entering and waits.
    def __init__(self):
        super().__init__()
        self.gate_key = None
        self.entered = threading.Event()
        self.release = threading.Event()
    def register(self, key, agent, metadata=None, *, replace=False):
        if self.gate_key is not None and key == self.gate_key:
            self.entered.set()
            assert self.release.wait(60), "the gate was never released"
        super().register(key, agent, metadata, replace=replace)

stops = {{}}
def agent():
    stop = threading.Event()
    a = spawn_thread(stop.wait, name="agent")
    stops[a] = stop
    return a

legacy = ThreadLocalRegistry() if MODE == "on-private" else Gated()
target = Gated()
flags = FeatureFlags([Flag(FLAG)])
flags.set(FLAG, MODE != "off-shared")
reg = MigratingRegistry(legacy, target, flags)
if MODE == "finished":
    reg.finish()
answering = legacy if MODE == "off-shared" else target   # its monitor sees the death

seen = []
def broken(event):
    raise ListenerBug(f"listener-bug on {{event.kind}} of {{event.entry.key}}")
reg.subscribe(broken)                                      # first: it raises every time
reg.subscribe(lambda e: seen.append((e.kind, e.entry.key, e.reason)))

called_back, back_done = threading.Event(), threading.Event()
back_agent = agent()
def call_back(event):
    if event.kind == "unregistered" and event.reason == "down" and event.entry.key == "victim":
        called_back.set()
        reg.register("back", back_agent, {{"n": 1}})        # the facade, from the callback
        reg.update_metadata("back", {{"n": 2}})
        assert reg.lookup("back").metadata["n"] == 2
        assert reg.unregister("back") is True
        reg.register("back", back_agent, {{"n": 3}})
        back_done.set()
reg.subscribe(call_back)

victim = agent()
reg.register("victim", victim)
threads_before = library_threads()
answering.gate_key = "w"
writer = threading.Thread(target=lambda: reg.register("w", agent()), name="writer", daemon=True)
writer.start()
assert answering.entered.wait(20), "the write never reached the backend"
stops[victim].set()                                        # the death, seen by its monitor
assert called_back.wait(20), "the death was never delivered"
answering.release.set()                                    # the write goes on
writer.join(20)
assert not writer.is_alive(), "deadlock: the writer waits for the listener"
assert back_done.wait(20), "deadlock: the listener's call back never returned"

want = {{
    "victim": [("registered", "victim", None), ("unregistered", "victim", "down")],
    "w": [("registered", "w", None)],
    "back": [("registered", "back", None), ("updated", "back", None),
             ("unregistered", "back", "unregistered"), ("registered", "back", None)],
}}
total = sum(len(v) for v in want.values())
wait_for(lambda: len(seen) >= total, "every event")
for key, events in want.items():
    assert [s for s in seen if s[1] == key] == events, seen
assert len(seen) == total, seen
assert reg.lookup("back").metadata["n"] == 3
assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
reg.close()
flags.close()
for stop in stops.values():
    stop.set()
print("OK")
"""


@pytest.mark.parametrize("mode", ["on-private", "on-shared", "off-shared", "finished"])
def test_a_death_listener_calling_back_while_a_write_is_in_flight(mode: str) -> None:
    result = run_scenario(_MEMORY.format(mode=mode), timeout=90)
    assert "listener-bug on unregistered of victim" in result.stderr, result.stderr


_REDIS = """
import uuid
from foundation import (FeatureFlags, Flag, MemoryRegistry, MigratingRegistry, RedisRegistry,
    spawn_thread)

FLAG = "use_ets_agent_registry"
stops = {}
def agent():
    s = threading.Event()
    a = spawn_thread(s.wait, name="agent")
    stops[a] = s
    return a

def writes(tag):
    # Another thread's facade calls on keys of their own.
    a = agent()
    for i in range(5):
        key = (tag, i)
        reg.register(key, a, {"i": i})
        assert reg.lookup(key).agent is a
        reg.update_metadata(key, {"i": -i})
        assert reg.unregister(key) is True

ns = f"lf-{uuid.uuid4().hex[:8]}"
legacy = RedisRegistry(server.url, namespace=ns, op_timeout=5.0, lease_ttl=30.0)
other = RedisRegistry(server.url, namespace=ns, op_timeout=5.0, lease_ttl=30.0)  # another node
target = MemoryRegistry()
flags = FeatureFlags([Flag(FLAG)])
reg = MigratingRegistry(legacy, target, flags)
threads_before = library_threads()

seen = []
def broken(event):
    raise ListenerBug(f"listener-bug on {event.kind} of {event.entry.key}")
reg.subscribe(broken)
reg.subscribe(lambda e: seen.append((e.kind, e.entry.key, e.reason)))

handed = []
slow_in, slow_out = threading.Event(), threading.Event()
def handing(tag):
    t = threading.Thread(target=writes, args=(tag,), name=f"helper-{tag}", daemon=True)
    t.start()
    t.join(20)                                             # bounded: a deadlock fails
    handed.append((tag, not t.is_alive()))

def listener(event):
    key = event.entry.key
    if event.kind == "registered" and key == "remote-a":   # calls the facade back
        reg.register("mine", agent(), {"n": 1})
        reg.update_metadata("mine", {"n": 2})
        assert reg.lookup("mine").metadata["n"] == 2
    elif event.kind == "registered" and key == "remote-b":
        handing("b")                                       # waits for a thread calling it
    elif event.kind == "registered" and key == "remote-c":
        slow_in.set()
        slow_out.wait(60)                                  # slow
    elif event.kind == "unregistered" and event.reason == "down" and key == "dies":
        handing("death")
reg.subscribe(listener)

# Flag off: the legacy side answers; the other node's writes reach us by the tail.
other.register("remote-a", agent(), {"r": 1})
wait_for(lambda: reg.lookup("mine") is not None, "the call back")
other.register("remote-b", agent())
wait_for(lambda: handed, "the hand-off")
assert handed == [("b", True)], handed
other.register("remote-c", agent())
assert slow_in.wait(20), "remote-c never delivered"
w = threading.Thread(target=writes, args=("w",), name="writer", daemon=True)
w.start()
w.join(20)
assert not w.is_alive(), "another thread's writes waited for a slow listener"
slow_out.set()

# Flag on: the target answers; a death its monitor sees; then finish().
flags.enable(FLAG)
dies = agent()
reg.register("dies", dies)
stops[dies].set()
wait_for(lambda: len(handed) == 2, "the death's hand-off")
assert handed[1] == ("death", True), handed
wait_for(lambda: reg.readiness() == [], "no divergence")
reg.finish()
writes("after")

want = {"mine": [("registered", "mine", None), ("updated", "mine", None)],
        "dies": [("registered", "dies", None), ("unregistered", "dies", "down")]}
for k in ("remote-a", "remote-b", "remote-c"):
    want[k] = [("registered", k, None)]
for tag in ("b", "w", "death", "after"):
    for i in range(5):
        key = (tag, i)
        want[key] = [("registered", key, None), ("updated", key, None),
                     ("unregistered", key, "unregistered")]
total = sum(len(v) for v in want.values())
wait_for(lambda: len(seen) >= total, "every event")
for key, events in want.items():
    assert [s for s in seen if s[1] == key] == events, (key, seen)
assert len(seen) == total, seen
print("THREADS", threads_before, library_threads())
reg.close()
other.close()
flags.close()
for s in stops.values():
    s.set()
print("OK")
"""


def test_redis_legacy_listeners_call_back_wait_and_raise() -> None:
    script = (
        "from tests.redis_support import RedisServer\n"
        "server = RedisServer()\nserver.start()\ntry:\n"
        + textwrap.indent(_REDIS, "    ")
        + "\nfinally:\n    server.stop()\n"
    )
    result = run_scenario(script, timeout=120)
    assert "listener-bug on registered of remote-a" in result.stderr, result.stderr
