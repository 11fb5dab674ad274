"""The application tree: order, optional services, signals, config, no leaks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from foundation import Application, spawn_thread
from foundation.application import AppConfig
from foundation.errors import InvalidConfig, UnknownFlag
from foundation.registry import MemoryRegistry, MigratingRegistry
from foundation.supervision import ChildContext, ChildSpec
from tests.redis_support import RedisServer


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_services_start_in_order_and_stop_in_reverse() -> None:
    with Application.start(AppConfig()) as app:
        ids = [c.id for c in app.which_children()]
        assert ids == ["flags", "monitors", "registry", "migration_monitor"]
        assert isinstance(app.registry, MigratingRegistry)
        assert app.migration is not None
        assert app.migration.status().stage == 0
    assert app.stopped_order == ["migration_monitor", "registry", "monitors", "flags"]
    assert app.registry is None
    assert app.flags is None


def test_optional_services_can_be_left_out() -> None:
    with Application.start(AppConfig(), services=("monitors", "registry")) as app:
        assert [c.id for c in app.which_children()] == ["monitors", "registry"]
        assert isinstance(app.registry, MemoryRegistry)  # no flags: no migration facade
        assert app.flags is None
        assert app.migration is None
    assert app.stopped_order == ["registry", "monitors"]


def test_unknown_service_is_refused() -> None:
    with pytest.raises(InvalidConfig, match="unknown services"):
        Application(AppConfig(), services=("flags", "registy"))


def test_migration_advance_switches_the_application_registry() -> None:
    release = threading.Event()
    with Application.start(AppConfig()) as app:
        assert app.registry is not None
        assert app.migration is not None
        assert app.flags is not None
        app.registry.register("agent", spawn_thread(release.wait), {"role": "x"})
        app.migration.advance(by="test")
        assert app.flags.enabled("use_ets_agent_registry")
        entry = app.registry.lookup("agent")
        assert entry is not None
        assert entry.metadata["role"] == "x"
        release.set()


def test_no_threads_or_fds_leak_after_stop() -> None:
    baseline_threads = set(threading.enumerate())
    baseline_fds = _fd_count()
    for _ in range(3):
        with Application.start(AppConfig()):
            pass

    def leftover() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in baseline_threads and t.is_alive()]

    # A stopped thread child's function has returned; its thread ends right
    # after, once the death listeners that run on it (spawn_thread tells its
    # monitors from the dying thread) and its thread-locals' destructors are
    # done. The stop does not wait for that (it would wait for user listeners,
    # which may themselves wait for the supervisor): wait for it here.
    try:
        _wait_for(lambda: not leftover())
    except AssertionError:
        raise AssertionError(f"threads left after the stop: {leftover()}") from None
    assert _fd_count() == baseline_fds


def test_async_application_starts_and_stops_in_order() -> None:
    async def main() -> list[str]:
        async with Application(AppConfig()) as app:
            assert app.registry is not None
        return app.stopped_order

    assert asyncio.run(main()) == ["migration_monitor", "registry", "monitors", "flags"]


def test_supervised_workers_are_registered_and_re_registered_after_a_crash() -> None:
    crash = threading.Event()

    def worker(ctx: ChildContext) -> None:
        ctx.ready()
        while not ctx.stopping.wait(0.01):
            if crash.is_set():
                crash.clear()
                raise RuntimeError("boom")

    config = AppConfig(flags={"use_ets_agent_registry": True})
    with Application.start(config, workers=[ChildSpec("worker", worker)]) as app:
        registry = app.registry
        assert registry is not None
        first = _wait_for(lambda: registry.lookup("worker"))
        crash.set()
        second = _wait_for(
            lambda: (
                (e := registry.lookup("worker")) is not None and e.agent is not first.agent and e
            )
        )
        assert second.agent.is_alive()


def test_config_file_is_discovered_and_flags_loaded(tmp_path: Path) -> None:
    (tmp_path / "foundation.toml").write_text(
        textwrap.dedent(
            """
            [registry]
            indexed = ["role"]

            [flags]
            use_ets_agent_registry = true
            """
        )
    )
    config = AppConfig.discover(tmp_path)
    assert config.indexed == ("role",)
    with Application.start(config, services=("flags",)) as app:
        assert app.flags is not None
        assert app.flags.enabled("use_ets_agent_registry")


def test_pyproject_tool_foundation_table_is_read(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.foundation.registry]\nindexed = ["node"]\n'
    )
    assert AppConfig.discover(tmp_path).indexed == ("node",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[registry\n", "malformed TOML in config"),
        (b"[registry]\nnode = '\xff'\n", "is not UTF-8 text"),
        ("[a]\n" + "x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("[registry]\nindexed = 'role'\n", "registry.indexed must be a list"),
        ("[registry]\nbackend = 'etcd'\n", "registry.backend must be memory or redis"),
        ("[flag_store]\nkind = 'sqlite'\n", "needs flag_store.path"),
        ("[surprise]\n", "unknown section"),
        ("[registry]\nlease_ttl = 'long'\n", "wrong type"),
    ],
)
def test_broken_config_files_raise_invalid_config(
    tmp_path: Path, text: str | bytes, message: str
) -> None:
    path = tmp_path / "foundation.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(InvalidConfig, match=message):
        AppConfig.from_file(path)


def test_a_config_that_is_not_a_regular_file_is_refused_unread(tmp_path: Path) -> None:
    fifo = tmp_path / "foundation.toml"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer, for ever
    with pytest.raises(InvalidConfig, match="not a regular file"):
        AppConfig.from_file(fifo)
    with pytest.raises(InvalidConfig, match="not a regular file"):
        AppConfig.from_file("/dev/zero")  # endless: never read
    with pytest.raises(InvalidConfig, match="does not exist"):
        AppConfig.from_file(tmp_path / "missing.toml")


def test_a_config_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    from foundation._toml_files import MAX_CONFIG_BYTES

    path = tmp_path / "foundation.toml"
    path.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(InvalidConfig, match="larger than"):
        AppConfig.from_file(path)


def test_unknown_flag_in_config_fails_the_start_with_the_flag_named() -> None:
    app = Application(AppConfig(flags={"use_ets_agent_registy": True}), services=("flags",))
    with pytest.raises(Exception) as caught:
        app.__enter__()
    app.stop()
    chain = [caught.value, caught.value.__cause__]
    assert any(isinstance(e, UnknownFlag) for e in chain), chain


def test_sigterm_shuts_the_application_down_in_order() -> None:
    script = textwrap.dedent(
        """
        import sys
        from foundation import Application
        from foundation.application import AppConfig
        app = Application.start(AppConfig())
        received = app.wait_for_signal(on_installed=lambda: print("ready", flush=True))
        print("signal", received, flush=True)
        print("order", ",".join(app.stopped_order), flush=True)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    assert f"signal {int(signal.SIGTERM)}" in out
    assert "order migration_monitor,registry,monitors,flags" in out


def test_the_demo_runs_and_every_invariant_holds() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "foundation._demo", "--agents", "20", "--seconds", "1", "--plain"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "lost registrations: 0" in result.stdout
    assert "invariants held" in result.stdout


def _wait_for(predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)  # sleep-ok: polling with a deadline
    raise AssertionError("condition not met in time")


def test_the_demo_runs_two_nodes_on_redis(redis_server: RedisServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "foundation._demo", "--agents", "10", "--seconds", "1", "--plain",
         "--redis", redis_server.url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "every write on node A is visible on node B" in result.stdout
    assert "invariants held" in result.stdout
