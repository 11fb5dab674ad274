"""The process runs out of resources: file descriptors, threads, memory, processes.

Each scenario runs in a plain interpreter (see ``_subprocess``) and exhausts the
resource for real: ``RLIMIT_NOFILE`` with every free fd taken (EMFILE),
``RLIMIT_NPROC`` at 0 for a process whose real uid is not root and that lacks
``CAP_SYS_RESOURCE``/``CAP_SYS_ADMIN`` (thread creation and fork fail with
EAGAIN; root is exempt from the limit, so a root runner first makes its real uid
``nobody`` and drops those two capabilities), and ``RLIMIT_AS`` (a large
allocation raises ``MemoryError``). Expected: a typed ``foundation.errors``
error at the call, nothing half-stored, no library thread dead, and normal
service once the resource is back.
"""

from __future__ import annotations

import sys
from textwrap import dedent

import pytest

from tests.faults._subprocess import run_scenario
from tests.redis_support import running_redis

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux rlimits and pidfds")

# Real thread/process exhaustion: RLIMIT_NPROC binds only a non-root real uid
# without CAP_SYS_RESOURCE and CAP_SYS_ADMIN. The effective uid stays as it was
# (root keeps reading the interpreter's files); capget/capset through libc.
_NPROC = """
import ctypes, os, resource

def limit_processes_for_real():
    if os.getuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    os.setresuid(65534, 0, 0)  # real uid nobody: the one RLIMIT_NPROC counts
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (ctypes.c_uint32 * 6)()
    if libc.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for cap in (21, 24):  # CAP_SYS_ADMIN, CAP_SYS_RESOURCE
        data[0] &= ~(1 << cap)
        data[1] &= ~(1 << cap)
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")

limit_processes_for_real()
_SOFT, _HARD = resource.getrlimit(resource.RLIMIT_NPROC)

class no_threads:
    # RLIMIT_NPROC at 0: no thread or process can be created until exit.
    def __enter__(self):
        resource.setrlimit(resource.RLIMIT_NPROC, (0, _HARD))
    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_NPROC, (_SOFT, _HARD))

def fds():
    return len(os.listdir("/proc/self/fd")) - 1  # minus listdir's own
"""

_NOFILE = """
import errno, os, resource

_FSOFT, _FHARD = resource.getrlimit(resource.RLIMIT_NOFILE)

class no_fds:
    # Every fd the limit allows taken, but ``spare``: EMFILE past them.
    def __init__(self, spare=0):
        self.spare = spare
    def __enter__(self):
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 64, _FHARD))
        self.held = []
        try:
            while True:
                self.held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
        for _ in range(self.spare):
            os.close(self.held.pop())
    def __exit__(self, *exc):
        for fd in self.held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (_FSOFT, _FHARD))

def fds():
    return len(os.listdir("/proc/self/fd")) - 1
"""


def test_fds_exhausted_monitor_and_register_raise_typed_and_store_nothing() -> None:
    """EMFILE at pidfd_open, at /proc and at the first epoll: ``BackendUnavailable``
    (errno EMFILE), no entry, no monitor, no fd kept; then normal service."""
    run_scenario(
        _NOFILE
        + dedent(
            """
        import subprocess
        from foundation import MemoryRegistry
        from foundation.errors import BackendUnavailable
        from foundation.liveness import MonitorManager, OSProcess

        child = subprocess.Popen(["sleep", "60"])
        known = OSProcess(child.pid)
        manager = MonitorManager(name="fd")
        registry = MemoryRegistry()
        downs = []
        for spare in (0, 1):  # 1: the pidfd opens, the manager's epoll does not
            before = fds()
            with no_fds(spare):
                for call in (
                    lambda: manager.monitor(child, downs.append),
                    lambda: manager.monitor(known, downs.append),
                    lambda: registry.register("p", child),
                    # With one fd spare, /proc is readable: OSProcess is built.
                    *([lambda: OSProcess(child.pid)] if spare == 0 else []),
                ):
                    try:
                        call()
                    except BackendUnavailable as exc:
                        assert exc.errno == errno.EMFILE, exc
                    else:
                        raise AssertionError("no error under EMFILE")
            assert fds() == before, (fds(), before)
            assert manager.active_count() == 0 and manager.stats().open_fds == 0
            assert registry.lookup("p") is None and len(registry) == 0
            assert registry.stats().monitors == 0
        # Normal service once fds are back.
        manager.monitor(child, downs.append)
        registry.register("p", child)
        child.kill()
        wait_for(lambda: downs and registry.lookup("p") is None, "the death seen")
        assert downs[0].reason == "killed", downs
        assert library_threads(), "no watcher thread"
        manager.close()
        registry.close()
        print("OK")
        """
        )
    )


def test_threads_exhausted_raise_typed_and_start_nothing() -> None:
    """``can't start new thread`` (RLIMIT_NPROC): spawn_thread raises StartError,
    a monitor or register that needs a watcher thread BackendUnavailable (EAGAIN),
    run_in_thread StartError with its event loop closed; later calls succeed."""
    run_scenario(
        _NPROC
        + dedent(
            """
        import errno, subprocess
        from foundation import MemoryRegistry
        from foundation.errors import BackendUnavailable, StartError
        from foundation.liveness import MonitorManager, spawn_thread
        from foundation.supervision import ChildSpec, Supervisor

        gate = threading.Event()
        foreign = threading.Thread(target=gate.wait, name="foreign", daemon=True)
        foreign.start()
        child = subprocess.Popen(["sleep", "60"])
        manager = MonitorManager(name="nproc")
        registry = MemoryRegistry(manager=MonitorManager(name="reg"))

        def work(ctx):
            ctx.ready()
            ctx.stopping.wait()

        sup = Supervisor([ChildSpec("w", work, kind="thread")])
        threads, before = threading.active_count(), fds()
        with no_threads():
            try:
                spawn_thread(gate.wait)
            except StartError:
                pass
            else:
                raise AssertionError("spawn_thread started a thread")
            for call in (
                lambda: manager.monitor(foreign, print),
                lambda: manager.monitor(child, print),
                lambda: registry.register("t", foreign),
            ):
                try:
                    call()
                except BackendUnavailable as exc:
                    assert exc.errno == errno.EAGAIN, exc
                else:
                    raise AssertionError("no error without threads")
            try:
                sup.run_in_thread()
            except StartError:
                pass
            else:
                raise AssertionError("run_in_thread started")
        assert threading.active_count() == threads, threading.enumerate()
        assert fds() == before, (fds(), before)  # no epoll, no event loop left open
        assert manager.active_count() == 0 and manager.stats().open_fds == 0
        assert registry.lookup("t") is None and registry.stats().monitors == 0
        # Normal service once threads can start again.
        downs = []
        spawn_thread(gate.wait)
        manager.monitor(foreign, downs.append)
        manager.monitor(child, downs.append)
        registry.register("t", foreign)
        with sup.run_in_thread() as handle:
            assert handle.count_children().active == 1
        gate.set()
        child.kill()
        wait_for(lambda: len(downs) == 2 and registry.lookup("t") is None, "both deaths")
        manager.close()
        registry.close()
        print("OK")
        """
        )
    )


def test_stop_from_a_thread_child_without_threads_can_be_retried() -> None:
    """A thread child's ``handle.stop()`` needs a stopper thread: without one it
    raises ShutdownError, and a later stop() (threads back) still stops."""
    run_scenario(
        _NPROC
        + dedent(
            """
        from foundation.errors import ShutdownError
        from foundation.supervision import ChildSpec, Supervisor

        outcome = []
        box = {}

        def work(ctx):
            ctx.ready()
            box["go"].wait()
            with no_threads():
                try:
                    box["handle"].stop()
                except ShutdownError as exc:
                    outcome.append(exc)
            box["handle"].stop()  # threads are back: this one must stop it
            ctx.stopping.wait()

        box["go"] = threading.Event()
        handle = box["handle"] = Supervisor([ChildSpec("w", work, kind="thread")]).run_in_thread()
        box["go"].set()
        wait_for(lambda: handle.closed, "the supervisor stopped by its child")
        assert len(outcome) == 1, outcome
        print("OK")
        """
        )
    )


def test_memory_error_in_callbacks_is_logged_and_threads_survive() -> None:
    """A real MemoryError (RLIMIT_AS) in on_down callbacks on the pidfd selector and
    the threads poller, and in a registry listener: logged, threads carry on."""
    result = run_scenario(
        """
        import os, resource, subprocess
        from foundation import MemoryRegistry
        from foundation.liveness import MonitorManager

        def vm_bytes():
            with open("/proc/self/status") as f:
                line = next(x for x in f if x.startswith("VmSize:"))
            return int(line.split()[1]) * 1024

        def hog(*_):
            bytearray(1 << 30)  # 1 GiB past a limit with 256 MiB to spare

        manager = MonitorManager(name="mem")
        registry = MemoryRegistry(manager=manager)
        registry.subscribe(hog)
        heard = []  # after hog's turn (a courier runs the listeners in order)
        registry.subscribe(heard.append)
        seen = []
        gate = threading.Event()
        kids = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
        threads = [threading.Thread(target=gate.wait, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        for agent in (*kids, *threads):
            manager.monitor(agent, hog)
            manager.monitor(agent, seen.append)
        registry.register("p", kids[1])
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + (256 << 20), hard))
        kids[0].kill()
        gate.set()
        wait_for(lambda: len(seen) == 3, "deaths seen past a MemoryError")
        kids[1].kill()  # the selector still serves: a later death, and the listener
        wait_for(lambda: len(seen) == 4 and registry.lookup("p") is None, "the next death")
        # The listeners hear it on a courier, maybe later: hog must run under the limit.
        wait_for(lambda: any(e.kind == "unregistered" for e in heard), "the listeners' turn")
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        assert {"foundation-mem-pidfd", "foundation-mem-threads"} <= set(library_threads())
        registry.close()
        print("OK")
        """
    )
    assert result.stderr.count("MemoryError") >= 5, result.stderr


def test_fork_failures_count_as_start_failures() -> None:
    """fork (argv child) and thread start (thread child) failing with EAGAIN on a
    restart: each a start failure per OTP, up to the restart intensity; the
    supervisor ends with RestartIntensityExceeded, its thread not dead or spinning."""
    result = run_scenario(
        _NPROC
        + dedent(
            """
        from foundation.errors import RestartIntensityExceeded
        from foundation.supervision import ChildSpec, Supervisor

        gate = threading.Event()

        def work(ctx):
            ctx.ready()
            gate.wait()

        for spec in (ChildSpec("p", ["sleep", "60"]), ChildSpec("t", work, kind="thread")):
            handle = Supervisor([spec], max_restarts=3, max_seconds=30).run_in_thread()
            info = handle.which_children()[0]
            with no_threads():
                if spec.kind == "process":
                    info.handle.kill()
                else:
                    gate.set()
                wait_for(lambda: handle.supervisor.state != "running", "it gave up")
            try:
                handle.wait(timeout=20)
            except RestartIntensityExceeded as exc:
                print("GAVE_UP", spec.id, exc)
            handle.stop()
            gate.clear()
        print("OK")
        """
        )
    )
    assert len(result.lines("GAVE_UP")) == 2, result.stdout
    assert result.stderr.count("failed to start") == 6, result.stderr


def test_argv_child_whose_exit_cannot_be_watched_does_not_outlive_its_start() -> None:
    """After the fork, ``pidfd_open`` fails with EMFILE (other threads took the fds
    Popen freed): the start fails and the child is killed and reaped, not left
    running unsupervised. Stand-in: that window cannot be hit on purpose with
    real fds (Popen needs more fds at its peak than it keeps), so the scenario's
    ``os.pidfd_open`` raises the kernel's EMFILE once."""
    run_scenario(
        """
        import errno, os
        from foundation.errors import StartError
        from foundation.supervision import ChildSpec, Supervisor

        real_pidfd_open = os.pidfd_open
        refusals = []

        def pidfd_open(pid, flags=0):
            if not refusals:
                refusals.append(pid)
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return real_pidfd_open(pid, flags)

        os.pidfd_open = pidfd_open

        def running_children():
            found = []
            for entry in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        stat = f.read()
                except (FileNotFoundError, ProcessLookupError):
                    continue
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[1]) == os.getpid() and fields[0] not in "ZX":
                    found.append(int(entry))
            return found

        sup = Supervisor([ChildSpec("p", ["sleep", "60"])])
        try:
            sup.run_in_thread()
        except StartError as exc:
            assert "Too many open files" in repr(exc.__cause__), exc.__cause__
        else:
            raise AssertionError("the start did not fail")
        assert refusals and not os.path.exists(f"/proc/{refusals[0]}"), "child left behind"
        assert running_children() == [], running_children()
        with sup.run_in_thread() as handle:  # normal service afterwards
            assert handle.count_children().active == 1
        print("OK")
        """
    )


def test_flag_store_watcher_and_admin_server_without_threads_or_fds() -> None:
    """SQLiteFlagStore.subscribe without a thread for its watcher raises
    BackendUnavailable and keeps nothing (a later subscribe starts the watcher,
    close() works); AdminServer.start without a thread or an fd raises
    InvalidConfig and releases its socket; both then serve normally."""
    run_scenario(
        _NPROC
        + _NOFILE.replace("def fds():", "def _fds():")
        + dedent(
            """
            import tempfile
            from foundation import FeatureFlags, Flag, SQLiteFlagStore
            from foundation.admin import AdminServer
            from foundation.errors import BackendUnavailable, InvalidConfig

            path = os.path.join(tempfile.mkdtemp(), "flags.db")
            here = SQLiteFlagStore(path, poll_interval=0.01)
            there = FeatureFlags([Flag("beta")], store=SQLiteFlagStore(path, poll_interval=0.01))
            server = AdminServer(bind="127.0.0.1:0")
            delivered = []

            def sockets():
                return sum(
                    os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
                    for fd in os.listdir("/proc/self/fd")
                    if os.path.exists(f"/proc/self/fd/{fd}")
                )

            threads, before = threading.active_count(), sockets()
            for starve in (no_threads, no_fds):
                with starve():
                    if starve is no_threads:
                        try:
                            here.subscribe(delivered.extend)
                        except BackendUnavailable:
                            pass
                        else:
                            raise AssertionError("subscribed without a watcher")
                    try:
                        server.start()
                    except InvalidConfig:
                        pass
                    else:
                        raise AssertionError("the admin server started")
                assert sockets() == before, (sockets(), before)  # none left listening
                assert threading.active_count() == threads, threading.enumerate()
            here.subscribe(delivered.extend)
            there.enable("beta", by="bob")
            wait_for(lambda: [c.flag for c in delivered] == ["beta"], "the change delivered")
            with server.start():
                assert server.url
            there.close()
            here.close()
            print("OK")
            """
        )
    )


# Shared by the Redis scenarios: a probe connection (opened before any fd count)
# and Python's own thread start wrapped so that the process runs out of threads
# right after a thread of a given name started: the kernel then refuses the next
# one for real (RLIMIT_NPROC), which no plain limit can aim at a second thread.
_REDIS = """
import redis

probe = redis.Redis.from_url(URL)
probe.ping()
_real_start = threading.Thread.start

class threads_out_after:
    def __init__(self, prefix):
        self.prefix, self.starved = prefix, no_threads()
    def __enter__(self):
        outer = self
        def start(thread):
            _real_start(thread)
            if thread.name.startswith(outer.prefix):
                outer.starved.__enter__()
        threading.Thread.start = start
    def __exit__(self, *exc):
        threading.Thread.start = _real_start
        self.starved.__exit__()
"""


def test_redis_registry_without_threads_leaves_nothing_running_or_held() -> None:
    """RedisRegistry(...) that cannot start its tail thread, or its lease thread
    once the tail runs, and RedisObserver(...) without its thread:
    BackendUnavailable (EAGAIN), no thread left running, no connection open, no
    lease or wake stream left in Redis; then both start."""
    with running_redis() as server:
        run_scenario(
            f"URL = {server.url!r}\n"
            + _NPROC
            + _REDIS
            + dedent(
                """
                import errno, uuid
                from foundation import RedisRegistry, spawn_thread
                from foundation.errors import BackendUnavailable
                from foundation.registry._redis._observer import RedisObserver

                ns = "nproc-" + uuid.uuid4().hex[:8]

                def held_in_redis(node):
                    lease = probe.zscore("{" + ns + "}:leases", node)
                    return lease is not None or probe.exists("{" + ns + "}:wake:" + node)

                RedisRegistry(URL, namespace=ns, node="warm").close()  # imports, scripts
                wait_for(lambda: not library_threads(), "the warm-up's threads gone")
                threads, before = threading.active_count(), fds()
                tail_only = threads_out_after("foundation-redis-tail")  # the lease thread fails
                for node, starve in (("t", no_threads()), ("l", tail_only)):
                    with starve:
                        try:
                            RedisRegistry(URL, namespace=ns, node=node)
                        except BackendUnavailable as exc:
                            assert exc.errno == errno.EAGAIN, exc
                        else:
                            raise AssertionError("a registry without its threads")
                    assert threading.active_count() == threads, threading.enumerate()
                    assert fds() == before, (node, fds(), before)  # its connections closed
                    assert not held_in_redis(node), node
                with no_threads():  # the CLI's read-only observer: its one thread
                    try:
                        RedisObserver(URL, namespace=ns)
                    except BackendUnavailable as exc:
                        assert exc.errno == errno.EAGAIN, exc
                    else:
                        raise AssertionError("an observer without its thread")
                assert threading.active_count() == threads, threading.enumerate()
                assert fds() == before, ("observer", fds(), before)
                # Normal service once threads can start again.
                gate = threading.Event()
                a, b = (RedisRegistry(URL, namespace=ns, node=n) for n in "ab")
                with a, b:
                    a.register("w", spawn_thread(gate.wait))
                    b.wait_for_version(a.status().written)
                    assert b.lookup("w") is not None
                    with RedisObserver(URL, namespace=ns) as observer:
                        assert observer.count() == 1
                    gate.set()
                assert not held_in_redis("a") and not held_in_redis("b")
                print("OK")
                """
            )
        )


def test_redis_flag_store_and_auto_rollback_without_threads() -> None:
    """RedisFlagStore(...) without a thread for its listener: BackendUnavailable
    (EAGAIN), its connections and node copy closed, not counted live; AutoRollback
    without its thread: StartError, as spawn_thread. Both start once threads can."""
    with running_redis() as server:
        run_scenario(
            f"URL = {server.url!r}\n"
            + _NPROC
            + _REDIS
            + dedent(
                """
                import errno, tempfile, uuid
                from foundation.errors import BackendUnavailable, StartError
                from foundation.flags import (
                    DEFAULT_FLAGS, AutoRollback, FeatureFlags, Flag, HealthSample,
                    HealthThresholds, Migration, MigrationPlan, RedisFlagStore,
                )
                from foundation.flags._redis_store import copies_in_memory

                ns = "nproc-" + uuid.uuid4().hex[:8]
                copy = os.path.join(tempfile.mkdtemp(), "copy.db")
                RedisFlagStore(URL, namespace="warm", cache_path=False).close()  # imports
                flags = FeatureFlags(DEFAULT_FLAGS)
                migration = Migration(
                    flags, MigrationPlan.default(), health=lambda: HealthSample(error_rate=0.0),
                    thresholds=HealthThresholds(max_error_rate=0.05),
                )
                wait_for(lambda: not library_threads(), "the warm-up's threads gone")
                threads, before = threading.active_count(), fds()
                for cache_path in (copy, False):  # with a node copy (SQLite) and without
                    with no_threads():
                        try:
                            RedisFlagStore(URL, namespace=ns, cache_path=cache_path)
                        except BackendUnavailable as exc:
                            assert exc.errno == errno.EAGAIN, exc
                        else:
                            raise AssertionError("a flag store without its listener")
                    assert threading.active_count() == threads, threading.enumerate()
                    assert fds() == before, (cache_path, fds(), before)  # nothing left open
                    assert ns not in copies_in_memory(), "a store that never started is live"
                with no_threads():
                    try:
                        AutoRollback(migration, interval=0.01)
                    except StartError:
                        pass
                    else:
                        raise AssertionError("an AutoRollback without its thread")
                assert threading.active_count() == threads, threading.enumerate()
                # Normal service once threads can start again.
                store = RedisFlagStore(URL, namespace=ns, cache_path=copy)
                assert ns in copies_in_memory()
                beta = FeatureFlags([Flag("beta")], store=store)
                beta.enable("beta", by="bob")
                assert beta.enabled("beta")
                with AutoRollback(migration, interval=0.01) as watcher:
                    assert watcher.running
                beta.close()
                store.close()
                flags.close()
                print("OK")
                """
            )
        )
