"""A Ctrl-C cutting ``monitor()`` or a last ``demonitor()``: nothing is left behind.

Holes found (``tests/_ctrl_c.py`` cuts at every real check point of all of
``foundation/liveness/``):

* A last ``demonitor()`` dropped its managed watch from the manager's table,
  then detached it: a cut at the detach left the pidfd open and registered
  (a foreign thread: polled) until the agent died or the manager closed, the
  next ``demonitor()`` no longer finding it. Now it is detached first and
  forgotten last; a cut part-way is finished by the next ``demonitor()`` of
  the monitor, or by the next ``monitor()`` of the agent (which must not
  reuse a half-detached watch: its monitors would never fire).
* ``monitor()`` cut once its monitor was inserted (in ``_settle``, at the
  start of ``claim``, as the manager lock is released) left it counted, and
  live in its watch, with no handle to release it: for good if the agent was
  dead already, else until it died. Now a cut ``monitor()`` takes it back.
* The first ``monitor()`` of a pending ``concurrent.futures.Future`` stored
  its watch on the future, then added its done-callback: a cut in between
  left a watch that never fires, which every later monitor joined.
* ``claim`` took a Ctrl-C right after its pops for a bookkeeping failure:
  reported ("exception ignored") and swallowed, ``monitor()`` returning.

Each scenario runs in a subprocess with the interpreter's default hooks
(``tests/faults/_subprocess.py``).
"""

from __future__ import annotations

from tests._ctrl_c import SCENARIO_AGENTS
from tests.faults._subprocess import run_scenario

_COMMON = (
    SCENARIO_AGENTS
    + """
import concurrent.futures, select
from foundation.liveness import MonitorManager, spawn_thread

WATCHED = ["foundation/liveness/"]

def attached(manager, mon):
    # The watch of mon is watched: polled (a thread) or its pidfd registered.
    watch = mon._watch
    if manager._watches.get(watch.key) is not watch:
        return False
    if isinstance(watch.agent, threading.Thread):
        return manager._polled_threads.get(watch.key) is watch
    if manager._by_fd.get(watch.fd) is not watch:
        return False
    try:
        manager._epoll.modify(watch.fd, select.EPOLLIN)  # ENOENT: not registered
    except FileNotFoundError:
        return False
    return True

"""
)

_LAST_DEMONITOR = """
made = {}

def sweep(what, agent, by_monitor):
    # The cut is finished by the next demonitor() of the monitor, or else by
    # the next monitor() of the agent (which must never reuse a half-detached
    # watch: it would not fire).
    what = f"{what}, finished by {'monitor' if by_monitor else 'demonitor'}()"
    last = MonitorManager(name="last")
    last.monitor(agent, lambda down: None).demonitor()  # its poller / epoll: kept
    def fresh():
        made["fds"] = fds()
        made["mon"] = last.monitor(agent, lambda down: None)  # a pidfd, or polled
    def check(n):
        assert lock_free(last._lock), f"{what}: lock left held at point {n}"
        if by_monitor:
            again = last.monitor(agent, lambda down: None)
            assert attached(last, again), f"{what}: cut at {n}, monitor() reused a detached watch"
            made["mon"].demonitor()
            again.demonitor()
        else:
            made["mon"].demonitor()  # again: finishes the cut one
        assert last.active_count() == 0, f"{what}: cut at point {n}: still counted"
        assert last.stats().watched_agents == 0, f"{what}: cut at point {n}: still watched"
        assert not last._polled_threads, f"{what}: cut at point {n}: the thread still polled"
        assert not last._by_fd, f"{what}: cut at point {n}: a pidfd kept"
        assert fds() == made["fds"], f"{what}: cut at point {n} left its pidfd: {fds()}"
    swept = interrupt_at_check_points(lambda n: made["mon"].demonitor(), WATCHED,
                                      after_each=check, before_each=fresh)
    print("SWEPT", what, swept > 0, flush=True)
    # Still watching: a monitor made now is told of the death.
    told = threading.Event()
    last.monitor(agent, lambda down: told.set())
    return last, told

swept = [sweep(what, agent, by_monitor)
         for what, agent in (("thread", foreign), ("process", process))
         for by_monitor in (False, True)]
end()
for manager, told in swept:
    assert told.wait(20), "a death untold after the sweeps"
    manager.close()
print("OK")
"""

_MONITOR = """
import collections
m = MonitorManager(name="monitor")
dead_spawned = spawn_thread(lambda: None)
dead_spawned.join()
dead_foreign = threading.Thread(target=lambda: None)
dead_foreign.start()
dead_foreign.join()
live_spawned = spawn_thread(stop.wait)
done = concurrent.futures.Future()
done.set_result(None)
for agent in (foreign, process, live_spawned, dead_spawned):
    m.monitor(agent, lambda down: None)  # its watch, its watcher threads exist
kept = m.active_count()
made = {}

def sweep(what, agent_of):
    told = collections.Counter()
    def fresh():
        made["agent"] = agent_of()
        made["fds"], made["watched"] = fds(), m.stats().watched_agents
        made["mon"] = None
    def call(n):
        made["mon"] = m.monitor(made["agent"], lambda down: told.update([n]))
    def check(n):
        assert lock_free(m._lock), f"{what}: lock left held at point {n}"
        assert told[n] <= 1, f"{what}: told {told[n]} times (cut at {n})"
        if made["mon"] is not None:
            made["mon"].demonitor()
        count = m.active_count()
        assert count == kept, f"{what}: monitor() cut at point {n}: {count - kept} counted"
        assert m.stats().watched_agents == made["watched"], f"{what}: watched (cut at {n})"
        assert fds() == made["fds"], f"{what}: monitor() cut at point {n}: fds {fds()}"
    swept = interrupt_at_check_points(call, WATCHED, after_each=check, before_each=fresh)
    print("SWEPT", what, swept > 0, flush=True)

sweep("dead spawn_thread", lambda: dead_spawned)
sweep("live spawn_thread", lambda: live_spawned)
sweep("dead thread", lambda: dead_foreign)
sweep("live thread", lambda: foreign)
sweep("live process", lambda: process)
sweep("done future", lambda: done)
sweep("pending future, first monitor", concurrent.futures.Future)

# A pending future's first monitor() cut: its next monitor is still told.
def next_told(n):
    told = []
    m.monitor(made["future"], told.append)
    made["future"].set_result(None)
    assert told, f"a future's first monitor() cut at point {n}: the next one never told"
    assert m.active_count() == kept, f"first monitor() cut at point {n}: counted"
swept = interrupt_at_check_points(
    lambda n: m.monitor(made["future"], lambda down: None), WATCHED,
    after_each=next_told, before_each=lambda: made.update(future=concurrent.futures.Future()))
print("SWEPT future told", swept > 0, flush=True)
m.close()
end()
print("OK")
"""


def test_a_cut_last_demonitor_leaves_no_watch_attached() -> None:
    result = run_scenario(_COMMON + _LAST_DEMONITOR)
    assert len(result.lines("SWEPT")) == 4
    assert [line for line in result.lines("SWEPT") if not line.endswith("True")] == []


def test_a_cut_monitor_leaves_nothing_counted() -> None:
    result = run_scenario(_COMMON + _MONITOR)
    assert len(result.lines("SWEPT")) == 8
    assert [line for line in result.lines("SWEPT") if not line.endswith("True")] == []
    # A Ctrl-C is never taken for a failure of the library's own bookkeeping.
    assert "KeyboardInterrupt" not in result.stderr, result.stderr
