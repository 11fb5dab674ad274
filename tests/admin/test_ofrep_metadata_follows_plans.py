"""OFREP's plan metadata follows a plan recorded while the admin server runs,
over every flag store, with no outage and no restart: the plan recorded (by
another store object on the same backend, or through the admin's own flags)
and advanced, the served flags change, and the admin re-reads the plans off the
request path (a bounded rate).

Real ``AdminServer`` on a free loopback port, real HTTP, a real redis-server
(the tests' session server, a namespace of its own), a real SQLite file.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest

from foundation.admin import AdminServer
from foundation.flags import (
    FeatureFlags,
    MemoryFlagStore,
    Migration,
    MigrationPlan,
    RedisFlagStore,
)
from tests import _plans_follow
from tests._plans_follow import DECLARED, PLAN, WANT, StoreMaker
from tests._plans_follow import wait_for as _wait_for
from tests.redis_support import RedisServer

make_store = _plans_follow.make_store  # the fixture: store objects on each backend


@contextmanager
def _admin(flags: FeatureFlags) -> Iterator[Callable[[], Any]]:
    with (
        AdminServer(flags=flags, bind="127.0.0.1:0") as admin,
        httpx.Client(base_url=admin.url, timeout=30) as http,
    ):

        def metadata() -> Any:
            reply = http.post("ofrep/v1/evaluate/flags/f_a", json={})
            assert reply.status_code == 200, reply.text
            return reply.json()["metadata"]

        yield metadata


@pytest.mark.parametrize("recorder", ["another-store", "own-flags"])
def test_a_plan_recorded_and_advanced_while_the_admin_runs_is_described(
    make_store: StoreMaker, recorder: str
) -> None:
    with ExitStack() as stack:
        flags = FeatureFlags(DECLARED, store=make_store())
        stack.callback(flags.close)
        metadata = stack.enter_context(_admin(flags))
        assert metadata() == {"description": "in plan a"}
        if recorder == "another-store":
            other = FeatureFlags(DECLARED, store=make_store())
            stack.callback(other.close)
        else:
            other = flags
        Migration(other, PLAN).advance(by="test", reason="recorded after the admin started")
        _wait_for(lambda: metadata() == WANT, "plan a's metadata over OFREP")
    # Closed (the server, then the flags): no re-read worker left behind.
    _wait_for(lambda: not _named("foundation-admin-plans"), "no plan refresher thread")


def _named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_a_store_is_told_only_by_events_naming_its_namespace_and_url(
    redis_server: RedisServer,
) -> None:
    from foundation.flags._plans import is_about

    store = RedisFlagStore(redis_server.url, namespace="about-ns")
    try:
        url = repr(store).split("'")[1]  # the URL as the store shows it (redacted)
        assert is_about(store, {"namespace": "about-ns", "url": url})
        # The same namespace on another Redis is another store.
        assert not is_about(store, {"namespace": "about-ns", "url": "redis://127.0.0.1:1/0"})
        assert not is_about(store, {"namespace": "other-ns", "url": url})
    finally:
        store.close()


class _Refused(threading.Thread):
    """A thread whose start fails as at the process's thread limit."""

    def start(self) -> None:
        raise RuntimeError("can't start new thread")


def test_the_refresher_outlives_a_failing_hand_on_and_refused_thread_starts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from foundation.flags import _plans

    handed: list[dict[str, MigrationPlan]] = []

    def on_plans(plans: dict[str, MigrationPlan]) -> None:
        handed.append(plans)
        if len(handed) == 1:
            raise ValueError("a bug where the plans are handed on")

    store = MemoryFlagStore()
    refresher = _plans.PlanRefresher(
        store, on_plans, logger=logging.getLogger("test.plans"), name="test-plans", interval=0.0
    )
    try:
        refresher.attach()
        refresher.ready(failed=False)
        refresher.changed()
        _wait_for(lambda: len(handed) == 1, "the first (failing) hand-on")
        _wait_for(lambda: not _named("test-plans"), "the worker done")
        refresher.changed()  # not jammed by the failure: read and handed on again
        _wait_for(lambda: len(handed) == 2, "a second hand-on")
        _wait_for(lambda: not _named("test-plans"), "the worker done again")
        refused = SimpleNamespace(Thread=_Refused, current_thread=threading.current_thread)
        with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, "test.plans"):
            patch.setattr(_plans, "threading", refused)
            for _ in range(3):
                refresher.changed()  # neither raises nor leaves a thread behind
        starts = [r for r in caplog.records if "no worker thread" in r.getMessage()]
        assert len(starts) == 1, starts  # one WARNING per run of refused starts
        refresher.changed()  # threads again: the changes left are read
        _wait_for(lambda: len(handed) == 3, "a hand-on once threads start again")
    finally:
        refresher.close()
        store.close()
    assert len(handed) == 3, handed
