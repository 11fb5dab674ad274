"""What a node keeps of the commits its copy holds and Redis lost to a fork.

Redis goes back to an older snapshot (the namespace's keys put back as dumped,
as in ``test_history_replay_adversarial``: no restart, so no fault to run in a
subprocess), a process without a copy commits past the copy's version, then
the node with the copy starts on it: a lost kill switch is kept pending and
committed again, unless a later lost change of its flag in the copy overruled
it; every lost change is named in the WARNING (see docs/flags-outages.md,
"An old snapshot with a write in between").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from foundation.flags import FeatureFlags, Flag
from tests.redis_flags._support import raw_client
from tests.redis_flags.conftest import StoreFactory
from tests.redis_support import RedisServer

FLAGS = (Flag("checkout", default=True), Flag("beta"), Flag("promo"))
KEYS = ("meta", "state", "stages", "history", "migrations")


def _dump(raw: Any, namespace: str) -> dict[str, bytes | None]:
    return {f"{{{namespace}}}:flags:{k}": raw.dump(f"{{{namespace}}}:flags:{k}") for k in KEYS}


def _put_back(raw: Any, dumps: dict[str, bytes | None]) -> None:
    """The keys as dumped: Redis back from an older snapshot (same epoch)."""
    for key, blob in dumps.items():
        raw.delete(key)
        if blob is not None:
            raw.restore(key, 0, blob)


@pytest.mark.parametrize("reenabled", [False, True], ids=["kept", "overruled-in-the-copy"])
def test_a_copy_keeps_its_lost_kill_switch_past_a_longer_fork(
    redis_server: RedisServer,
    open_store: StoreFactory,
    namespace: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    reenabled: bool,
) -> None:
    raw = raw_client(redis_server.url)
    copy = tmp_path / "a.sqlite3"
    a = open_store(redis_server.url, cache_path=copy)
    with FeatureFlags(FLAGS, store=a) as flags:
        flags.enable("beta", by="op")
        old = _dump(raw, namespace)  # version 1
        flags.disable("checkout", by="oncall", reason="incident")
        if reenabled:
            flags.enable("checkout", by="oncall", reason="fixed")
    a.close()
    _put_back(raw, old)
    c = open_store(redis_server.url, cache_path=None)
    with FeatureFlags(FLAGS, store=c) as other:
        for p in (10.0, 20.0, 30.0):  # versions 2', 3', 4': past the copy's
            other.set_percentage("promo", p, by="laptop")
    with caplog.at_level(logging.WARNING, logger="foundation.flags"):
        a = open_store(redis_server.url, cache_path=copy)  # its first sync finds the fork
    warned = [r.getMessage() for r in caplog.records if "last commits" in r.getMessage()]
    assert len(warned) == 1, warned
    with FeatureFlags(FLAGS, store=a) as flags:
        assert a.pending() == []  # committed (or not kept) by its first sync
        assert flags.enabled("checkout") is reenabled
        assert flags.enabled("beta")
        assert flags.store.load_states()["promo"].percentage == 30.0  # the fork's writes kept
        history = [(ch.flag, ch.by, ch.reason) for ch in flags.history("checkout")]
    if reenabled:
        assert history == [], history  # both lost: the later decision was "on"
        assert "0 kill switch(es)" in warned[0], warned
        assert "checkout by oncall (incident), checkout by oncall (fixed)" in warned[0], warned
        assert a.status().restores == 0
    else:
        assert history == [("checkout", "oncall", "incident")], history
        assert "1 kill switch(es)" in warned[0], warned
        assert "oncall (incident) on checkout" in warned[0], warned
        assert a.status().restores == 1


def test_a_copy_trimmed_past_without_a_fork_keeps_nothing(
    redis_server: RedisServer,
    open_store: StoreFactory,
    namespace: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No fork: the node was away while others re-enabled its flag and made more
    commits than ``history_limit`` (Redis trimmed past the copy's tail). Its kill
    switch, before Redis' cut, is told from a fork's by Redis' last word per flag:
    a later change there, with no change of the copy found lost, keeps nothing."""
    copy = tmp_path / "a.sqlite3"
    a = open_store(redis_server.url, cache_path=copy, history_limit=5)
    with FeatureFlags(FLAGS, store=a) as flags:
        flags.enable("beta", by="op")
        flags.disable("checkout", by="oncall", reason="incident")
    a.close()
    c = open_store(redis_server.url, cache_path=None, history_limit=5)
    with FeatureFlags(FLAGS, store=c) as other:
        other.enable("checkout", by="oncall", reason="fixed")
        for p in range(12):
            other.set_percentage("promo", float(p + 1), by="laptop")
    assert raw_client(redis_server.url).hget(f"{{{namespace}}}:flags:meta", "trimmed")
    with caplog.at_level(logging.INFO, logger="foundation.flags"):
        a = open_store(redis_server.url, cache_path=copy, history_limit=5)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "last commits" in m], messages
    assert [m for m in messages if "no change of this copy found lost" in m], messages
    with FeatureFlags(FLAGS, store=a) as flags:
        assert a.pending() == []
        assert a.status().restores == 0
        assert flags.enabled("checkout")
        assert flags.enabled("beta")
