"""The admin server tells the truth while Redis is down: ``/api/status``, ``/metrics``, writes.

The service (a ``RedisRegistry`` or a ``RedisObserver``, a ``RedisFlagStore``,
``FeatureFlags`` and an ``AdminServer``) runs in its own interpreter with the
default hooks; the test owns a real redis-server, kills it and starts it again
on the same port, and reads the service over HTTP. ``/healthz`` stays a
liveness probe throughout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.admin._world import ANA
from tests.admin.test_api import event_stream, next_event
from tests.faults._subprocess import run_scenario
from tests.redis_support import RedisServer

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 45.0

_SERVICE = """
import json, logging, sys, threading
logging.basicConfig(
    level=logging.WARNING, stream=sys.stderr,
    format="LOG %(levelname)s %(name)s [%(threadName)s] %(message)s",
)
from foundation import RedisRegistry, spawn_thread
from foundation.admin import AdminServer
from foundation.flags import (
    DEFAULT_FLAGS, FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore, Stage,
)
from foundation.metrics import Metrics
from foundation.registry._redis._observer import RedisObserver

url, kind, with_metrics = sys.argv[1], sys.argv[2], sys.argv[3] == "metrics"
stop = threading.Event()
registry = RedisRegistry(url, namespace="deg", op_timeout=1.0, lease_ttl=3.0)
registry.register("worker", spawn_thread(stop.wait, name="worker"), {"role": "io"})
store = RedisFlagStore(url, namespace="degf", timeout=1.0, cache_path=None)
flags = FeatureFlags([Flag("checkout"), Flag("search"), *DEFAULT_FLAGS], store=store)
flags.enable("checkout", by="setup")
migration = Migration(flags, MigrationPlan([Stage(1, "registry", ["use_ets_agent_registry"])]))
migration.advance(by="setup")
served = registry if kind == "registry" else RedisObserver(url, namespace="deg", timeout=1.0)
metrics = None
if with_metrics:
    metrics = Metrics()
    metrics.install()
    metrics.watch_registry(served, name="deg")
server = AdminServer(
    flags=flags,
    migration=migration,
    registry=served,
    metrics=metrics,
    bind="127.0.0.1:0",
    token="ana:ana-secret",
).start()
print(json.dumps({"url": server.url}), flush=True)
sys.stdin.read()  # until the test closes our stdin
server.close()
if metrics is not None:
    metrics.uninstall()
stop.set()
if served is not registry:
    served.close()
flags.close()
store.close()
registry.close()
left = [t.name for t in threading.enumerate() if t.name.startswith("foundation")]
print(json.dumps({"threads_left": left}))
print("OK", flush=True)
"""

# What a dead library thread, or the broken reporting shim, leaves in stderr.
DEATH_SIGNS = (
    "Exception in thread",
    "Exception ignored in",
    "--- Logging error ---",
    "Traceback",
)


class Service:
    """The admin service in its own interpreter (default hooks) over ``redis``."""

    def __init__(self, redis: RedisServer, kind: str, metrics: bool) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")) if p
        )
        code = textwrap.dedent(_SERVICE)
        args = [redis.url, kind, "metrics" if metrics else "plain"]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, self._drain()
        self.url: str = json.loads(line)["url"]
        self.http = httpx.Client(base_url=self.url, headers=ANA, timeout=20.0)

    def _drain(self) -> str:
        self.proc.kill()
        out, err = self.proc.communicate(timeout=30)
        return f"the service did not start\n--- stdout ---\n{out}\n--- stderr ---\n{err}"

    def get(self, path: str) -> Any:
        r = self.http.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def metrics(self) -> str:
        r = self.http.get("metrics")
        assert r.status_code == 200, r.text
        return r.text

    def wait_status(self, what: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Poll ``/api/status`` until ``ok(status)``, with a deadline."""
        deadline = time.monotonic() + DEADLINE
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.get("api/status")
            if ok(status):
                return status
            time.sleep(0.05)  # sleep-ok: polling with a deadline
        raise AssertionError(f"timed out waiting for {what}; last status: {status}")

    def finish(self) -> tuple[str, str]:
        """Close the service, assert it shut down cleanly; its stdout and stderr."""
        self.http.close()
        out, err = self.proc.communicate(input="", timeout=60)
        report = f"\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
        assert self.proc.returncode == 0, report
        assert "OK" in out.splitlines(), report
        for sign in DEATH_SIGNS:
            assert sign not in err, f"{sign!r} in the service's stderr{report}"
        left = json.loads(out.splitlines()[-2])["threads_left"]
        assert left == [], report
        return out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)
        self.http.close()


@pytest.fixture
def service_factory(fresh_redis: RedisServer) -> Iterator[Callable[[str, bool], Service]]:
    started: list[Service] = []

    def make(kind: str, metrics: bool) -> Service:
        service = Service(fresh_redis, kind, metrics)
        started.append(service)
        return service

    yield make
    for service in started:
        service.kill()


def gauge(text: str, name: str) -> float | None:
    """The value of one sample (``name`` with its labels) in a Prometheus text, else None."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return None if m is None else float(m.group(1))


def _down(status: dict[str, Any]) -> bool:
    return bool(
        status["registry"]["state"] == "disconnected" and status["flag_store"]["state"] == "stale"
    )


def _back(status: dict[str, Any]) -> bool:
    return not status["degraded"] and status["flag_store"]["pending"] == 0


@pytest.mark.parametrize(
    ("kind", "metrics"),
    [("registry", True), ("observer", False)],
    ids=["registry-with-metrics", "observer-without-metrics"],
)
def test_status_metrics_and_kill_switch_tell_the_truth_through_an_outage(
    fresh_redis: RedisServer,
    service_factory: Callable[[str, bool], Service],
    kind: str,
    metrics: bool,
) -> None:
    svc = service_factory(kind, metrics)
    up = svc.wait_status("the first states", lambda s: not s["degraded"])
    assert up["registry"]["state"] == "connected"
    assert up["registry"]["kind"] == ("RedisRegistry" if kind == "registry" else "RedisObserver")
    assert (up["flag_store"]["state"], up["flag_store"]["pending"]) == ("connected", 0)
    text = svc.metrics()
    assert gauge(text, "foundation_admin_registry_connected") == 1.0
    assert gauge(text, 'foundation_admin_registry_state{state="connected"}') == 1.0
    assert gauge(text, "foundation_admin_degraded") == 0.0
    assert gauge(text, "foundation_admin_flag_store_stale") == 0.0
    if metrics:
        assert gauge(text, 'foundation_registry_connected{registry="deg"}') == 1.0

    with event_stream(svc.url, ANA) as events:
        fresh_redis.kill()
        killed_at = time.time()
        # The page hears of it without asking: a status event with the new block.
        told = next_event(events, "status", lambda d: d["registry"]["state"] == "disconnected")
    assert told["degraded"] is True
    down = svc.wait_status("the outage", _down)
    assert down["degraded"] is True
    for part in ("registry", "flag_store"):
        block = down[part]
        assert block["degraded"] is True
        assert block["since"] is not None
        assert block["since"] >= up[part]["since"]
        assert block["since"] <= down["at"]
    assert down["registry"]["connected"] is False
    store_error = down["flag_store"]["last_error"]
    assert isinstance(store_error, str), store_error
    assert 0 < len(store_error) <= 300, store_error
    if kind == "registry":  # an observer does not report its last error
        registry_error = down["registry"]["last_error"]
        assert isinstance(registry_error, str)
        assert 0 < len(registry_error) <= 300
    # Liveness is not readiness: the service still works from its caches.
    assert svc.get("healthz") == {"ok": True}
    assert svc.get("api/whoami")["degraded"] is True
    text = svc.metrics()
    assert gauge(text, "foundation_admin_registry_connected") == 0.0
    assert gauge(text, 'foundation_admin_registry_state{state="disconnected"}') == 1.0
    assert gauge(text, 'foundation_admin_registry_state{state="connected"}') == 0.0
    assert gauge(text, "foundation_admin_flag_store_stale") == 1.0
    assert gauge(text, "foundation_admin_degraded") == 1.0
    if metrics:
        assert gauge(text, 'foundation_registry_connected{registry="deg"}') == 0.0
        assert gauge(text, 'foundation_registry_state{registry="deg",state="disconnected"}') == 1.0

    # The kill switch works locally and says it is pending; other writes fail fast.
    r = svc.http.post("api/flags/checkout/disable", json={"confirm": "checkout", "reason": "inc"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["switch"], answer["sync"]) == (False, "pending")
    assert answer["store"]["pending_flags"] == ["checkout"]
    assert answer["store"]["state"] == "stale"
    listed = svc.get("api/flags")
    assert listed["store"]["pending_flags"] == ["checkout"]
    assert svc.get("api/status")["flag_store"]["pending"] == 1
    assert gauge(svc.metrics(), "foundation_admin_flag_store_pending") == 1.0
    r = svc.http.post("api/flags/search/enable", json={"reason": "not now"})
    assert (r.status_code, r.json()["error"]) == (503, "BackendUnavailable")
    # An emergency rollback is a kill switch too: its answer says it is pending.
    r = svc.http.post("api/migration/emergency", json={"confirm": "1", "reason": "inc"})
    assert r.status_code == 200, r.text
    assert r.json()["stage"] == 0
    assert r.json()["store"]["pending_flags"] == ["checkout", "use_ets_agent_registry"]

    fresh_redis.start()  # the same port, empty
    back = svc.wait_status("the recovery", _back)
    assert back["registry"]["state"] == "connected"
    assert back["flag_store"]["state"] == "connected"
    assert back["registry"]["since"] >= killed_at
    assert svc.get("api/flags")["store"]["pending_flags"] == []
    assert svc.get("api/whoami")["degraded"] is False
    text = svc.metrics()
    assert gauge(text, "foundation_admin_registry_connected") == 1.0
    assert gauge(text, "foundation_admin_degraded") == 0.0
    assert gauge(text, "foundation_admin_flag_store_pending") == 0.0
    # Committed now: a write answers "committed", and the kill switch holds.
    r = svc.http.post("api/flags/search/enable", json={"reason": "back"})
    assert r.status_code == 200, r.text
    assert r.json()["sync"] == "committed"
    assert svc.get("api/flags/checkout")["switch"] is False
    assert svc.get("api/migration")["stage"] == 0
    _, err = svc.finish()
    assert "LOG WARNING" in err  # the outage was logged by the library, not hidden


def test_in_process_backends_report_local_and_never_degraded(world: Any) -> None:
    """A MemoryRegistry and a SQLite store have no connection: no state gauges, no banner."""
    with httpx.Client(base_url=world.url, headers=ANA, timeout=20.0) as c:
        status = c.get("api/status").json()
        assert status["degraded"] is False
        assert status["registry"]["state"] == "local"
        assert status["registry"]["since"] is None
        assert status["flag_store"]["state"] == "local"
        r = c.post("api/flags/dark_mode/disable", json={"confirm": "dark_mode"})
        assert r.status_code == 200, r.text
        assert r.json()["sync"] == "committed"
        assert c.get("api/flags").json()["store"]["pending_flags"] == []
        text = c.get("metrics").text
    assert gauge(text, "foundation_admin_degraded") == 0.0
    assert "foundation_admin_registry_connected" not in text
    assert "foundation_admin_flag_store_stale" not in text


_MIGRATING = """
from foundation import MemoryRegistry, RedisRegistry, spawn_thread
from foundation.flags import DEFAULT_FLAGS, FeatureFlags
from foundation.metrics import Metrics, connection_state
from foundation.registry import MigratingRegistry
from tests.redis_support import RedisServer

server = RedisServer()
server.start()
target = RedisRegistry(server.url, namespace="mig", op_timeout=1.0, lease_ttl=3.0)
flags = FeatureFlags(DEFAULT_FLAGS)
registry = MigratingRegistry(MemoryRegistry(), target, flags)
metrics = Metrics()
metrics.install()
metrics.watch_registry(registry, name="mig")
metrics.watch_registry(MemoryRegistry(), name="mem")

def gauges():
    return (
        metrics.value("foundation_registry_connected", registry="mig"),
        metrics.value("foundation_registry_state", registry="mig", state="disconnected"),
    )

assert connection_state(registry).state == "connected"
assert gauges() == (1.0, 0.0), gauges()
names = {s.labels["registry"] for s in metrics.samples()["foundation_registry_connected"]}
assert names == {"mig"}, names  # an in-process registry has no connection gauge
server.kill()
wait_for(lambda: connection_state(registry).state == "disconnected", "the target's outage")
report = connection_state(registry)
assert report.stale and not report.connected and "Redis at" in report.last_error, report
assert gauges() == (0.0, 1.0), gauges()
server.start()
wait_for(lambda: connection_state(registry).state == "connected", "the target's return")
assert gauges() == (1.0, 0.0), gauges()
metrics.uninstall()
registry.close()
target.close()
flags.close()
server.stop()
print("threads", library_threads())
print("OK")
"""


def test_a_migrating_registry_reports_its_redis_target_and_metrics_follow() -> None:
    result = run_scenario(_MIGRATING)
    assert result.lines("threads") == ["threads []"], result.stdout
