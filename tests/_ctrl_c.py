"""A Ctrl-C at every point of a call: ``KeyboardInterrupt`` raised by a trace
function at the n-th call or line event of the watched code, for n = 1, 2, ...
until the call completes. Deterministic, where a real SIGINT hits one point.

The points are a superset of where a real signal can land: a line event
comes before a ``try:`` line or the end of a ``with`` block too, where CPython
never runs a signal handler. So it proves code safe, but a failure it finds
inside ``with lock:`` code may be one no signal can cause (for that, see
tests/redis/test_register_interrupts.py, which raises at the interpreter's
real check points: calls and returns from C)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")


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
        sys.settrace(_interrupt_at(event_number, parts))
        try:
            return event_number - 1, call()
        except KeyboardInterrupt:
            continue
        finally:
            sys.settrace(None)
    raise AssertionError("the call never completed")
