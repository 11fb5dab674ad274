"""The synchronous handle (``Supervisor.run_in_thread``): a Ctrl-C landing at
any point of a call leaves no coroutine unawaited, and the handle still works."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import warnings

from foundation.supervision import ChildContext, ChildInfo, ChildSpec, Supervisor
from tests._ctrl_c import interrupt_everywhere

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
