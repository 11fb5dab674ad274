"""A Ctrl-C at every point of a call: ``KeyboardInterrupt`` raised by a trace
function at the n-th call or line event of the watched code, for n = 1, 2, ...
until the call completes. Deterministic, where a real SIGINT hits one point.

The points are a superset of where a real signal can land: a line event
comes before a ``try:`` line or the end of a ``with`` block too, where CPython
never runs a signal handler. So it proves code safe, but a failure it finds
inside ``with lock:`` code may be one no signal can cause (for that, see
``interrupt_at_check_points`` below, which raises at the interpreter's real
check points only: calls and returns from C)."""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any, TypeVar

from tests._stderr import Expected

T = TypeVar("T")


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """No garbage collection while a run is traced: a collection can run an old
    object's ``__del__`` (an event loop's, in asyncio's watched code) inside the
    call, where the n-th event would land in it instead ("Exception ignored in
    ..."): a failure of the test, not of the code (seen once in a long run).
    (No collection before each run: in pytest's large heap that costs more
    than the runs; what is collectable waits for the next one after.)"""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _interrupt_at(event_number: int, watched: tuple[str, ...]) -> Any:
    seen = 0

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal seen
        filename = frame.f_code.co_filename
        if not any(part in filename for part in watched):
            return None
        if event in ("call", "line"):
            seen += 1
            if seen == event_number:
                raise KeyboardInterrupt
        return trace

    return trace


def interrupt_everywhere(call: Callable[[], T], watched: Iterable[str]) -> tuple[int, T]:
    """Run ``call`` again and again, interrupted at the 1st, 2nd, ... event of
    the code whose file name contains one of ``watched`` (in this thread), until
    a run completes. Returns (how many runs were interrupted, that run's result)."""
    parts = tuple(watched)
    for event_number in range(1, 100_000):
        with _no_collection():
            sys.settrace(_interrupt_at(event_number, parts))
            try:
                return event_number - 1, call()
            except KeyboardInterrupt:
                continue
            finally:
                sys.settrace(None)
    raise AssertionError("the call never completed")


# ----------------------------------------------------------------- real check points

#: The start of a scenario script (``tests/faults/_subprocess.py run_scenario``)
#: that cuts calls of objects watching real agents: ``fds()``, and the agents
#: (a foreign thread, the manager's thread poller; an OS process, its pidfd
#: selector: an epoll, a wake-up fd, a pidfd), alive until ``end()``.
SCENARIO_AGENTS = """
import faulthandler, os, subprocess
from tests._ctrl_c import interrupt_at_check_points, lock_free

faulthandler.dump_traceback_later(100, exit=True)  # a hang fails with its stacks

def fds():
    return sorted(os.listdir("/proc/self/fd"))

stop = threading.Event()
foreign = threading.Thread(target=stop.wait, name="foreign-agent", daemon=True)
foreign.start()
process = subprocess.Popen(
    [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
)

def end():
    stop.set()
    process.stdin.close()
    process.wait()
    foreign.join()
"""


_CHECK_POINTS = ("call", "c_return")

#: The one report a cut scenario may leave that no real Ctrl-C does (pass it as
#: ``run_scenario(..., expect=...)``). ``any(c is writer for c in callbacks)`` in
#: ``foundation.flags._store.current_writer`` stops early, and the generator it
#: drops is closed: ``GeneratorExit`` thrown into its frame, which the profile
#: function sees as a ``call`` event. CPython runs no signal handler on a
#: thrown-in exception, so only this injector raises there, and the
#: ``KeyboardInterrupt`` a finalizer cannot pass on is printed as unraisable.
CUT_GENERATOR_CLOSE = Expected(
    "Exception ignored in: <generator object current_writer.<locals>.<genexpr>",
    "KeyboardInterrupt",
)


def _interrupt_at_check_point(event_number: int, watched: tuple[str, ...]) -> Any:
    """A profile function raising ``KeyboardInterrupt`` at the n-th check point
    (a ``call`` or ``c_return`` event) of the code whose file name contains one
    of ``watched``."""
    seen = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal seen
        if event in _CHECK_POINTS and any(part in frame.f_code.co_filename for part in watched):
            seen += 1
            if seen == event_number:
                sys.setprofile(None)
                raise KeyboardInterrupt

    return profile


def interrupt_at_check_points(
    call: Callable[[int], object],
    watched: Iterable[str],
    *,
    after_each: Callable[[int], object] | None = None,
    before_each: Callable[[], object] | None = None,
    limit: int = 20_000,
) -> int:
    """Run ``call(n)`` interrupted at its n-th real check point, n = 1, 2, ...
    until a run completes; returns how many runs were interrupted.

    A real SIGINT raises in the main thread where the interpreter runs its
    signal handlers: right after a C call returns (``c_return``) and at the
    first instruction of a Python function (``call``); also at a backward jump,
    which a profile function does not see. Unlike ``interrupt_everywhere``,
    every failure found here is one a Ctrl-C can cause: a lock taken by
    ``acquire()`` (a C call) before the ``try:`` that releases it, a Python
    ``__enter__``/``__exit__`` cut short. ``after_each(n)`` runs after every
    run, interrupted or not (check no lock is left held: ``lock_free``);
    ``before_each()`` before every run, not interrupted (finish work an
    interrupted run left for the next call, which would otherwise grow each
    run by the points it adds and never let one complete). Profile functions
    are per thread: only this thread's calls are cut.
    """
    parts = tuple(watched)
    for event_number in range(1, limit):
        if before_each is not None:
            before_each()
        with _no_collection():
            sys.setprofile(_interrupt_at_check_point(event_number, parts))
            try:
                call(event_number)
            except KeyboardInterrupt:
                sys.setprofile(None)
                interrupted = True
            else:
                interrupted = False
            finally:
                sys.setprofile(None)
        if interrupted:
            if after_each is not None:
                after_each(event_number)
            continue
        if after_each is not None:
            after_each(event_number)
        return event_number - 1
    raise AssertionError("the call never completed")


def lock_free(lock: Any, timeout: float = 10.0) -> bool:
    """Whether another thread could take ``lock`` now or within ``timeout``:
    one left held by this thread (even an RLock) cannot be. Any lock with
    ``acquire()``/``release()``; a lock never freed leaves a daemon thread
    waiting for it."""
    owned = getattr(lock, "_is_owned", None)
    if owned is not None and owned():
        return False
    try:
        if lock.acquire(blocking=False):  # not ours, and free: the cheap answer
            lock.release()
            return True
    except TypeError:  # an acquire() with no such argument (FairRLock)
        pass
    taken = threading.Event()

    def take() -> None:
        lock.acquire()
        lock.release()
        taken.set()

    threading.Thread(target=take, name="lock-free-probe", daemon=True).start()
    return taken.wait(timeout)
