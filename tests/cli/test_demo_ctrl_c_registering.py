"""A Ctrl-C while demo part 1 registers its agents ends the part: it never hangs.

Was: ``foundation demo`` once hung for good after one Ctrl-C while it was
registering agents (reproduced: 2 hangs in about 240 runs of ``foundation demo``
given a Ctrl-C at a random time of part 1's registering, 4 in 31 runs of a
script registering in a loop; in every hang, the main thread in
``MemoryRegistry.close()``, waiting for the registry's lock). ``register``
took that lock with ``lock.acquire()`` and then entered ``try:``; the SIGINT's
``KeyboardInterrupt`` was raised at the interpreter's check as ``acquire()``
returned, outside the ``try``, so the lock stayed held. Unwinding, part 1
left its ``with MemoryRegistry()`` block: ``close()`` waited for the lock its
own thread held, for ever (only a second Ctrl-C broke the wait).

Deterministic: a profile function raises ``KeyboardInterrupt`` at the first
point where a signal's handler can run (a ``call`` or ``c_return`` event of
the main thread) once a registration holds the registry's lock, the fourth
registration (the first thread agent). The part must then end with that
``KeyboardInterrupt``, its agents stopped. In a subprocess, with the
interpreter's default hooks.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_PART_1 = """
import faulthandler
from foundation._demo._console import Console
from foundation._demo._core import run_core
from foundation._demo._scoreboard import Scoreboard

faulthandler.dump_traceback_later(60, exit=True)  # the hang fails with its stacks
MEMORY = "foundation/registry/_memory.py"
registrations = 0
registry = None

def held(lock):
    # By this thread (the only one writing): an RLock says so, a Lock only if held.
    return lock._is_owned() if hasattr(lock, "_is_owned") else lock.locked()

def ctrl_c_under_the_lock(frame, event, arg):
    global registrations, registry
    code = frame.f_code
    if event == "call" and code.co_name == "register" and MEMORY in code.co_filename:
        registrations += 1
        registry = frame.f_locals["self"]
    if registrations >= 4 and event in ("call", "c_return") and held(registry._lock):
        sys.setprofile(None)
        raise KeyboardInterrupt

before = set(threading.enumerate())
sys.setprofile(ctrl_c_under_the_lock)
try:
    run_core(Console(plain=True), Scoreboard(), per_kind=3)
except KeyboardInterrupt:
    print("INTERRUPTED at registration", registrations)
finally:
    sys.setprofile(None)
assert registry._lock.acquire(timeout=10)  # (a death reported meanwhile holds it briefly)
registry._lock.release()
assert not held(registry._lock)
assert registry._closed
wait_for(lambda: not (set(threading.enumerate()) - before), "the part's threads to end")
print("OK")
"""


def test_a_ctrl_c_as_part_1_registers_an_agent_ends_the_part() -> None:
    result = run_scenario(_PART_1)
    assert result.lines("INTERRUPTED") == ["INTERRUPTED at registration 4"], result.stdout
