"""A listener raising ``KeyboardInterrupt`` or ``SystemExit``, and a Ctrl-C
anywhere in a delivery: every other listener still hears every event, once,
in order, and no library thread dies.

``foundation._listeners.DeliveryQueue`` (the one helper behind registries and
feature flags) took the event off its queue, then called its listeners with
only ``except Exception``: the listeners after the raising one never heard
that event. In the writer's own thread the exception reached the caller (the
write committed); on a courier thread (``foundation-flags-events``,
``foundation-migrating-events``) the thread died, silently for ``SystemExit``.
Now: in a writer's thread the exception still reaches the caller (a Ctrl-C is
never swallowed), after the write is published, and a courier delivers the
rest of that event and those behind it; on a courier it is logged (ERROR,
naming the listener) and the courier goes on. A real Ctrl-C cut right after
the event left the queue lost it too (the last scenario).

In a subprocess with the interpreter's default hooks (``tests/faults/_subprocess.py``).
"""

from __future__ import annotations

import textwrap

import pytest

from tests.faults._subprocess import run_scenario

N = 12  # writes of each kind

# `before` and `after` record; `raiser` (between them) raises EXC on every
# "x" change / every registration of an even key. Each scenario prints
# "RAISED <n>": how many times the writer's own call raised.
_COMMON = """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)
EXC = <exc>
N = <n>
before, after = [], []

def still_alive(threads_before):
    # The long-lived library threads there before are still there (the memory
    # store's outbox thread comes and goes by design, as couriers do; a courier
    # that caught the exception logged it: the ERROR lines the test counts).
    gone = set(threads_before) - set(library_threads()) - {"foundation-memory-flags"}
    assert not gone, gone

def check_heard(expected):
    # Every event, once, in order, for the listeners around the raiser.
    wait_for(lambda: len(after) >= len(expected) and len(before) >= len(expected),
             "the listeners to hear every event")
    assert before == expected, (before, expected)
    assert after == expected, (after, expected)
"""

_FLAGS = """
from foundation.flags import FeatureFlags, Flag, MemoryFlagStore
store = MemoryFlagStore()
flags = FeatureFlags([Flag("x"), Flag("y")], store=store)
# "own": the writer's listeners (its thread delivers); "other": another
# FeatureFlags on the store, whose listeners a courier thread calls.
target = flags if "{where}" == "own" else FeatureFlags.from_store(store)
threads_before = library_threads()

def raiser(change):
    if change.flag == "x":
        raise EXC("listener on x")

target.subscribe(lambda ch: before.append((ch.flag, ch.new.percentage)))
target.subscribe(raiser)
target.subscribe(lambda ch: after.append((ch.flag, ch.new.percentage)))
raised = 0
expected = []
for i in range(1, N + 1):
    try:
        flags.set_percentage("x", i, by="w")
    except EXC:
        raised += 1
    assert flags.state("x").percentage == i, "the write was not published"
    flags.set_percentage("y", i, by="w")
    expected += [("x", float(i)), ("y", float(i))]
check_heard(expected)
print("RAISED", raised)
flags.set_percentage("y", 100, by="w")  # later writes are heard too
wait_for(lambda: after[-1:] == [("y", 100.0)], "a later change")
still_alive(threads_before)
if target is not flags:
    target.close()
flags.close()
print("OK")
"""

_REGISTRY = """
from foundation import FeatureFlags, Flag, MemoryRegistry, MigratingRegistry
from foundation import ThreadLocalRegistry, spawn_thread
if "{where}" == "own":
    # The writer's thread delivers its own events.
    reg = writer = MemoryRegistry()
else:
    # A write on the facade's backend itself: the facade forwards its event on
    # a courier thread (foundation-migrating-events).
    gate = FeatureFlags([Flag("use_ets_agent_registry")])
    gate.enable("use_ets_agent_registry")
    writer = MemoryRegistry()
    reg = MigratingRegistry(ThreadLocalRegistry(), writer, gate)
threads_before = library_threads()

def raiser(event):
    if event.kind == "registered" and int(event.entry.key[1:]) % 2 == 0:
        raise EXC("listener on " + event.entry.key)

reg.subscribe(lambda e: before.append((e.kind, e.entry.key)))
reg.subscribe(raiser)
reg.subscribe(lambda e: after.append((e.kind, e.entry.key)))
stop = threading.Event()
agent = spawn_thread(stop.wait, name="agent")
raised = 0
expected = []
for i in range(N):
    try:
        writer.register(f"k{i}", agent)
    except EXC:
        raised += 1
    assert reg.lookup(f"k{i}") is not None, "the write was not published"
    writer.update_metadata(f"k{i}", {"n": i})
    expected += [("registered", f"k{i}"), ("updated", f"k{i}")]
check_heard(expected)
print("RAISED", raised)
writer.unregister("k0")
wait_for(lambda: after[-1:] == [("unregistered", "k0")], "a later event")
still_alive(threads_before)
reg.close()
if reg is not writer:
    writer.close()
    gate.close()
stop.set()
agent.join()
print("OK")
"""

_CASES = [
    (owner, exc, where)
    for owner in ("flags", "registry")
    for exc in ("KeyboardInterrupt", "SystemExit")
    for where in ("own", "other")
]


@pytest.mark.parametrize(("owner", "exc", "where"), _CASES)
def test_a_listener_raising_a_base_exception_robs_no_other_listener(
    owner: str, exc: str, where: str
) -> None:
    body = _FLAGS if owner == "flags" else _REGISTRY
    script = _COMMON.replace("<exc>", exc).replace("<n>", str(N)) + body.replace("{where}", where)
    result = run_scenario(textwrap.dedent(script))
    raises = N if owner == "flags" else (N + 1) // 2
    # The writer's own thread: the exception reaches the caller (a Ctrl-C is
    # never swallowed), once per raise. A courier: it is logged and goes on.
    assert result.lines("RAISED") == [f"RAISED {raises if where == 'own' else 0}"]
    area = "flags" if owner == "flags" else "registry"
    logged = [
        line
        for line in result.stderr.splitlines()
        if line.startswith(f"LOG ERROR foundation.{area} ")
        and "exception ignored in" in line
        and "raiser" in line
    ]
    assert len(logged) == (0 if where == "own" else raises), result.stderr
    if where == "other":
        assert result.stderr.count(f"{exc}: listener on") == raises, result.stderr


# A real Ctrl-C (a profile function raising KeyboardInterrupt at each check
# point of the delivery code in turn: tests/_ctrl_c.py) in the writer's thread,
# one write per run: every write is published before its delivery begins, and
# every event must be heard once, in order, by each listener.
_CTRL_C_SCENARIO = """
import faulthandler, signal
signal.signal(signal.SIGINT, signal.default_int_handler)
faulthandler.dump_traceback_later(80, exit=True)  # a hang fails with its stacks
from tests._ctrl_c import interrupt_at_check_points, lock_free
from foundation import MemoryRegistry, spawn_thread
from foundation.flags import FeatureFlags, Flag

WATCHED = ["foundation/_listeners.py"]
stop = threading.Event()
agent = spawn_thread(stop.wait, name="agent")

def exercise(what, subscribe, write, lock):
    first, second = [], []
    subscribe(first.append)
    subscribe(second.append)
    expected = []

    def one(n):
        expected.append(n)
        write(n)

    def check(n):
        assert lock_free(lock), f"{what}: delivery lock left held: point {n}"

    cuts = interrupt_at_check_points(one, WATCHED, after_each=check)
    wait_for(lambda: len(first) >= len(expected) and len(second) >= len(expected),
             f"{what}: every event heard")
    assert first == expected, (what, first, expected)
    assert second == expected, (what, second, expected)
    print("CUT", what, cuts > 5)  # (the loop's points were cut: about 10)

registry = MemoryRegistry()
exercise(
    "registry",
    lambda f: registry.subscribe(lambda e: f(int(e.entry.key[1:]))),
    lambda n: registry.register(f"r{n}", agent),
    registry._delivery._lock,
)
registry.close()

flags = FeatureFlags([Flag("x")])
exercise(
    "flags",
    lambda f: flags.subscribe(lambda ch: f(round(ch.new.percentage * 100))),
    lambda n: flags.set_percentage("x", n / 100, by="w"),  # (each write a change)
    flags._delivery._lock,
)
flags.close()
stop.set()
agent.join()
print("OK")
"""


def test_a_ctrl_c_anywhere_in_a_delivery_loses_no_event_and_repeats_none() -> None:
    result = run_scenario(_CTRL_C_SCENARIO)
    assert result.lines("CUT") == ["CUT registry True", "CUT flags True"]
