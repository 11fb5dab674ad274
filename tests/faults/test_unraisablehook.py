"""``report_unraisable`` and the interpreter's hooks, in a plain interpreter.

An installed ``sys.unraisablehook`` receives a real ``UnraisableHookArgs``
(the type CPython itself passes, which the default hook accepts); under the
default hook the error is logged once and not printed again; a broken hook or
a broken logging filter never escapes into the producer; and a genuine
unraisable raised by another thread while the type is being captured is
still delivered to the installed hook.
"""

from __future__ import annotations

from tests.faults._subprocess import Expected, run_scenario

_INSTALLED_HOOK = """
received = []
sys.unraisablehook = received.append      # installed before anything is reported

from foundation import MemoryRegistry, spawn_thread

def broken(event):
    raise ListenerBug(f"listener-bug on {event.kind}")

stop = threading.Event()
reg = MemoryRegistry()
reg.subscribe(broken)
reg.register("a", spawn_thread(stop.wait))
assert reg.lookup("a") is not None
assert len(received) == 1, received
args = received[0]

class Genuine(Exception):
    pass

class Finalizer:
    def __del__(self):
        raise Genuine("a real unraisable")

Finalizer()                               # CPython calls the hook with its own type
assert len(received) == 2, received
real = received[1]
assert type(real).__name__ == "UnraisableHookArgs", type(real)
assert type(args) is type(real), (type(args), type(real))
assert args.exc_type is ListenerBug and isinstance(args.exc_value, ListenerBug)
assert args.exc_traceback is args.exc_value.__traceback__ is not None
assert args.err_msg == "Exception ignored in MemoryRegistry listener", args.err_msg
assert args.object is broken
sys.__unraisablehook__(args)              # the default hook accepts it (prints it)
stop.set()
reg.close()
print("OK")
"""


def test_an_installed_hook_receives_a_real_unraisable_hook_args() -> None:
    # The script calls the default hook itself with the args it received (to show
    # CPython's own hook accepts them): that report is the point of the test.
    result = run_scenario(
        _INSTALLED_HOOK,
        expect=(Expected("Exception ignored in MemoryRegistry listener", "ListenerBug"),),
    )
    assert "LOG ERROR foundation.registry" in result.stderr, result.stderr
    # Printed by the default hook, called by the script itself with our args.
    assert "Exception ignored in MemoryRegistry listener: <function broken" in result.stderr


_BROKEN_REPORTING = """
from foundation import MemoryRegistry, spawn_thread
from foundation._unraisable import report_unraisable

def broken(event):
    raise ListenerBug(f"listener-bug on {event.kind}")

def broken_hook(args):
    raise RuntimeError("hook-bug")

stop = threading.Event()
reg = MemoryRegistry()
reg.subscribe(broken)

sys.unraisablehook = broken_hook
reg.register("a", spawn_thread(stop.wait))
assert reg.lookup("a") is not None

class BrokenFilter(logging.Filter):
    def filter(self, record):
        raise RuntimeError("filter-bug")

sys.unraisablehook = sys.__unraisablehook__
logging.getLogger().handlers[0].addFilter(BrokenFilter())   # the stderr handler
reg.update_metadata("a", {"n": 1})
assert reg.lookup("a").metadata["n"] == 1
assert report_unraisable(ListenerBug("direct"), "a direct report", None) is None
stop.set()
reg.close()
print("OK")
"""


def test_a_broken_hook_or_logging_filter_never_escapes_into_the_producer() -> None:
    # With the hook and then logging itself broken on purpose, the library's last
    # resort is the default hook: these reports are what the test asserts on.
    last_resort = (
        Expected("Exception ignored in logging an error of", "RuntimeError"),
        Expected("Exception ignored in MemoryRegistry listener", "ListenerBug"),
        Expected("Exception ignored in a direct report", "ListenerBug"),
    )
    result = run_scenario(_BROKEN_REPORTING, expect=last_resort)
    err = result.stderr
    assert "ListenerBug: listener-bug on registered" in err, err
    assert "RuntimeError: hook-bug" in err, err
    # Logging itself failed: the errors still reach stderr, through the default hook.
    assert "ListenerBug: listener-bug on updated" in err, err
    assert "RuntimeError: filter-bug" in err, err
    assert "ListenerBug: direct" in err, err


_RACE = """
received = []
hook = received.append
sys.unraisablehook = hook

import foundation._unraisable as unraisable

class Genuine(Exception):
    pass

class Finalizer:
    def __del__(self):
        raise Genuine("a real unraisable from another thread")

hooks_seen = []

class TriggerWithForeignTraffic(unraisable._Trigger):
    # Built while the capturing hook is installed: another thread's genuine
    # unraisable arrives exactly then (the race, made deterministic).
    __slots__ = ()

    def __init__(self, exc):
        hooks_seen.append(type(sys.unraisablehook).__name__)
        noisy = threading.Thread(target=Finalizer, name="noisy")
        noisy.start()
        noisy.join()
        super().__init__(exc)

unraisable._Trigger = TriggerWithForeignTraffic
report_hook = unraisable.report_unraisable
report_hook(ListenerBug("first report"), "the race test", None)   # captures the type now
assert hooks_seen == ["_Capture"], hooks_seen                      # the race did happen
assert sys.unraisablehook is hook, "the swap was not undone"
kinds = [type(a.exc_value).__name__ for a in received]
assert kinds == ["Genuine", "ListenerBug"], kinds                  # none lost, probe kept out
assert type(received[0]) is type(received[1])
report_hook(ListenerBug("second report"), "the race test", None)  # no second capture
assert hooks_seen == ["_Capture"] and len(received) == 3
print("OK")
"""


def test_another_threads_unraisable_during_the_capture_reaches_the_installed_hook() -> None:
    run_scenario(_RACE)
