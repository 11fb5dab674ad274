"""Two threads closing one ``MonitorManager`` at once.

A ``close()`` no longer returns early until one has run to its end (a close
cut by a Ctrl-C is finished by the next: ``test_ctrl_c_close.py``), so two
concurrent closes both run every step. Was: the second read the wake-up fd's
number, then wrote to it after the first had closed it: EBADF warnings, or,
once an unrelated ``open()`` had been given the number, eight bytes written
into someone else's file.

Run in a subprocess with the interpreter's default hooks.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SCENARIO = """
import subprocess, sys
from foundation.liveness import MonitorManager

warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage())
logging.getLogger("foundation.liveness").addHandler(Keep())

process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                           stdin=subprocess.PIPE)
for i in range(300):
    manager = MonitorManager(name=f"twice-{i}")
    manager.monitor(process, lambda down: None)  # its pidfd selector and wake-up fd
    barrier = threading.Barrier(2)
    def close():
        barrier.wait()
        manager.close()
    closers = [threading.Thread(target=close) for _ in range(2)]
    for t in closers:
        t.start()
    for t in closers:
        t.join()
    assert manager.closed
process.stdin.close()
process.wait()
assert warnings == [], warnings[:3]
assert library_threads() == [], library_threads()
print("OK")
"""


def test_two_concurrent_closes_never_touch_a_closed_fd() -> None:
    run_scenario(_SCENARIO)
