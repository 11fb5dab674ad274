"""Outside pytest: a raising ``on_down`` of a future whose loop closed, and a
forked child closing an inherited registry, never kill a library thread.

The closed loop's futures are told on ``foundation-<name>-threads``: an
``on_down`` raising there (``SystemExit`` included) is logged, the other
monitors are still called and the poller lives on (a later foreign thread's
death is still seen). A child of ``multiprocessing`` (``fork``) that closes the
inherited registry leaves the parent's selector running.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario


def test_raising_on_down_of_a_closed_loops_future_leaves_the_poller_running() -> None:
    result = run_scenario(
        """
        import asyncio
        from foundation.liveness import MonitorManager
        manager = MonitorManager(name="loops", thread_poll_interval=0.01)
        loop = asyncio.new_event_loop()
        futs = [loop.create_future() for _ in range(2)]
        told = []
        def bad(down):
            raise SystemExit("on_down bug")
        for fut in futs:
            manager.monitor(fut, bad)
            manager.monitor(fut, lambda down: told.append(down.reason))
        loop.close()
        wait_for(lambda: len(told) == 2, "the closed loop's futures told")
        assert told == ["cancelled", "cancelled"], told
        assert "foundation-loops-threads" in library_threads()
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait, daemon=True)
        thread.start()
        ended = threading.Event()
        manager.monitor(thread, lambda down: ended.set())
        stop.set()
        wait_for(ended.is_set, "a foreign thread's death after the raise")
        manager.close()
        print("OK")
        """
    )
    assert "on_down bug" in result.stderr


def test_fork_child_closing_the_registry_leaves_the_parent_watching() -> None:
    run_scenario(
        """
        import multiprocessing, subprocess
        from foundation import MemoryRegistry
        reg = MemoryRegistry()
        def child():
            reg.unregister("A")
            reg.close()
        if __name__ == "__main__":
            a = subprocess.Popen(["sleep", "60"])
            b = subprocess.Popen(["sleep", "60"])
            reg.register("A", a)
            reg.register("B", b)
            proc = multiprocessing.get_context("fork").Process(target=child)
            proc.start()
            proc.join()
            assert proc.exitcode == 0, proc.exitcode
            a.kill(); b.kill(); a.wait(); b.wait()
            wait_for(lambda: reg.count() == 0, "the parent to see both deaths")
            assert "foundation-registry-pidfd" in library_threads()
            reg.close()
            print("OK")
        """
    )
