"""The synchronous handle (``Supervisor.run_in_thread``): a Ctrl-C landing at
any point of a call leaves no coroutine unawaited, and the handle still works."""

from __future__ import annotations

import asyncio
import gc
import inspect
import itertools
import os
import sys
import threading
import warnings
from types import FrameType
from typing import Any

from foundation.errors import Closed
from foundation.supervision import ChildContext, ChildInfo, ChildSpec, Supervisor
from foundation.supervision import _thread as _thread_module
from tests._ctrl_c import interrupt_everywhere

_THREAD_PY = os.path.join("foundation", "supervision", "_thread.py")
_WATCHED = (
    os.path.join("foundation", "supervision", "_thread.py"),
    os.path.dirname(asyncio.__file__),
)


def _worker(ctx: ChildContext) -> None:
    ctx.ready()
    ctx.stopping.wait()


def test_a_ctrl_c_at_any_point_of_a_handle_call_leaves_no_coroutine_unawaited() -> None:
    ids = itertools.count()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Supervisor([ChildSpec("w", _worker)]).run_in_thread() as handle:
            counted, counts = interrupt_everywhere(handle.count_children, _WATCHED)

            def start_one() -> ChildInfo:
                return handle.start_child(ChildSpec(f"extra-{next(ids)}", _worker))

            started, info = interrupt_everywhere(start_one, _WATCHED)
            # An interrupted call may still have started its child (the Ctrl-C
            # only stops the wait): each is either running or was never added.
            children = handle.which_children()
            assert info.id in {child.id for child in children}
            assert {child.status for child in children} == {"running"}
        gc.collect()
    assert counts.active == 1
    assert counted > 3
    assert started > 3
    assert [str(w.message) for w in caught] == []


def _pause_at(lines: dict[int, tuple[threading.Event, threading.Event]]) -> Any:
    """A trace function: at a line of _thread.py named in ``lines``, set the
    first event (here now) and wait for the second (go on)."""

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        if not frame.f_code.co_filename.endswith(_THREAD_PY):
            return None
        if event == "line" and frame.f_lineno in lines:
            here, go_on = lines[frame.f_lineno]
            here.set()
            assert go_on.wait(30), f"paused at line {frame.f_lineno} for good"
        return trace

    return trace


def _line_of(text: str) -> int:
    """The number of the one line of _thread.py that holds ``text``."""
    source = inspect.getsource(_thread_module).splitlines()
    found = [n for n, line in enumerate(source, 1) if line.strip() == text]
    assert len(found) == 1, (text, found)
    return found[0]


def test_a_call_queued_while_the_loop_closes_is_answered_closed_not_left_waiting() -> None:
    # Race: a call passed its closed check while stop() ran, and queued its start
    # just before the loop closed: the loop never ran it, and its caller (no
    # timeout) waited for ever. Both threads are held at the two lines, in turn.
    queued_line = _line_of("self._loop.call_soon_threadsafe(start)")
    waiting_line = _line_of("return outcome.result(timeout)")
    close_line = _line_of("loop.close()")
    at_queue, queue_now = threading.Event(), threading.Event()
    queued, go = threading.Event(), threading.Event()
    go.set()
    at_close, close_now = threading.Event(), threading.Event()
    threading.settrace(_pause_at({close_line: (at_close, close_now)}))
    try:
        handle = Supervisor([ChildSpec("w", _worker)]).run_in_thread()
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
    answers: list[object] = []

    def count() -> None:
        sys.settrace(_pause_at({queued_line: (at_queue, queue_now), waiting_line: (queued, go)}))
        try:
            answers.append(handle.count_children())
        except Closed as exc:
            answers.append(exc)
        finally:
            sys.settrace(None)

    caller = threading.Thread(target=count, daemon=True)  # (hung for good on failure)
    caller.start()
    assert at_queue.wait(30)  # the call passed its checks; its start is not queued yet
    stopper = threading.Thread(target=handle.stop, daemon=True)
    stopper.start()
    assert at_close.wait(30)  # the loop has run for the last time; it closes next
    queue_now.set()  # the start is queued now: the loop will never run it
    assert queued.wait(30)  # the caller waits for its answer
    close_now.set()
    caller.join(30)
    stopper.join(30)
    assert not caller.is_alive(), "the call waited for ever"
    assert len(answers) == 1
    assert isinstance(answers[0], Closed), answers
