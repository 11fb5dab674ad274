"""A Ctrl-C landing while ``MonitorManager.close()`` waits for its threads
still leaves every fd closed and ``threading.excepthook`` restored.

Was: ``close()`` set ``_closed``, woke its threads and joined them; a
``KeyboardInterrupt`` raised in that join (a second Ctrl-C, as a ``with``
block's exit unwinds the first) escaped before the release step. The epoll,
the wake-up eventfd and every pidfd stayed open and the excepthook held, for
good: ``close()`` is idempotent, so no later call released them. Now the wait
stops there, everything is released, and the ``KeyboardInterrupt`` goes on.

Deterministic: a profile function raises ``KeyboardInterrupt`` at the first
point of the join where a signal's handler can run (the ``c_return`` of its
lock wait). In a subprocess, with the interpreter's default hooks.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SCENARIO = """
import os, subprocess
from foundation.liveness import MonitorManager

def open_fds():
    return len(os.listdir("/proc/self/fd"))

stop = threading.Event()
foreign = threading.Thread(target=stop.wait, daemon=True)  # polled: a thread poller
foreign.start()
child = subprocess.Popen(["sleep", "60"])  # a pidfd: the pidfd selector
hook, fds = threading.excepthook, open_fds()
manager = MonitorManager(name="interrupted")
manager.monitor(foreign, lambda down: None)
manager.monitor(child, lambda down: None)
assert manager.stats().threads_running == 2 and open_fds() > fds

def ctrl_c_in_the_join(frame, event, arg):
    code = frame.f_code
    if event == "c_return" and code.co_name in ("join", "_wait_for_tstate_lock") and (
        code.co_filename == threading.__file__
    ):
        sys.setprofile(None)
        raise KeyboardInterrupt

sys.setprofile(ctrl_c_in_the_join)
try:
    manager.close()
    print("NOT INTERRUPTED")
except KeyboardInterrupt:
    print("INTERRUPTED")
finally:
    sys.setprofile(None)
assert manager.closed
print("OPEN FDS LEFT", open_fds() - fds)
print("HOOK RESTORED", threading.excepthook is hook)
manager.close()  # idempotent: nothing left to release
wait_for(lambda: not library_threads(), "the watcher threads to end")
child.kill()
child.wait()
stop.set()
foreign.join()
print("OK")
"""


def test_a_ctrl_c_in_close_s_join_still_releases_everything() -> None:
    result = run_scenario(_SCENARIO)
    assert result.lines("INTERRUPTED") == ["INTERRUPTED"], result.stdout
    assert result.lines("OPEN FDS LEFT") == ["OPEN FDS LEFT 0"], result.stdout
    assert result.lines("HOOK RESTORED") == ["HOOK RESTORED True"], result.stdout
