"""A ``run_in_thread()`` handle's ``stop()`` cut by a Ctrl-C says so.

The caller got the ``KeyboardInterrupt``, the handle's loop closed (cancelling
the stop), and the stop's task left the report to its waiter, the handle,
which made none: nothing said the stop had not finished, nor which children
were left running. Now: one WARNING ``supervisor_stop_cut_short`` naming them.
A stop run to its end reports nothing of the kind.

In a subprocess with the interpreter's default hooks (``tests/faults/_subprocess.py``);
a real SIGINT, sent once the child was asked to stop.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SCENARIO = """
import os, signal
from foundation.supervision import ChildSpec, Supervisor

# Ctrl-C raises KeyboardInterrupt, as in a program started from a terminal
# (a test run started as a background job inherits SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)

class Events(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            print("EVENT", getattr(record, "event", None), getattr(record, "children", None),
                  flush=True)

logging.getLogger("foundation.supervision").addHandler(Events())
release = threading.Event()
asked = threading.Event()

def stuck(ctx):  # stops only once released: the stop waits for it
    ctx.ready()
    ctx.stopping.wait()
    asked.set()
    release.wait()

def interrupt():
    assert asked.wait(30), "the stop never reached the child"
    os.kill(os.getpid(), signal.SIGINT)

sup = Supervisor([ChildSpec("stuck", stuck, shutdown_timeout=60)], name="tree")
handle = sup.run_in_thread()
threading.Thread(target=interrupt, daemon=True).start()
try:
    handle.stop()
except KeyboardInterrupt:
    print("INTERRUPTED", handle.closed)
release.set()
print("FIRST DONE", flush=True)

def quick(ctx):
    ctx.ready()
    ctx.stopping.wait()

with Supervisor([ChildSpec("quick", quick)], name="tree2").run_in_thread():
    pass  # stopped to its end: no report
print("OK")
"""


def test_a_handle_stop_cut_by_ctrl_c_names_the_children_left_running() -> None:
    result = run_scenario(_SCENARIO)
    assert result.lines("INTERRUPTED") == ["INTERRUPTED True"], result.stdout + result.stderr
    assert result.lines("EVENT") == ["EVENT supervisor_stop_cut_short ['stuck']"], (
        result.stdout + result.stderr
    )
