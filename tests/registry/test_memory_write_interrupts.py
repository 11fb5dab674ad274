"""A Ctrl-C landing anywhere in a write of ``MemoryRegistry`` leaves its lock free.

A real SIGINT is raised in the main thread at the interpreter's next check:
right after a C call returns, or at the first instruction of a Python function.
``register`` and ``unregister`` took their lock with ``lock.acquire()`` and
then entered ``try:``; a Ctrl-C raised as ``acquire()`` returned (its own
check) left the lock held with no ``finally`` to release it. The unwinding
thread then reached ``close()`` (the ``with MemoryRegistry()`` block's exit:
``foundation demo`` part 1, Ctrl-C while it registered its agents), which
waited for that lock for ever; so did every watcher thread reporting a death.

Here a profile function raises ``KeyboardInterrupt`` at exactly those points
(a ``call`` event, a ``c_return`` event) of the registry's code, the 1st, 2nd,
... of a write, until a run completes; after each, the lock is free and the
registry still works; ``close()`` ends (``tests._ctrl_c.interrupt_at_check_points``).
In a subprocess, with the interpreter's default hooks (``tests/faults/_subprocess.py``).
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SCENARIO = """
import faulthandler
from foundation.liveness import spawn_thread
from foundation.registry import MemoryRegistry

faulthandler.dump_traceback_later(60, exit=True)  # a hang fails with its stacks
from tests._ctrl_c import interrupt_at_check_points, lock_free

WATCHED = ["foundation/registry/_memory.py"]

def interrupted_everywhere(registry, write):
    def check(n):
        assert lock_free(registry._lock), f"lock left held: interrupted at point {n}"
    return interrupt_at_check_points(write, WATCHED, after_each=check)

stop = threading.Event()
agent = spawn_thread(stop.wait)
for indexed, listened in (((), False), (("role",), True)):
    registry = MemoryRegistry(indexed=indexed)
    if listened:
        registry.subscribe(lambda event: None)

    def register(n):
        registry.register(f"r-{n}", agent, {"role": "io"})

    def unregister(n):
        registry.register(f"u-{n}", agent, {"role": "io"})
        registry.unregister(f"u-{n}")

    for write in (register, unregister):
        print("INTERRUPTED", write.__name__, interrupted_everywhere(registry, write) > 0)
    registry.register("after", agent)  # the registry goes on working
    assert registry.lookup("after") is not None
    registry.close()  # waited for ever on the lock left held
stop.set()
agent.join()
print("OK")
"""


def test_a_ctrl_c_anywhere_in_a_write_leaves_the_lock_free() -> None:
    result = run_scenario(_SCENARIO)
    assert result.lines("INTERRUPTED") == [
        f"INTERRUPTED {write} True" for _ in range(2) for write in ("register", "unregister")
    ]


_DELIVERY_SCENARIO = """
import faulthandler
from foundation.liveness import spawn_thread
from foundation.registry import MemoryRegistry

faulthandler.dump_traceback_later(60, exit=True)  # a hang fails with its stacks
from tests._ctrl_c import interrupt_at_check_points, lock_free

# The delivery of listener events (foundation/_listeners.py): its lock was taken
# by acquire(blocking=False) before the try that releases it. Left held, every
# later deliver() returned at once: no listener heard anything again.
WATCHED = ["foundation/_listeners.py"]
stop = threading.Event()
agent = spawn_thread(stop.wait)
registry = MemoryRegistry()
heard = []
registry.subscribe(lambda event: heard.append((event.kind, event.entry.key)))

def check(n):
    assert lock_free(registry._delivery._lock), f"delivery lock left held: point {n}"

def register(n):
    registry.register(f"r-{n}", agent)

print("INTERRUPTED", interrupt_at_check_points(register, WATCHED, after_each=check) > 0)
heard.clear()
registry.register("after", agent)  # listeners still hear every change
assert heard[-1:] == [("registered", "after")], heard
registry.close()
stop.set()
agent.join()
print("OK")
"""


def test_a_ctrl_c_anywhere_in_a_delivery_leaves_listeners_heard() -> None:
    result = run_scenario(_DELIVERY_SCENARIO)
    assert result.lines("INTERRUPTED") == ["INTERRUPTED True"]
