"""OTP's ``kernel/test/application_SUITE.erl``, ported case by case.

Each test is named after the OTP case it ports; ``docs/otp-parity.md``
("application_SUITE") maps every case of the suite, including those covered
elsewhere and those that do not apply (distribution, ``.app`` files, boot
scripts, code loading). An OTP *application* is here the one
:class:`~foundation.Application` tree; its services are the applications it
depends on, started in order (``ensure_all_started``) and stopped in reverse.

Children that crash run in a plain interpreter (``tests/faults/_subprocess.py``):
the default hooks, and no thread may die. Nothing waits on a sleep.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from foundation import Application
from foundation.application import AppConfig
from foundation.errors import InvalidConfig, StartError, UnknownFlag
from foundation.registry import MemoryRegistry, MigratingRegistry
from foundation.supervision import ChildContext, ChildSpec
from tests._logs import Records, captured
from tests.faults._subprocess import run_scenario
from tests.supervision._support import wait_until

DEADLINE = 60.0  # seconds: a scenario still running by then has hung


def _worker(ctx: ChildContext) -> None:
    ctx.ready()
    ctx.stopping.wait()


async def _refuse(ctx: ChildContext) -> None:
    raise ValueError("no database")


@pytest.fixture
def app_log() -> Iterator[Records]:
    """The ``foundation.application`` records, from any thread."""
    with captured("foundation.application") as kept:
        yield kept


def _new_threads(baseline: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in baseline and t.is_alive()]


# ------------------------------------------------------------------ starting


def test_ensure_started() -> None:
    # ensure_started twice is ok; ``with app:`` on a running application is
    # that (no second tree, no already_started error). A stopped application
    # starts again, every service afresh.
    app = Application.start(AppConfig(), services=("flags", "monitors"))
    try:
        run = app.supervisor.task
        assert app.__enter__() is app
        assert app.supervisor.task is run
        assert [c.status for c in app.which_children()] == ["running", "running"]
    finally:
        app.stop()
    app.stop()  # idempotent (OTP: a second stop is {error, {not_started, App}})
    with app:
        flags = app.flags
        assert flags is not None
        assert [c.status for c in app.which_children()] == ["running", "running"]
    assert app.flags is None
    # This run's stop order, not both runs' (was the list of every run).
    assert app.stopped_order == ["monitors", "flags"]


def test_ensure_all_started() -> None:
    # Every service the workers depend on is started first, in order, each
    # ready before the next; the workers find all of them running.
    seen: dict[str, bool] = {}

    def worker(ctx: ChildContext) -> None:
        seen.update(
            flags=app.flags is not None,
            monitors=app.monitors is not None,
            registry=app.registry is not None,
            migration=app.migration is not None,
        )
        ctx.ready()
        ctx.stopping.wait()

    app = Application(AppConfig(), workers=[ChildSpec("w", worker)])
    with app:
        assert [c.id for c in app.which_children()] == [
            "flags",
            "monitors",
            "registry",
            "migration_monitor",
            "workers",
        ]
    assert seen == {"flags": True, "monitors": True, "registry": True, "migration": True}

    # A failure deep in the chain: nothing of it is left running (OTP: neither
    # app9 nor app10 runs after app_chain_error failed to start).
    baseline = set(threading.enumerate())
    failing = Application(
        AppConfig(),
        services=("flags", "monitors", "registry"),
        workers=[ChildSpec("ok", _worker), ChildSpec("db", _refuse)],
    )
    with pytest.raises(StartError):
        failing.__enter__()
    assert failing.stopped_order == ["registry", "monitors", "flags"]
    assert (failing.flags, failing.monitors, failing.registry) == (None, None, None)
    wait_until(lambda: not _new_threads(baseline))

    # A dependency left out is refused before anything starts, and named
    # (OTP: {error, {not_started, app9}}); was a StartError of a started tree.
    with pytest.raises(InvalidConfig, match="migration_monitor service needs the flags service"):
        Application(AppConfig(), services=("monitors", "migration_monitor"))


def test_optional_applications() -> None:
    # A service left out is optional to those after it: they start without
    # it, degraded; present, it is used.
    spec = ChildSpec("w", _worker)
    with Application.start(AppConfig(), services=("monitors", "registry"), workers=[spec]) as app:
        registry = app.registry
        assert type(registry) is MemoryRegistry  # no flags: no migration facade
        wait_until(lambda: registry.lookup("w") is not None)
    with Application.start(AppConfig(), services=(), workers=[spec]) as app:
        assert app.registry is None  # the workers run unregistered
        assert [(c.id, c.status) for c in app.which_children()] == [("workers", "running")]
    with Application.start(AppConfig(), services=("flags", "monitors", "registry")) as app:
        assert isinstance(app.registry, MigratingRegistry)

    # Present but failing to start, it fails the whole start (OTP: an optional
    # dependency with a start error fails ensure_all_started).
    baseline = set(threading.enumerate())
    broken = Application(
        AppConfig(flags={"no_such_flag": True}), services=("flags", "registry"), workers=[spec]
    )
    with pytest.raises(StartError) as caught:
        broken.__enter__()
    assert isinstance(caught.value.__cause__, UnknownFlag)
    assert broken.registry is None
    wait_until(lambda: not _new_threads(baseline))


def test_start_phases(app_log: Records) -> None:
    # OTP's start phases run after the tree is up; here each service's
    # readiness (ctx.ready) gates the next, and the application is started
    # once the last one is ready.
    with Application.start(AppConfig(), services=("flags", "monitors", "registry")):
        pass
    assert app_log.events()[:5] == [
        "app_starting",
        "service_started",
        "service_started",
        "service_started",
        "app_started",
    ]
    services = [getattr(r, "service", None) for r in app_log[1:4]]
    assert services == ["flags", "monitors", "registry"]


def _enter_at_once(app: Application, starters: int) -> list[object]:
    """``app.__enter__()`` from ``starters`` threads released together: each one's result."""
    barrier = threading.Barrier(starters)
    results: list[object] = []

    def start() -> None:
        barrier.wait()
        try:
            results.append(app.__enter__())
        except BaseException as exc:  # the result is asserted by the caller
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("starters", [2, 4], ids=["otp_2973", "otp_5606-local"])
def test_otp_2973(app_log: Records, starters: int) -> None:
    # Threads starting the same application at once: all get it started, one
    # tree (was: the second raised SupervisorError "is starting" and logged a
    # failed start).
    app = Application(AppConfig(), services=("flags", "monitors"))
    try:
        assert _enter_at_once(app, starters) == [app] * starters
        assert [c.status for c in app.which_children()] == ["running", "running"]
    finally:
        app.stop()
    assert app_log.events().count("app_starting") == 1
    assert "app_start_failed" not in app_log.events()

    # The same application failing to start: every starter gets the error.
    refusing = Application(AppConfig(), services=(), workers=[ChildSpec("db", _refuse)])
    errors = _enter_at_once(refusing, starters)
    assert [type(e) for e in errors] == [StartError] * starters
    assert all(e.child == "workers" for e in errors if isinstance(e, StartError))


# ------------------------------------------------------------------ keys and config


def test_get_key() -> None:
    config = AppConfig(indexed=("role",))
    app = Application(config, services=("flags", "registry"), workers=[ChildSpec("w", _worker)])
    assert app.name == "foundation"
    assert app.config is config
    assert app.services == frozenset({"flags", "registry"})
    assert app.supervisor.name == app.name
    assert app.supervisor.strategy == "rest_for_one"
    with app:
        assert [(c.id, c.kind, c.restart, c.status) for c in app.which_children()] == [
            ("flags", "thread", "permanent", "running"),
            ("registry", "thread", "permanent", "running"),
            ("workers", "supervisor", "permanent", "running"),
        ]
    named = Application(AppConfig(), services=(), name="shop")
    assert (named.name, named.supervisor.name) == ("shop", "shop")


def test_get_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The config reaches the services; the environment overrides the file
    # (OTP: the command line over sys.config over the .app file's env); an
    # undeclared name is an error, not undefined.
    config = AppConfig.from_mapping(
        {"flags": {"use_ets_agent_registry": True, "enable_migration_monitoring": False}}
    )
    monkeypatch.setenv("FOUNDATION_FLAG_ENABLE_MIGRATION_MONITORING", "on")
    with Application.start(config, services=("flags",)) as app:
        flags = app.flags
        assert flags is not None
        assert flags.enabled("use_ets_agent_registry") is True
        assert flags.enabled("enable_migration_monitoring") is True
        with pytest.raises(UnknownFlag):
            flags.enabled("error_logger_xyz")


def test_set_env() -> None:
    # No environment to change under a running application: its config is a
    # snapshot (was: AppConfig kept the caller's dict, so a later change to
    # it changed the config, and app.config.flags could be written).
    given = {"use_ets_agent_registry": True}
    config = AppConfig(flags=given)
    given["use_ets_agent_registry"] = False
    with Application.start(config, services=("flags",)) as app:
        assert app.flags is not None
        assert app.flags.enabled("use_ets_agent_registry") is True
        with pytest.raises(TypeError):
            app.config.flags["use_ets_agent_registry"] = False  # type: ignore[index]
        with pytest.raises(dataclasses.FrozenInstanceError):
            app.config.namespace = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"registry_backend": "etcd"}, "registry.backend must be memory or redis: 'etcd'"),
        ({"registry_backend": "redis"}, "needs registry.redis_url"),
        ({"flag_store": "sqlite"}, "needs flag_store.path"),
        ({"flag_store": "zookeeper"}, "flag_store.kind must be memory, sqlite or redis"),
        ({"indexed": "role"}, "indexed must be a list of names, not 'role'"),
        ({"indexed": ("role", 1)}, "indexed must be a list of names"),
        ({"flags": ["use_ets_agent_registry"]}, "flags must be a mapping"),
        ({"flags": {1: True}}, "flags must be a mapping"),
        ({"lease_ttl": "5"}, "lease_ttl must be a number, not '5'"),
        ({"health_interval": True}, "health_interval must be a number"),
        ({"max_error_rate": "high"}, "max_error_rate must be a number or None"),
        ({"namespace": None}, "namespace must be a str"),
        ({"redis_url": 6379}, "redis_url must be a str or None"),
        ({"flag_store_history_limit": 0}, "history_limit must be an int of at least 1"),
    ],
)
def test_set_env_errors(options: dict[str, Any], message: str) -> None:
    # Bad values are refused when the config is made, each named (was:
    # accepted; "etcd" quietly ran a MemoryRegistry, "sqlite" without a path
    # wrote flags.sqlite3 in the working directory).
    with pytest.raises(InvalidConfig, match="invalid AppConfig: .*" + re.escape(message)):
        AppConfig(**options)


def test_set_env_errors_lists_every_problem_at_once() -> None:
    with pytest.raises(InvalidConfig) as caught:
        AppConfig(registry_backend="etcd", lease_ttl="5", indexed="role")  # type: ignore[arg-type]
    text = str(caught.value)
    assert "registry.backend" in text
    assert "lease_ttl" in text
    assert "indexed" in text


# ------------------------------------------------------------------ stopping


def test_prep_stop() -> None:
    # Not an OTP case name: prep_stop/stop. The workers stop first, while
    # every service still runs (a worker's shutdown can still use the
    # registry and the flags); the services then stop in reverse order.
    during_stop: dict[str, object] = {}

    def worker(ctx: ChildContext) -> None:
        ctx.ready()
        ctx.stopping.wait()
        registry, flags = app.registry, app.flags
        during_stop["registry"] = registry is not None and registry.lookup("w") is not None
        during_stop["flags"] = flags is not None and flags.enabled("use_ets_agent_registry")
        during_stop["stopped so far"] = list(app.stopped_order)

    app = Application(
        AppConfig(flags={"use_ets_agent_registry": True}), workers=[ChildSpec("w", worker)]
    )
    with app:
        registry = app.registry
        assert registry is not None
        wait_until(lambda: registry.lookup("w") is not None)
    assert during_stop == {"registry": True, "flags": True, "stopped so far": []}
    assert app.stopped_order == ["migration_monitor", "registry", "monitors", "flags"]


def test_otp_2718() -> None:
    # A start that fails: an error, and the application is not running.
    app = Application(AppConfig(), services=("flags",), workers=[ChildSpec("db", _refuse)])
    with pytest.raises(StartError):
        app.__enter__()
    assert [(c.id, c.status) for c in app.which_children()] == [
        ("flags", "stopped"),
        ("workers", "stopped"),
    ]

    # An application that exits abnormally once started takes the node down
    # (OTP: {badrpc, nodedown}): wait_for_signal() stops the tree and raises
    # its failure, so the program ends. Was: wait_for_signal() waited for a
    # signal for ever, over a dead tree.
    result = run_scenario(
        """
        from foundation import Application
        from foundation.errors import RestartIntensityExceeded
        from foundation.supervision import ChildSpec

        def crash(ctx):
            ctx.ready()
            raise RuntimeError("boom")

        app = Application.start(services=("flags", "registry"),
                                workers=[ChildSpec("c", crash)])
        try:
            app.wait_for_signal()
        except RestartIntensityExceeded as exc:
            print("RAISED", exc.__class__.__name__, flush=True)
        assert app.stopped_order == ["registry", "flags"], app.stopped_order
        wait_for(lambda: library_threads() == [], "every library thread to end")
        print("OK")
        """,
        timeout=DEADLINE,
    )
    assert result.lines("RAISED") == ["RAISED RestartIntensityExceeded"]
    assert "Application foundation failed:" in result.stderr
    assert "Application foundation stopped (after failing)" in result.stderr


def test_otp_16504() -> None:
    # The application's stop work runs when its tree dies under it (OTP: the
    # application master killed, stop/1 still called): every service is
    # stopped and closed in reverse order, wait() raises why, and a stop()
    # afterwards completes. Was: no wait() to learn it from another thread.
    result = run_scenario(
        """
        from foundation import Application
        from foundation.errors import RestartIntensityExceeded
        from foundation.supervision import ChildSpec

        def crash(ctx):
            ctx.ready()
            raise RuntimeError("boom")

        app = Application.start(services=("flags", "monitors", "registry"),
                                workers=[ChildSpec("c", crash)])
        try:
            app.wait(timeout=30)
        except RestartIntensityExceeded:
            print("RAISED", flush=True)
        assert app.stopped_order == ["registry", "monitors", "flags"], app.stopped_order
        assert (app.flags, app.monitors, app.registry) == (None, None, None)
        try:
            app.wait(timeout=0)            # still: it gave up
        except RestartIntensityExceeded:
            print("RAISED AGAIN", flush=True)
        app.stop()
        app.stop()
        wait_for(lambda: library_threads() == [], "every library thread to end")
        print("OK")
        """,
        timeout=DEADLINE,
    )
    assert result.lines("RAISED") == ["RAISED", "RAISED AGAIN"]
    assert result.stderr.count("Application foundation failed:") == 1


def test_wait_for_signal_ends_when_a_worker_stops_the_application() -> None:
    # Not an OTP case name: application:stop from inside the application.
    # The main thread waiting for a signal learns of it (returns 0) instead of
    # waiting for ever over a stopped tree.
    result = run_scenario(
        """
        from foundation import Application
        from foundation.supervision import ChildSpec

        box = {}

        def quitter(ctx):
            ctx.ready()
            wait_for(lambda: "app" in box, "the app")
            box["app"].stop()
            ctx.stopping.wait()

        app = Application.start(services=("flags",), workers=[ChildSpec("q", quitter)])
        box["app"] = app
        print("RETURNED", app.wait_for_signal(), flush=True)
        app.wait()                       # stopped, not failed: returns
        assert app.stopped_order == ["flags"], app.stopped_order
        print("OK")
        """,
        timeout=DEADLINE,
    )
    assert result.lines("RETURNED") == ["RETURNED 0"]
    assert "Application foundation stopped" in result.stderr


@pytest.mark.parametrize("when", ["before_ready", "after_ready"])
def test_a_stop_asked_while_the_tree_starts_is_not_lost(when: str) -> None:
    # Not an OTP case name: application:stop from inside the application, at
    # once. Was: stop() found no running tree (its start had not returned yet)
    # and did nothing: the application ran on and wait() never returned. And
    # wait() returned as the stop began (the tree's task ends then), its
    # services still stopping: a program ending there cut their stop short.
    box: dict[str, Application] = {}

    def stopper(ctx: ChildContext) -> None:
        if when == "after_ready":  # the usual race: the start returns meanwhile
            ctx.ready()
        box["app"].stop()  # returns at once
        if when == "before_ready":  # the start is still waiting for this child
            ctx.ready()
        ctx.stopping.wait()

    app = Application(services=("flags",), workers=[ChildSpec("s", stopper)])
    box["app"] = app
    with app:
        app.wait(timeout=DEADLINE)  # stopped, not failed: returns
        assert app.stopped_order == ["flags"], app.stopped_order
        assert (app.flags, app.monitors, app.registry) == (None, None, None)
    assert app.supervisor.failure is None


def test_with_app_waits_for_a_stop_under_way_then_starts_anew() -> None:
    # Not an OTP case name: a start while a worker's stop is still stopping
    # the tree. Was: SupervisorError "supervisor 'foundation' is stopping" (or
    # "is running"): the same supervisor started before it had stopped.
    box: dict[str, Any] = {}
    asked = threading.Event()
    runs: list[int] = []

    def worker(ctx: ChildContext) -> None:
        runs.append(ctx.attempt)
        ctx.ready()
        if len(runs) == 1:
            wait_until(lambda: "running" in box, DEADLINE)
            box["app"].stop()  # in the background: returns at once
            asked.set()
        ctx.stopping.wait()
        time.sleep(0.3)  # sleep-ok: a slow stop, the window a second start must wait out

    app = Application(services=("flags",), workers=[ChildSpec("w", worker)])
    box["app"] = app
    with app:
        box["running"] = True
        assert asked.wait(DEADLINE)
        with app:  # another part of the program making sure it runs
            assert app.supervisor.state == "running"
            assert len(runs) == 2, runs  # a new run, its worker started anew
        assert app.stopped_order == ["flags"], app.stopped_order
