"""The signal wakeup fd an ``async with`` block gives its loop (supervision/_wakeup.py).

Blocks overlapping on one loop share it: the first to end leaves it to the
other (the last removes it); a block entered without a free fd still runs
(nothing raised, the Application usable again); a forked child forgets the
parent's socket pair; at exit the pair is closed (no ResourceWarning). Each
in a subprocess with the default hooks (the wakeup fd is the process's).
"""

from __future__ import annotations

import sys

import pytest

from tests.faults._subprocess import run_scenario

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork, rlimits")

_PROBE = """
import asyncio, os, resource, signal, warnings
warnings.simplefilter("error", ResourceWarning)  # our sockets closed at exit too
from foundation import Application
from foundation.application import AppConfig
from foundation.supervision import Supervisor, _wakeup

def wakeup_fd():  # (a probe: set and put back at once)
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd

def ours():
    return _wakeup._pair is not None and wakeup_fd() == _wakeup._pair[1].fileno()
"""

_OVERLAP = (
    _PROBE
    + """
short_done = None

async def short():
    async with Supervisor([], name="short"):
        await asyncio.sleep(0)
    short_done.set()

async def long():
    async with Supervisor([], name="long"):
        await short_done.wait()
        print("inside long, after short ended:", ours())
    print("after both:", wakeup_fd())

async def main():
    global short_done
    short_done = asyncio.Event()
    await asyncio.gather(long(), short())

asyncio.run(main())
print("OK")
"""
)


def test_overlapping_blocks_on_one_loop_share_the_wakeup_fd() -> None:
    result = run_scenario(_OVERLAP)
    assert result.lines("inside long") == ["inside long, after short ended: True"]
    assert result.lines("after both") == ["after both: -1"]


_NO_FREE_FD = (
    _PROBE
    + """
app = Application(AppConfig(), services=(), workers=())

async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = {int(fd) for fd in os.listdir("/proc/self/fd")}
    lowest_free = next(fd for fd in range(1 << 20) if fd not in used)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no room for a pair
    try:
        async with app:
            print("first block entered, wakeup fd:", wakeup_fd())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    async with app:
        print("second block entered, ours:", ours())

asyncio.run(main())
print("OK")
"""
)


def test_a_block_entered_without_a_free_fd_runs_without_a_wakeup_fd() -> None:
    result = run_scenario(_NO_FREE_FD)
    assert result.lines("first block") == ["first block entered, wakeup fd: -1"]
    assert result.lines("second block") == ["second block entered, ours: True"]


_FORK = (
    _PROBE
    + """
async def main():
    async with Supervisor([], name="s"):
        pid = os.fork()
        if pid == 0:
            os._exit(0 if wakeup_fd() == -1 and _wakeup._pair is None else 1)
        _, status = os.waitpid(pid, 0)
        print("child forgot it:", os.waitstatus_to_exitcode(status) == 0)
        print("parent keeps it:", ours())

asyncio.run(main())
print("OK")
"""
)


def test_a_forked_child_forgets_the_parents_wakeup_fd() -> None:
    result = run_scenario(_FORK)
    assert result.lines("child forgot") == ["child forgot it: True"]
    assert result.lines("parent keeps") == ["parent keeps it: True"]
