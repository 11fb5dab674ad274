"""A thread child abandoned at its shutdown timeout shows ``"abandoned"``.

Before the fix ``which_children`` (and so the admin page's ``/api/supervision``
and the page built on it) showed such a child ``"stopped"``, its still-running
thread invisible. Now its row is ``"abandoned"`` with that thread as
``handle`` while the thread runs, and ``"stopped"`` once it ended; for the
management calls the child is stopped (``restart_child`` starts it again).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from foundation.errors import ShutdownError
from foundation.supervision import ChildContext, ChildSpec, Supervisor
from tests.supervision._support import run, wait_until


def _deaf(release: threading.Event) -> Callable[[ChildContext], None]:
    def deaf(ctx: ChildContext) -> None:
        ctx.ready()
        release.wait()  # ignores ctx.stopping

    return deaf


def _rows(sup: Any) -> dict[str, Any]:
    return {c.id: c for c in sup.which_children()}


@run
async def test_terminate_child_leaves_an_abandoned_row_until_the_thread_ends() -> None:
    release = threading.Event()
    sup = Supervisor([ChildSpec("deaf", _deaf(release), shutdown_timeout=0.05)])
    await sup.start()
    try:
        thread = sup.which_child("deaf").handle
        with pytest.raises(ShutdownError, match="deaf"):
            await sup.terminate_child("deaf")
        row = sup.which_child("deaf")
        assert (row.status, row.handle) == ("abandoned", thread)  # was ("stopped", None)
        assert thread.is_alive()
        assert sup.count_children().active == 0
        release.set()
        thread.join(10)
        assert not thread.is_alive()
        row = sup.which_child("deaf")
        assert (row.status, row.handle) == ("stopped", None)
        # Stopped for management: it starts again, and the new run is "running".
        release.clear()
        assert (await sup.restart_child("deaf")).status == "running"
    finally:
        release.set()
        # Cleanup, not under test: a released thread that a loaded machine runs
        # later than the 0.05 s shutdown timeout is abandoned (and then ends).
        with contextlib.suppress(ShutdownError):
            await sup.stop()


@run
async def test_a_restarted_child_is_running_while_its_old_thread_lingers() -> None:
    release = threading.Event()
    sup = Supervisor([ChildSpec("deaf", _deaf(release), shutdown_timeout=0.05)])
    await sup.start()
    try:
        old = sup.which_child("deaf").handle
        with pytest.raises(ShutdownError):
            await sup.terminate_child("deaf")
        info = await sup.restart_child("deaf")
        assert info.status == "running"
        assert info.handle is not old
        assert old.is_alive()  # abandoned, but the child runs again: "running"
        assert sup.which_child("deaf").status == "running"
    finally:
        release.set()
        # Cleanup, not under test: a released thread that a loaded machine runs
        # later than the 0.05 s shutdown timeout is abandoned (and then ends).
        with contextlib.suppress(ShutdownError):
            await sup.stop()


def test_after_stop_the_row_and_the_admin_page_say_abandoned() -> None:
    pytest.importorskip("starlette")
    from foundation.admin import AdminServer

    release = threading.Event()

    async def polite(ctx: ChildContext) -> None:
        import asyncio

        ctx.ready()
        await asyncio.Event().wait()

    sup = Supervisor(
        [ChildSpec("polite", polite), ChildSpec("deaf", _deaf(release), shutdown_timeout=0.05)],
        name="root",
    )
    handle = sup.run_in_thread()
    try:
        thread = handle.which_child("deaf").handle
        with AdminServer(supervisors=[handle], bind="127.0.0.1:0") as server:
            with pytest.raises(ShutdownError):
                handle.stop()
            rows = _rows(sup)
            assert rows["deaf"].status == "abandoned"
            assert rows["deaf"].handle is thread
            assert rows["polite"].status == "stopped"
            tree = httpx.get(server.url + "api/supervision", timeout=10).json()
            statuses = {c["id"]: c["status"] for c in tree["supervisors"][0]["children"]}
            assert statuses == {"polite": "stopped", "deaf": "abandoned"}
            style = httpx.get(server.url + "admin.css", timeout=10).text
            assert ".status-abandoned" in style  # the page styles the status it shows
            release.set()
            thread.join(10)
            wait_until(lambda: _rows(sup)["deaf"].status == "stopped")
    finally:
        release.set()
        handle.close()
