"""A child whose abandoned runs pile up (a restart loop beside a thread that
ignores ``ctx.stopping``) says how many are still running, in its one
``thread_abandoned`` record per abandonment.

Real supervisors and threads; the threads are released at the end.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from foundation.errors import ShutdownError
from foundation.supervision import ChildContext, ChildSpec, Supervisor
from tests._logs import captured
from tests.supervision._support import run


@run
async def test_each_abandonment_counts_the_runs_of_that_child_still_running() -> None:
    # Was: each restart abandoned one more thread, each reported alone: nothing
    # said they piled up (threads 10 -> 21 in 30 s in a crash loop).
    release = threading.Event()

    def deaf(ctx: ChildContext) -> None:
        ctx.ready()
        release.wait(60)  # never looks at ctx.stopping

    name = f"leak-{uuid.uuid4().hex[:8]}"  # its own name: no other test's threads counted
    with captured("foundation.supervision") as kept:
        try:
            # A new supervisor of the same name each time, as a parent restarts one.
            for _ in range(3):
                sup = Supervisor([ChildSpec("deaf", deaf, shutdown_timeout=0.1)], name=name)
                await sup.start()
                with pytest.raises(ShutdownError):
                    await sup.stop()
        finally:
            release.set()
    records = kept.of("thread_abandoned", "deaf")
    assert [r.still_running for r in records] == [1, 2, 3]  # type: ignore[attr-defined]
    messages = [r.getMessage() for r in records]
    assert "still running" not in messages[0].split("shutdown timeout")[1], messages
    assert messages[2].endswith("; 3 abandoned runs of child deaf are still running"), messages
