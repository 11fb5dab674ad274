"""Demo part 1's task agents: a Ctrl-C landing anywhere while one is made leaves
no coroutine unawaited and no task pending (CI once printed "coroutine ... was
never awaited" under "foundation demo: interrupted")."""

from __future__ import annotations

import asyncio
import gc
import os
import warnings

from foundation._demo._core import _LoopThread
from tests._ctrl_c import interrupt_everywhere


def test_a_ctrl_c_at_any_point_of_making_a_task_agent_leaves_nothing_behind() -> None:
    loop = _LoopThread()
    problems: list[str] = []
    loop.loop.set_exception_handler(lambda _loop, context: problems.append(context["message"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        interrupted, task = interrupt_everywhere(
            loop.spawn_waiting_task,
            [
                os.path.join("foundation", "_demo", "_core.py"),
                os.path.dirname(asyncio.__file__),
                os.path.join("concurrent", "futures"),
            ],
        )
        loop.cancel(task)
        loop.close()
        gc.collect()
    assert interrupted > 5
    assert [str(w.message) for w in caught] == []
    assert problems == []
