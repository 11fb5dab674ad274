"""Threads: exact for spawn_thread, polled (with excepthook) for foreign threads."""

from __future__ import annotations

import threading

import pytest

from foundation.liveness import MonitorManager, is_alive, spawn_thread
from tests.liveness._support import Recorder

# A thread that raises is reported by threading.excepthook (as it should be);
# pytest turns that report into a warning, which these tests expect.
thread_exception_expected = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnhandledThreadExceptionWarning"
)


class Boom(Exception):
    pass


def _raise_boom() -> None:
    raise Boom("boom")


# --------------------------------------------------------------------------- spawn_thread


def test_spawn_thread_returns_a_started_daemon_thread_with_args_and_name() -> None:
    out: list[object] = []
    t = spawn_thread(lambda a, *, b: out.append((a, b)), 1, b=2, name="worker-1")
    t.join()
    assert out == [(1, 2)]
    assert t.name == "worker-1"
    assert t.daemon
    assert isinstance(t, threading.Thread)


def test_spawn_thread_can_start_a_non_daemon_thread() -> None:
    t = spawn_thread(lambda: None, daemon=False)
    t.join()
    assert not t.daemon


def test_normal_return_is_reported_as_normal_on_the_spawned_thread(
    manager: MonitorManager,
) -> None:
    release = threading.Event()
    t = spawn_thread(release.wait, name="normal-agent")
    rec = Recorder()
    mon = manager.monitor(t, rec)
    assert manager.active_count() == 1
    assert is_alive(t)
    release.set()
    down = rec.wait()
    assert down.reason == "normal"
    assert rec.threads == ["normal-agent"]
    assert not mon.active
    assert manager.active_count() == 0


@thread_exception_expected
def test_exception_is_reported_with_the_exception(manager: MonitorManager) -> None:
    release = threading.Event()

    def work() -> None:
        release.wait()
        raise Boom("boom")

    t = spawn_thread(work)
    rec = Recorder()
    manager.monitor(t, rec)
    release.set()
    down = rec.wait()
    assert down.reason == "exception"
    assert isinstance(down.exception, Boom)
    t.join()


def test_agent_is_dead_from_the_instant_its_watch_fires(manager: MonitorManager) -> None:
    release = threading.Event()
    t = spawn_thread(release.wait)
    seen: list[tuple[bool, bool]] = []
    done = threading.Event()

    def on_down(_down: object) -> None:
        # Runs on the agent's own thread: still running, but already dead.
        seen.append((is_alive(t), t.is_alive()))
        done.set()

    manager.monitor(t, on_down)
    release.set()
    assert done.wait(10)
    assert seen == [(False, True)]


def test_monitor_after_death_gets_the_recorded_down_synchronously(
    manager: MonitorManager,
) -> None:
    t = spawn_thread(lambda: None)
    t.join()
    rec = Recorder()
    mon = manager.monitor(t, rec)
    assert rec.count == 1  # called inside monitor()
    assert rec.downs[0].reason == "normal"
    assert rec.threads == [threading.current_thread().name]
    assert not mon.active
    assert manager.active_count() == 0


@thread_exception_expected
def test_monitor_after_an_exception_gets_that_exception(manager: MonitorManager) -> None:
    t = spawn_thread(_raise_boom)
    t.join()
    rec = Recorder()
    manager.monitor(t, rec)
    assert rec.downs[0].reason == "exception"
    assert isinstance(rec.downs[0].exception, Boom)


def test_demonitor_before_death_means_on_down_is_never_called(
    manager: MonitorManager,
) -> None:
    release = threading.Event()
    t = spawn_thread(release.wait)
    dropped, kept = Recorder(), Recorder()
    mon = manager.monitor(t, dropped)
    manager.monitor(t, kept)
    assert mon.demonitor() is True
    release.set()
    kept.wait()
    t.join()
    assert dropped.count == 0


def test_demonitor_is_idempotent(manager: MonitorManager) -> None:
    release = threading.Event()
    t = spawn_thread(release.wait)
    mon = manager.monitor(t, Recorder())
    assert [mon.demonitor(), mon.demonitor(), mon.demonitor()] == [True, False, False]
    assert not mon.active
    release.set()


def test_demonitor_after_it_fired_returns_false(manager: MonitorManager) -> None:
    t = spawn_thread(lambda: None)
    rec = Recorder()
    mon = manager.monitor(t, rec)
    rec.wait()
    assert mon.demonitor() is False


def test_many_monitors_on_one_agent_each_fire_exactly_once(manager: MonitorManager) -> None:
    release = threading.Event()
    t = spawn_thread(release.wait)
    recs = [Recorder() for _ in range(50)]
    for rec in recs:
        manager.monitor(t, rec)
    assert manager.active_count() == 50
    release.set()
    t.join()
    assert [rec.count for rec in recs] == [1] * 50
    assert manager.active_count() == 0


def test_thousand_monitor_demonitor_cycles_leave_nothing_behind(manager: MonitorManager) -> None:
    release = threading.Event()
    t = spawn_thread(release.wait)
    baseline = manager.active_count()
    for _ in range(1000):
        manager.monitor(t, Recorder()).demonitor()
    assert manager.active_count() == baseline == 0
    assert manager.stats().watched_agents == 0
    assert t._foundation_watch.monitors == {}  # type: ignore[attr-defined]
    release.set()


def test_monitor_agent_property_is_the_thread(manager: MonitorManager) -> None:
    release = threading.Event()
    t = spawn_thread(release.wait)
    assert manager.monitor(t, Recorder()).agent is t
    release.set()


def test_on_down_may_monitor_and_demonitor_from_inside(manager: MonitorManager) -> None:
    first_release, second_release = threading.Event(), threading.Event()
    first = spawn_thread(first_release.wait)
    second = spawn_thread(second_release.wait)
    other = manager.monitor(second, Recorder())
    nested = Recorder()
    results: list[object] = []
    done = threading.Event()

    def on_down(_down: object) -> None:
        results.append(other.demonitor())
        results.append(manager.monitor(first, nested).active)  # first is dead: sync
        results.append(manager.stats().monitors)
        done.set()

    manager.monitor(first, on_down)
    first_release.set()
    assert done.wait(10)
    assert results == [True, False, 0]
    assert nested.downs[0].reason == "normal"
    second_release.set()


# --------------------------------------------------------------------------- foreign threads


def test_foreign_thread_end_is_polled_as_normal_on_the_poller_thread(
    manager: MonitorManager,
) -> None:
    release = threading.Event()
    t = threading.Thread(target=release.wait, daemon=True)
    t.start()
    rec = Recorder()
    manager.monitor(t, rec)
    assert f"foundation-{manager.name}-threads" in {x.name for x in threading.enumerate()}
    release.set()
    assert rec.wait().reason == "normal"
    assert rec.threads == [f"foundation-{manager.name}-threads"]
    assert manager.active_count() == 0
    assert manager.stats().watched_agents == 0


@thread_exception_expected
def test_foreign_thread_exception_is_seen_through_the_excepthook(
    manager: MonitorManager,
) -> None:
    release = threading.Event()

    def work() -> None:
        release.wait()
        raise Boom("from a foreign thread")

    t = threading.Thread(target=work, daemon=True)
    t.start()
    rec = Recorder()
    manager.monitor(t, rec)
    release.set()
    down = rec.wait()
    assert down.reason == "exception"
    assert isinstance(down.exception, Boom)


def test_thread_never_started_or_already_finished_is_noproc(manager: MonitorManager) -> None:
    unstarted = threading.Thread(target=lambda: None)
    finished = threading.Thread(target=lambda: None)
    finished.start()
    finished.join()
    for agent in (unstarted, finished):
        rec = Recorder()
        mon = manager.monitor(agent, rec)
        assert rec.downs[0].reason == "noproc"
        assert not mon.active
        assert not is_alive(agent)


def test_foreign_thread_demonitor_releases_its_watch(manager: MonitorManager) -> None:
    release = threading.Event()
    t = threading.Thread(target=release.wait, daemon=True)
    t.start()
    rec = Recorder()
    mons = [manager.monitor(t, rec) for _ in range(3)]
    assert manager.stats().watched_agents == 1
    for _ in range(1000):
        manager.monitor(t, rec).demonitor()
    for mon in mons:
        assert mon.demonitor()
    assert manager.stats().watched_agents == 0
    assert manager.active_count() == 0
    release.set()
    t.join()
    assert rec.count == 0


def test_excepthook_is_restored_when_the_last_manager_closes() -> None:
    before = threading.excepthook
    release = threading.Event()
    t = threading.Thread(target=release.wait, daemon=True)
    t.start()
    with MonitorManager(name="hook") as mgr:
        mgr.monitor(t, Recorder())
        assert threading.excepthook is not before
    assert threading.excepthook is before
    release.set()


def test_poll_interval_bounds_detection_of_foreign_threads() -> None:
    with MonitorManager(name="slowpoll", thread_poll_interval=0.2) as mgr:
        release = threading.Event()
        t = threading.Thread(target=release.wait, daemon=True)
        t.start()
        rec = Recorder()
        mgr.monitor(t, rec)
        release.set()
        assert rec.wait().reason == "normal"
