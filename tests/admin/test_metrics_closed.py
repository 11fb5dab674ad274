"""``GET /metrics`` once what the admin server serves was closed (the application
shutting down, the admin server still up): the other gauges stay, and a closed
part is "no samples", not a WARNING with a traceback on every scrape."""

from __future__ import annotations

import logging

import httpx
import pytest

from foundation.admin import AdminServer
from foundation.metrics import Metrics
from tests.admin.conftest import World


def _scrape(server: AdminServer) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        return c.get("metrics")


def _admin_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "foundation.admin"]


def test_a_closed_registry_has_no_samples_and_no_warning(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="foundation.admin")
    assert "foundation_admin_registry_entries{" in _scrape(world.server).text
    world.registry.close()
    caplog.clear()
    for _ in range(3):
        r = _scrape(world.server)
        assert r.status_code == 200
        assert "foundation_admin_registry_entries{" not in r.text
        assert 'foundation_admin_flag_enabled{flag="new_checkout"}' in r.text
    records = _admin_records(caplog)
    assert [r.levelno for r in records if r.levelno > logging.DEBUG] == []
    assert [r for r in records if r.exc_info] == []
    assert len(records) <= 3  # at most one line a scrape
    assert all("closed" in r.getMessage() for r in records)


def test_closed_flags_leave_every_other_gauge(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="foundation.admin")
    metrics = Metrics()
    metrics.install()
    try:
        with AdminServer(
            flags=world.flags,
            migration=world.migration,
            registry=world.registry,
            metrics=metrics,
            bind="127.0.0.1:0",
        ) as server:
            world.flags.close()
            caplog.clear()
            r = _scrape(server)
    finally:
        metrics.uninstall()
    assert r.status_code == 200, r.text
    assert "foundation_admin_flag_enabled{" not in r.text
    assert "foundation_admin_degraded " in r.text
    assert "foundation_admin_dead_agents " in r.text
    assert "# TYPE foundation_registry_entries gauge" in r.text  # foundation.metrics' too
    assert [r.levelno for r in _admin_records(caplog) if r.levelno > logging.DEBUG] == []
