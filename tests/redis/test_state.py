"""The pieces of RedisRegistry that need no server: the state machine, script arguments."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time

import pytest
import redis

from foundation.registry._redis import _scripts
from foundation.registry._redis._state import Link, LinkState

# ------------------------------------------------------------------ Link


def _link() -> tuple[Link, list[str]]:
    woken: list[str] = []
    link = Link("n1", namespace="shop", wake=lambda: woken.append("wake"))
    return link, woken


def test_a_new_link_is_recovering_until_its_first_recovery_completes() -> None:
    link, _ = _link()
    assert link.state is LinkState.RECOVERING
    assert link.needs_recovery()
    assert link.recovered(link.epoch, "started") is True
    assert link.state is LinkState.CONNECTED
    assert not link.needs_recovery()
    assert link.reachable


@pytest.mark.parametrize(
    ("exc", "state"),
    [
        (redis.exceptions.ReadOnlyError("read only replica"), "degraded"),
        (redis.exceptions.OutOfMemoryError("command not allowed"), "degraded"),
        (redis.exceptions.BusyLoadingError("Redis is loading"), "degraded"),
        (redis.exceptions.ResponseError("BUSY Redis is busy running a script"), "degraded"),
        (redis.exceptions.ConnectionError("Connection refused"), "disconnected"),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), "disconnected"),
        (redis.exceptions.InvalidResponse("Protocol Error"), "disconnected"),
    ],
)
def test_a_failure_moves_to_degraded_or_disconnected_and_wakes_the_lease_thread(
    exc: BaseException, state: str
) -> None:
    link, woken = _link()
    link.recovered(link.epoch, "started")
    link.failed(exc, "the message")
    assert link.state.value == state
    assert link.last_error == "the message"
    assert not link.reachable
    assert woken == ["wake"]
    link.failed(exc, "again")  # no new transition: no second wake
    assert woken == ["wake"]
    assert link.last_error == "again"


def test_a_recovery_during_which_a_fault_was_reported_does_not_end_in_connected() -> None:
    link, _ = _link()
    link.recovered(link.epoch, "started")
    link.resync_needed("a gap")
    epoch = link.epoch
    link.failed(redis.exceptions.ConnectionError("reset"), "reset")  # meanwhile
    assert link.recovered(epoch, "done") is False
    assert link.state is LinkState.DISCONNECTED
    assert link.recovered(link.epoch, "done again") is True
    assert link.state is LinkState.CONNECTED


def test_weaker_reasons_do_not_hide_a_stronger_state() -> None:
    link, _ = _link()
    link.recovered(link.epoch, "started")
    link.failed(redis.exceptions.ReadOnlyError("ro"), "ro")
    link.resync_needed("unknown outcome")
    link.lease_lost("lease gone")
    assert link.state is LinkState.DEGRADED  # the recovery re-asserts and resyncs anyway
    link.recovered(link.epoch, "back")
    link.lease_lost("lease gone")
    assert link.state is LinkState.LEASE_LOST
    link.resync_needed("gap")
    assert link.state is LinkState.LEASE_LOST


def test_closed_is_terminal() -> None:
    link, _ = _link()
    link.close()
    link.failed(redis.exceptions.ConnectionError("x"), "x")
    link.resync_needed("x")
    assert link.recovered(link.epoch, "x") is False
    assert link.state is LinkState.CLOSED
    assert link.wait_connected(0.01) is False


def test_wait_connected_returns_when_a_recovery_completes() -> None:
    link, _ = _link()
    done = threading.Event()
    got: list[bool] = []

    def waiter() -> None:
        got.append(link.wait_connected(30))
        done.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    link.recovered(link.epoch, "started")
    assert done.wait(10)
    thread.join(5)
    assert got == [True]


def test_every_transition_is_logged_under_foundation_registry_redis(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="foundation.registry.redis")
    link, _ = _link()
    link.recovered(link.epoch, "started")
    link.failed(redis.exceptions.ReadOnlyError("ro"), "READONLY ...")
    link.recovered(link.epoch, "back")
    link.close()
    records = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    where = "node n1 (namespace 'shop')"
    stale = "reads answer from this node's mirror (stale); writes raise BackendUnavailable"
    assert [(name, level) for name, level, _ in records] == [
        ("foundation.registry.redis", "INFO"),
        ("foundation.registry.redis", "WARNING"),
        ("foundation.registry.redis", "INFO"),
        ("foundation.registry.redis", "INFO"),
    ]
    messages = [m for _, _, m in records]
    assert messages[0] == (
        f"{where}: recovering -> connected: started; "
        "the mirror is current; reads and writes are normal"
    )
    assert messages[1] == (
        f"{where}: connected -> degraded: READONLY ...; {stale}; retrying with backoff"
    )
    # The recovery says how long the outage lasted.
    assert re.fullmatch(
        re.escape(f"{where}: degraded -> connected: back; the mirror is current;")
        + r" reads and writes are normal \(after \d+\.\d s\)",
        messages[2],
    ), messages[2]
    assert messages[3] == f"{where}: connected -> closed: closed; no more calls"
    fields = caplog.records[2]
    assert getattr(fields, "namespace", None) == "shop"
    assert getattr(fields, "outage_seconds", -1.0) >= 0
    assert link.state_since <= time.time()


# ------------------------------------------------------------------ script arguments


@pytest.mark.parametrize(
    ("source", "args"),
    [
        (_scripts.REGISTER, _scripts.RegisterArgs),
        (_scripts.UPDATE, _scripts.UpdateArgs),
        (_scripts.UNREGISTER, _scripts.UnregisterArgs),
        (_scripts.HEARTBEAT, _scripts.HeartbeatArgs),
        (_scripts.RELEASE, _scripts.ReleaseArgs),
        (_scripts.SNAPSHOT, _scripts.SnapshotArgs),
    ],
)
def test_each_scripts_argv_is_named_by_its_dataclass_in_order(source: str, args: type) -> None:
    """The Lua comment ``-- ARGV (XArgs): a, b, ...`` lists the dataclass fields in order."""
    match = re.search(rf"-- ARGV \({args.__name__}\): ([^.\n]*(?:\n--   [^.\n]*)*)", source)
    assert match is not None, f"{args.__name__} is not named in the script"
    listed = re.sub(r"\([^)]*\)|\n--", " ", match.group(1))
    names = [n.strip() for n in listed.split(",") if n.strip()]
    fields = [f.name for f in dataclasses.fields(args)]
    assert names == fields
    sample = args(**{f: _sample(f) for f in fields})
    assert len(sample.argv()) == len(fields)


def _sample(field: str) -> object:
    return {"own_dead": True, "mode": "a", "meta": b"{}"}.get(
        field, 1 if field.endswith("_ms") else "x"
    )
