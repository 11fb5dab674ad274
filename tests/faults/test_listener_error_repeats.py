"""A listener that raises on every call logs one traceback, then counted summaries.

A telemetry listener on a hot event (``foundation.redis.round_trip``: hundreds
a second) that raises each time once logged one ERROR with a full traceback per
call. Now the first ``REPEAT_BURST`` failures of a listener are logged in full;
later repeats of the same listener and exception type are counted and
summarised in one line per window;
the public calls that triggered them are unaffected, and an installed
``sys.unraisablehook`` still gets every failure.
"""

from __future__ import annotations

from tests.faults._subprocess import Expected, run_scenario

_REPEATS = """
import re
import foundation._unraisable as unraisable
from foundation import FeatureFlags, Flag, MemoryRegistry, spawn_thread, telemetry

records = []

class Keep(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.ERROR:
            records.append(record)

logging.getLogger("foundation").addHandler(Keep())
calls = {"telemetry": 0, "registry": 0}

raises = {"type": ListenerBug}

def broken_telemetry(name, data):
    calls["telemetry"] += 1
    raise raises["type"]("telemetry listener bug")

def broken_registry(event):
    calls["registry"] += 1
    raise ListenerBug("registry listener bug")

telemetry.attach("flag.changed", broken_telemetry)
flags = FeatureFlags([Flag("f")])
for i in range(200):        # public calls: each one succeeds whatever the listener does
    (flags.enable if i % 2 == 0 else flags.disable)("f", by="ana", reason="flip")
assert flags.enabled("f") is False
assert calls["telemetry"] == 200, calls

stop = threading.Event()
reg = MemoryRegistry()
reg.subscribe(broken_registry)
for i in range(100):
    reg.register(f"k{i}", spawn_thread(stop.wait))
wait_for(lambda: calls["registry"] == 100, "100 registry events delivered")

def ours(where):
    return [r for r in records if where in r.getMessage()]

burst = unraisable.REPEAT_BURST
tele, regs = ours("telemetry listener"), ours("MemoryRegistry listener")
print("records", len(records), "telemetry", len(tele), "registry", len(regs))
assert len(tele) == burst, [r.getMessage() for r in tele]       # not 200
assert len(regs) == burst, [r.getMessage() for r in regs]       # not 100
assert all(r.exc_info for r in tele + regs)

# Another exception type from the same listener is news: logged in full.
raises["type"] = KeyError
flags.enable("f", by="ana")
raises["type"] = ListenerBug
assert len(ours("telemetry listener")) == burst + 1, [r.getMessage() for r in records]
assert ours("telemetry listener")[-1].exc_info[0] is KeyError

# Once the window is over, the next failure logs one line with the count.
unraisable.REPEAT_WINDOW = 0.05
def summarised():
    flags.enable("f") if not flags.enabled("f") else flags.disable("f")
    return any("more time(s)" in r.getMessage() for r in ours("broken_telemetry"))
wait_for(summarised, "a summary of the repeats")
summary = [r for r in ours("broken_telemetry") if "more time(s)" in r.getMessage()][0]
assert summary.exc_info is None, summary.exc_info
assert int(re.search(r": (\\d+) more time", summary.getMessage()).group(1)) >= 200 - burst
assert "ListenerBug('telemetry listener bug')" in summary.getMessage(), summary.getMessage()

# An installed hook still gets every failure, repeats included.
received = []
sys.unraisablehook = received.append
unraisable.REPEAT_WINDOW = 60.0
for _ in range(5):
    reg.update_metadata("k0", {"n": _})
wait_for(lambda: len(received) == 5, "5 failures at the hook")
assert all(a.exc_type is ListenerBug for a in received)
sys.unraisablehook = sys.__unraisablehook__
stop.set()
reg.close()
flags.close()
print("OK")
"""


def test_a_listener_raising_on_every_call_logs_one_traceback_then_counts() -> None:
    result = run_scenario(
        _REPEATS,
        expect=(
            Expected("exception ignored in", "ListenerBug"),
            Expected("exception ignored in", "KeyError"),
        ),
    )
    # REPEAT_BURST (10) tracebacks per (listener, exception type), never one per call.
    assert result.stderr.count("Traceback (most recent call last)") == 21, result.stderr[-3000:]


_LIMITER = """
import os
import foundation._unraisable as unraisable
from foundation._unraisable import report_unraisable

records = []

class Keep(logging.Handler):
    def emit(self, record):
        records.append(record)

logging.getLogger("foundation.example").addHandler(Keep())
burst = unraisable.REPEAT_BURST

def mine(where):
    return [r for r in records if where in r.getMessage()]

# A lambda made anew for each call (an on_down per monitor, each alive) is one culprit.
callbacks = [lambda event: None for _ in range(3 * burst)]
for i, callback in enumerate(callbacks):
    report_unraisable(ListenerBug(i), "a fresh lambda", callback, area="example")
fresh = mine("a fresh lambda")
assert len(fresh) == burst, [r.getMessage() for r in fresh]
assert "repeats are counted" in fresh[-1].getMessage(), fresh[-1].getMessage()
assert all("repeats are counted" not in r.getMessage() for r in fresh[:-1])

# Many threads failing at once: `burst` tracebacks, and every repeat counted.
def listener(event):
    pass

THREADS, CALLS = 8, 500
start = threading.Barrier(THREADS)

def hammer():
    start.wait()
    for i in range(CALLS):
        report_unraisable(ListenerBug(i), "a hot listener", listener, area="example")

threads = [threading.Thread(target=hammer) for _ in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert len(mine("a hot listener")) == burst, len(mine("a hot listener"))
unraisable.REPEAT_WINDOW = 0.0
report_unraisable(ListenerBug("after"), "a hot listener", listener, area="example")
unraisable.REPEAT_WINDOW = 60.0
summary = mine("a hot listener")[-1].getMessage()
assert f": {THREADS * CALLS - burst + 1} more time(s)" in summary, summary

# A forked child starts with no counts: its first failure is logged in full.
pid = os.fork()
if pid == 0:
    before = len(mine("a hot listener"))
    report_unraisable(ListenerBug("child"), "a hot listener", listener, area="example")
    after = mine("a hot listener")
    os._exit(0 if len(after) == before + 1 and after[-1].exc_info else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status

# The count itself never raises, and a report made while it runs on the same
# thread (a finalizer run by a collection there) does not deadlock. An exception
# type whose hash does either stands in for both.
class Raising(type):
    def __hash__(cls):
        raise RuntimeError("hash refused")

class Reporting(type):
    def __hash__(cls):
        if not cls.__dict__.get("inside"):
            cls.inside = True
            report_unraisable(ListenerBug("nested"), "a nested report", None, area="example")
        return id(cls)

class OddError(ListenerBug, metaclass=Raising):
    pass

class NestedError(ListenerBug, metaclass=Reporting):
    pass

report_unraisable(OddError("odd"), "an odd exception type", None, area="example")
assert len(mine("an odd exception type")) == 1
done = threading.Event()

def nested():
    report_unraisable(NestedError("outer"), "an outer report", None, area="example")
    done.set()

threading.Thread(target=nested, daemon=True).start()
assert done.wait(20), "a report made during a report deadlocked"
assert len(mine("a nested report")) == 1 and len(mine("an outer report")) == 1
print("OK")
"""


def test_the_count_is_exact_across_threads_reset_by_fork_and_never_raises() -> None:
    run_scenario(_LIMITER)
