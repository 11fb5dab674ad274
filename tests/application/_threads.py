"""A call run in a thread of its own, for the application tests that need to
see where it is blocked (``tests._frames.thread_frame``) rather than sleep."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from tests._frames import thread_frame

DEADLINE = 60.0  # seconds: a scenario still running by then has hung


class ThreadCall:
    """``fn`` in a daemon thread (a test that fails with it blocked fails, never
    hangs the run); :meth:`result` joins it and re-raises its error."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self._fn = fn
        self._outcome: list[object] = []
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._outcome.append(self._fn())
        except BaseException as exc:  # handed to the test by result()
            self._error.append(exc)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def _frame(self) -> FrameType | None:
        return thread_frame(self._thread.ident)

    def inside(self, obj: Any, method: str) -> bool:
        """Whether it is running ``obj``'s ``method`` now (anywhere on its stack)."""
        frame = self._frame()
        while frame is not None:
            if frame.f_code.co_name == method and frame.f_locals.get("self") is obj:
                return True
            frame = frame.f_back
        return False

    def blocked_in(self, obj: Any, method: str) -> bool:
        """Whether it is blocked in ``obj``'s ``method`` itself (on a lock, say:
        its innermost Python frame is that method's)."""
        frame = self._frame()
        return (
            frame is not None
            and frame.f_code.co_name == method
            and frame.f_locals.get("self") is obj
        )

    def result(self) -> object:
        self._thread.join(DEADLINE)
        assert not self._thread.is_alive(), "the thread hung"
        if self._error:
            raise self._error[0]
        return self._outcome[0]
