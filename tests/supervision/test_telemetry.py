"""Lifecycle events through foundation.telemetry."""

from __future__ import annotations

import pytest

from foundation.errors import RestartIntensityExceeded
from foundation.supervision import Supervisor
from tests.supervision._support import Boom, Crew, captured_events, run, until


@run
async def test_started_exited_restarted_and_intensity_events_carry_their_data() -> None:
    crew = Crew()
    sup = Supervisor([crew.spec("a")], max_restarts=1, name="observed")
    with captured_events() as events:
        await sup.start()
        crew.crash("a")
        await until(lambda: crew.starts("a") == ["a", "a"])  # its new run (Crew.child)
        crew.crash("a")
        with pytest.raises(RestartIntensityExceeded):
            await sup.wait()
    names = [n for n, _ in events]
    assert names == [
        "supervisor.child_started",
        "supervisor.child_exited",
        "supervisor.child_started",
        "supervisor.child_restarted",
        "supervisor.child_exited",
        "supervisor.intensity_exceeded",
    ]
    started, exited, _, restarted, last_exit, exceeded = (d for _, d in events)
    assert started["supervisor"] == "observed"
    assert started["child"] == "a"
    assert started["kind"] == "task"
    assert started["attempt"] == 0
    assert exited["reason"] == "exception"
    assert isinstance(exited["exception"], Boom)
    assert exited["restart"] is True
    assert restarted["restarts"] == 1
    assert restarted["handle"] is not started["handle"]
    assert last_exit["restart"] is False  # the one that tripped the intensity
    assert exceeded["child"] == "a"
    assert exceeded["max_restarts"] == 1
    assert isinstance(exceeded["error"], RestartIntensityExceeded)
