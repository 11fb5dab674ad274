"""The manager: errors, lifecycle (threads, fds), stats, default manager, races."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
from typing import Any

import pytest

import foundation
from foundation import errors
from foundation.liveness import (
    Down,
    MonitorManager,
    OSProcess,
    check_supported,
    default_manager,
    describe_agent,
    is_alive,
    monitor,
    spawn_thread,
)
from tests.liveness._support import Recorder, fd_count, manager_threads, wait_until


@pytest.mark.parametrize("agent", [42, "text", object(), None, [threading.current_thread()]])
def test_unsupported_agents_raise_unsupported_agent(manager: MonitorManager, agent: object) -> None:
    with pytest.raises(errors.UnsupportedAgent):
        manager.monitor(agent, Recorder())
    with pytest.raises(TypeError):  # UnsupportedAgent is a TypeError
        check_supported(agent)
    with pytest.raises(errors.UnsupportedAgent):
        is_alive(agent)
    with pytest.raises(errors.UnsupportedAgent):
        describe_agent(agent)
    assert manager.active_count() == 0


def test_on_down_must_be_callable(manager: MonitorManager) -> None:
    release = threading.Event()
    t = spawn_thread(release.wait)
    with pytest.raises(TypeError, match="callable"):
        manager.monitor(t, "not callable")  # type: ignore[arg-type]
    assert manager.active_count() == 0
    release.set()


def test_down_rejects_unknown_reasons() -> None:
    with pytest.raises(ValueError, match="unknown Down reason"):
        Down("gone")  # type: ignore[arg-type]
    assert Down("lease_expired").reason == "lease_expired"


def test_public_names_are_exported_from_foundation() -> None:
    assert foundation.monitor is monitor
    assert foundation.OSProcess is OSProcess
    assert foundation.spawn_thread is spawn_thread
    assert foundation.Down is Down
    assert foundation.Monitor.__module__ == "foundation.liveness"


def test_threads_start_lazily_and_close_leaves_no_thread_or_fd() -> None:
    base_fds = fd_count()
    mgr = MonitorManager(name="lifecycle", thread_poll_interval=0.005)
    assert manager_threads("lifecycle") == []
    assert mgr.stats().threads_running == 0
    release = threading.Event()
    foreign = threading.Thread(target=release.wait, daemon=True)
    foreign.start()
    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        recs = [Recorder() for _ in range(5)]
        for agent, rec in zip([foreign, *sleepers, spawn_thread(release.wait)], recs, strict=True):
            mgr.monitor(agent, rec)
        assert sorted(manager_threads("lifecycle")) == [
            "foundation-lifecycle-pidfd",
            "foundation-lifecycle-threads",
        ]
        assert all(t.daemon for t in threading.enumerate() if t.name.startswith("foundation-"))
        stats = mgr.stats()
        assert (stats.monitors, stats.watched_agents, stats.threads_running) == (5, 5, 2)
        assert stats.open_fds == 3 + 2  # three pidfds, epoll, eventfd
        assert fd_count() == base_fds + 5
        mgr.close()
        assert manager_threads("lifecycle") == []
        assert fd_count() == base_fds
        with pytest.raises(errors.Closed):  # the figures are gone with the manager
            mgr.stats()
        release.set()
        for proc in sleepers:
            proc.kill()
            proc.wait()
        foreign.join()
        assert [rec.count for rec in recs] == [0] * 5  # released, never called
    finally:
        release.set()
        for proc in sleepers:
            proc.kill()
            proc.wait()
        mgr.close()


def test_close_is_idempotent_and_monitor_after_close_raises() -> None:
    mgr = MonitorManager(name="closed")
    mgr.close()
    mgr.close()
    assert mgr.closed
    release = threading.Event()
    agents: list[object] = [
        spawn_thread(release.wait),
        concurrent.futures.Future(),
        OSProcess(os.getpid()),
    ]
    for agent in agents:
        with pytest.raises(RuntimeError, match="closed"):
            mgr.monitor(agent, Recorder())
    release.set()


def test_context_manager_closes() -> None:
    with MonitorManager(name="ctx") as mgr:
        mgr.monitor(OSProcess(os.getpid()), Recorder())
        assert manager_threads("ctx") == ["foundation-ctx-pidfd"]
    assert mgr.closed
    assert manager_threads("ctx") == []


def test_poll_intervals_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        MonitorManager(thread_poll_interval=0)
    with pytest.raises(ValueError, match="positive"):
        MonitorManager(process_poll_interval=-1)


def test_close_from_inside_on_down_on_a_watcher_thread() -> None:
    base_fds = fd_count()
    mgr = MonitorManager(name="selfclose")
    proc = subprocess.Popen(["sleep", "30"])
    done = threading.Event()
    try:

        def on_down(_down: Down) -> None:
            mgr.close()
            done.set()

        mgr.monitor(proc, on_down)
        proc.kill()
        assert done.wait(10)
        assert wait_until(lambda: manager_threads("selfclose") == [])
        assert fd_count() == base_fds  # the pidfd, epoll and wake-up fds are closed
    finally:
        proc.kill()
        proc.wait()
        mgr.close()


def test_default_manager_serves_monitor_without_manager() -> None:
    release = threading.Event()
    t = spawn_thread(release.wait)
    rec = Recorder()
    mon = monitor(t, rec)
    mgr = default_manager()
    assert mgr is default_manager()
    assert mgr.name == "default"
    assert mgr.active_count() >= 1
    release.set()
    assert rec.wait().reason == "normal"
    assert not mon.active


def test_failing_on_down_is_reported_and_others_still_run(
    manager: MonitorManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    fut: concurrent.futures.Future[int] = concurrent.futures.Future()

    def broken(_down: Down) -> None:
        raise RuntimeError("callback bug")

    rec = Recorder()
    manager.monitor(fut, broken)
    manager.monitor(fut, rec)
    fut.set_result(1)
    assert rec.count == 1
    assert len(reported) == 1
    assert isinstance(reported[0].exc_value, RuntimeError)


def test_describe_agent_is_json_compatible_for_every_kind() -> None:
    release = threading.Event()
    thread = spawn_thread(release.wait, name="described")
    proc = subprocess.Popen(["sleep", "30"])
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(asyncio.sleep(0), name="a-task")
        agents = {
            "thread": thread,
            "task": task,
            "future": concurrent.futures.Future(),
            "process": proc,
        }
        for kind, agent in agents.items():
            description = describe_agent(agent)
            assert json.loads(json.dumps(description)) == description
            assert description["kind"] == kind
        assert describe_agent(thread)["name"] == "described"
        assert describe_agent(task)["name"] == "a-task"
        assert describe_agent(proc)["pid"] == proc.pid
        assert describe_agent(proc)["name"] == "sleep"
        assert describe_agent(OSProcess(proc.pid))["start_time"] == OSProcess(proc.pid).start_time
        assert describe_agent(thread)["pid"] == os.getpid()
        loop.run_until_complete(task)
    finally:
        release.set()
        proc.kill()
        proc.wait()
        loop.close()


def _race_once(manager: MonitorManager) -> None:
    release = threading.Event()
    agent = spawn_thread(release.wait)
    calls: dict[int, int] = {}
    released: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(5)

    def worker(base: int) -> None:
        start.wait()
        for i in range(base, base + 200):

            def on_down(_down: Down, i: int = i) -> None:
                with lock:
                    calls[i] = calls.get(i, 0) + 1

            mon = manager.monitor(agent, on_down)
            if i % 2 and mon.demonitor():
                with lock:
                    released.append(i)

    workers = [threading.Thread(target=worker, args=(n * 1000,)) for n in range(4)]
    for w in workers:
        w.start()
    start.wait()
    release.set()  # the agent dies while monitors are being added and removed
    for w in workers:
        w.join()
    agent.join()
    assert all(count == 1 for count in calls.values())
    assert not set(calls) & set(released)
    assert len(calls) + len(released) == 800
    assert manager.active_count() == 0


def test_racing_monitor_demonitor_and_death_call_each_on_down_at_most_once(
    manager: MonitorManager,
) -> None:
    """Every monitor is either released by demonitor() or called, exactly once."""
    for _ in range(20):
        _race_once(manager)


def test_every_exported_name_resolves_and_is_public() -> None:
    import foundation.liveness as liveness

    for name in liveness.__all__:
        obj = getattr(liveness, name)
        assert getattr(obj, "__module__", "foundation.liveness") in (
            "foundation.liveness",
            "typing",
            "collections.abc",
        ), name
