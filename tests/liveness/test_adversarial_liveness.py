"""Adversarial review of liveness (issue 11, items 7, 8): bad arguments are refused
at the call, with a ``ValueError``/``TypeError`` that names them, never a failure
later in a watcher thread or in the new thread."""

from __future__ import annotations

import threading

import pytest

from foundation.errors import Closed
from foundation.liveness import MonitorManager, spawn_thread


@pytest.mark.parametrize("value", [10**400, "0.05", float("inf"), float("nan"), True, None])
@pytest.mark.parametrize("field", ["thread_poll_interval", "process_poll_interval"])
def test_a_poll_interval_must_be_a_positive_finite_number(field: str, value: object) -> None:
    # 10**400 was an OverflowError; inf was accepted and failed in the poller's wait().
    with pytest.raises(ValueError, match="poll intervals must be positive, finite"):
        MonitorManager(**{field: value})  # type: ignore[arg-type]


def test_a_good_poll_interval_still_works() -> None:
    with MonitorManager(thread_poll_interval=1, process_poll_interval=0.5) as manager:
        assert not manager.closed


def test_spawn_thread_refuses_a_target_that_is_not_callable() -> None:
    # Accepted before: the thread started and died with TypeError in threading.excepthook.
    with pytest.raises(TypeError, match="callable target"):
        spawn_thread(5, name="adv-not-callable")  # type: ignore[arg-type]
    assert not [t for t in threading.enumerate() if t.name == "adv-not-callable"]


def test_a_closed_manager_refuses_monitor_for_every_agent_kind_it_knows() -> None:
    manager = MonitorManager(name="adv-closed")
    manager.close()
    stop = threading.Event()
    try:
        with pytest.raises(Closed):
            manager.monitor(spawn_thread(stop.wait), lambda down: None)
    finally:
        stop.set()
