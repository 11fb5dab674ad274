"""The first Ctrl-C under ``asyncio.run`` acts at once, whichever thread the kernel gives it.

``asyncio.run`` installs its SIGINT handler with ``signal.signal`` and (3.11)
sets no signal wakeup fd. Python's C handler only flags the signal; the Python
handler runs in the main thread once it is back in the interpreter. A
process-directed SIGINT may be handed to any thread not blocking it: to a
thread child or a service thread, the loop slept on in ``epoll_wait(-1)`` and
the operator's first Ctrl-C did nothing until a second one (10/16 runs of
``async with app`` with a thread worker, the main thread in ``epoll_wait``).
``async with`` an Application or a Supervisor now gives the loop a wakeup fd
(``foundation/supervision/_wakeup.py``).

The SIGINT is sent to a thread child (``signal.pthread_kill``: the C handler
runs there, as when the kernel picks that thread) once the main thread sleeps
in ``epoll_wait``. The main task must be cancelled by asyncio's handler; a
watchdog ends the scenario (a second SIGINT, to the main thread) when it is
not. Both kinds of block run in one process, one ``asyncio.run`` each, then a
plain ``asyncio.run`` finds the wakeup fd as it was. In a subprocess with the
interpreter's default hooks.
"""

from __future__ import annotations

import platform
import sys

import pytest

from tests.faults._subprocess import run_scenario

# epoll_wait, epoll_pwait, epoll_pwait2 (the main loop's selector on Linux).
_EPOLL_CALLS = {"x86_64": "232 281 441", "aarch64": "22 441"}

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() not in _EPOLL_CALLS,
    reason="reads the main thread's system call from /proc (Linux, x86_64/aarch64)",
)

_SCENARIO = """
import asyncio, signal
from foundation import Application, ChildSpec
from foundation.application import AppConfig
from foundation.supervision import Supervisor

EPOLL = set(EPOLL_CALLS.split())
signal.signal(signal.SIGINT, signal.default_int_handler)
main = threading.main_thread()

def in_epoll_wait():
    with open(f"/proc/self/task/{main.native_id}/syscall") as f:
        return f.read().split()[0] in EPOLL

def run_block(kind, make):
    cancelled = threading.Event()

    def ctrl_c_here(ctx):
        ctx.ready()
        wait_for(in_epoll_wait, "the main thread asleep in epoll_wait")
        # What the kernel may do with a Ctrl-C: run its handler in this thread.
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        if not cancelled.wait(20):  # a deadline: unhandled, the loop sleeps for good
            print(kind, "first Ctrl-C ignored", flush=True)
            signal.pthread_kill(main.ident, signal.SIGINT)
        ctx.stopping.wait()

    async def body():
        async with make([ChildSpec("c", ctrl_c_here, kind="thread")]):
            try:
                await asyncio.Event().wait()  # until the operator's Ctrl-C
            except asyncio.CancelledError:
                cancelled.set()
                raise

    try:
        asyncio.run(body())
    except KeyboardInterrupt:
        print(kind, "KeyboardInterrupt", flush=True)

run_block("app", lambda w: Application(AppConfig(), services=(), workers=w))
run_block("sup", lambda w: Supervisor(w, name="sup"))

async def plain():
    return signal.set_wakeup_fd(-1)

print("wakeup fd after", asyncio.run(plain()), flush=True)
print("OK", flush=True)
"""


def test_first_ctrl_c_wakes_the_loop_when_another_thread_takes_it() -> None:
    script = f"EPOLL_CALLS = {_EPOLL_CALLS[platform.machine()]!r}\n" + _SCENARIO
    result = run_scenario(script)
    assert result.lines("app") == ["app KeyboardInterrupt"]
    assert result.lines("sup") == ["sup KeyboardInterrupt"]
    assert result.lines("wakeup fd after") == ["wakeup fd after -1"]
