"""A pending kill switch against a TRIMMED history: the decision never depends on the trim.

Node A reaches Redis through a proxy (``_proxy.CutProxy``) that cuts it off alone;
node B, connected directly, keeps committing meanwhile, past ``history_limit``, so
the stream entries A's kill switch must be checked against are trimmed away before
A reconnects. A newer change (or migration step) B made must still win, and an
older one must still let the kill switch commit -- exactly as with nothing trimmed
(each trim keeps, per flag and per plan, its latest trimmed change/event: the
``{ns}:flags:history:last`` / ``{ns}:flags:migrations:last`` hashes).

Each scenario runs in a plain interpreter (``python -m
tests.redis_flags.test_kill_switch_retention SCENARIO WORKDIR``), as those of
``_outages.py``: default ``sys.unraisablehook`` and ``threading.excepthook``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagState,
    Migration,
    MigrationPlan,
    RedisFlagStore,
    Stage,
)
from tests.redis_flags._outages import NS, Seen, alive, must, server, store
from tests.redis_flags._proxy import CutProxy
from tests.redis_flags._support import REPO, raw_client

FLAGS = (Flag("beta"), Flag("gamma"), Flag("delta"))
LIMIT = 5
PLAN = MigrationPlan([Stage(1, "one", ["beta"])], name="plan")
OTHER = MigrationPlan([Stage(1, "other", ["delta"])], name="other")
TAG = "{" + NS + "}"


@dataclass
class Nodes:
    """Node A behind ``proxy``, node B connected directly; ``url``: Redis itself."""

    a: RedisFlagStore
    b: RedisFlagStore
    proxy: CutProxy
    url: str
    restart_empty: Callable[[], None]

    def cut_off_a(self) -> None:
        self.proxy.cut()
        must(lambda: self.a.stale, "node A cut off (stale)")

    def reconnect_a(self) -> None:
        self.proxy.restore()
        must(lambda: self.a.synced and not self.a.pending(), "node A back, its kill switch decided")


@contextmanager
def two_nodes(work: Path) -> Iterator[Nodes]:
    """A fresh redis-server and two nodes with ``history_limit`` LIMIT (closed after)."""
    with server() as srv:
        proxy = CutProxy(srv.port)
        try:
            sa = store(proxy.url, work / "a.sqlite3", history_limit=LIMIT)
            sb = store(srv.url, work / "b.sqlite3", history_limit=LIMIT)

            def restart_empty() -> None:
                srv.kill()
                srv.start()

            try:
                yield Nodes(sa, sb, proxy, srv.url, restart_empty)
            finally:
                sa.close()
                sb.close()
        finally:
            proxy.close()


@contextmanager
def beta_on_then_a_cut_off(
    work: Path, reason: str
) -> Iterator[tuple[Nodes, FeatureFlags, FeatureFlags]]:
    """Two nodes and their flag services: B enables beta (``reason``), A sees it, then
    A is cut off from Redis (B still reaches it). Yields (nodes, a, b)."""
    with two_nodes(work) as n:
        a, b = FeatureFlags(FLAGS, store=n.a), FeatureFlags(FLAGS, store=n.b)
        b.enable("beta", by="ana", reason=reason)
        must(lambda: a.enabled("beta"), "a sees beta on")
        n.cut_off_a()
        yield n, a, b


def alive_then_closed(n: Nodes, a: FeatureFlags, b: FeatureFlags) -> None:
    """Both stores' threads are alive at the end of a scenario; then both services close."""
    alive(n.a, n.b)
    a.close()
    b.close()


def stream(url: str, key: str, field: str) -> list[dict[str, object]]:
    raw = raw_client(url)
    try:
        return [json.loads(f[field.encode()]) for _, f in raw.xrange(f"{TAG}:flags:{key}")]
    finally:
        raw.close()


def churn_flags(b: FeatureFlags, n: int = 3 * LIMIT) -> None:
    """Commits to another flag, enough for B's trims to drop every earlier entry."""
    for i in range(n):
        b.allow("gamma", f"user{i}", by="bot")


def churn_plans(b: FeatureFlags, n: int = 2 * LIMIT) -> None:
    """Steps of another plan, enough to trim every earlier migration event."""
    other = Migration(b, OTHER)
    for i in range(n):
        other.advance(by="bot", reason=f"up {i}")
        other.rollback_to(0, by="bot", reason=f"down {i}")


def decided(seen: Seen, superseded: bool) -> None:
    lost, committed = seen.named("pending_superseded"), seen.named("pending_committed")
    if superseded:
        assert len(lost) == 1, lost
        assert not committed, committed
        assert seen.logged(logging.WARNING, "SUPERSEDED"), "a WARNING says so"
    else:
        assert len(committed) == 1, committed
        assert not lost, lost
        assert committed[0]["already"] is False


# ---------------------------------------------------------------- scenarios


def newer_change_trimmed(work: Path, seen: Seen) -> None:
    """B's newer change to beta is trimmed away before A reconnects: it still wins."""
    with beta_on_then_a_cut_off(work, "launch") as (n, a, b):
        sa = n.a
        a.disable("beta", by="oncall", reason="incident")
        assert not a.enabled("beta"), "applied locally at once"
        assert sa.status().pending_flags == ("beta",)
        b.set_percentage("beta", 40, by="lead", reason="false alarm, resume at 40%")  # newer
        churn_flags(b)
        assert all(e["flag"] == "gamma" for e in stream(n.url, "history", "change")), "trimmed"
        n.reconnect_a()
        decided(seen, superseded=True)
        lost = seen.named("pending_superseded")[0]
        assert [(c.flag, c.by) for c in lost["superseded_by"]] == [("beta", "lead")], lost
        assert b.state("beta") == FlagState(True, 40.0)
        must(lambda: a.state("beta") == FlagState(True, 40.0), "a serves B's newer decision")
        assert [c.by for c in a.history() if c.flag == "beta"] == [], "no kill switch record"
        alive_then_closed(n, a, b)


def older_changes_trimmed(work: Path, seen: Seen) -> None:
    """B's changes to beta are all older than A's kill switch (and trimmed): it commits."""
    with beta_on_then_a_cut_off(work, "launch") as (n, a, b):
        b.set_percentage("beta", 40, by="lead", reason="older than the kill switch")
        a.disable("beta", by="oncall", reason="incident")  # newer: A never saw B's change
        churn_flags(b)
        n.reconnect_a()
        decided(seen, superseded=False)
        must(lambda: b.state("beta") == FlagState(False, 40.0), "b sees the kill switch")
        must(lambda: a.state("beta") == FlagState(False, 40.0), "a reloaded Redis' state")
        last = [c for c in b.history() if c.flag == "beta"]
        assert [(c.by, c.new.switch) for c in last] == [("oncall", False)], last
        alive_then_closed(n, a, b)


def newer_step_trimmed(work: Path, seen: Seen) -> None:
    """B's newer migration step (an event only: its flag was already on) is trimmed from
    the migrations stream before A reconnects: it beats A's emergency rollback."""
    with beta_on_then_a_cut_off(work, "on before the plan") as (n, a, b):
        sa, sb = n.a, n.b
        Migration(a, PLAN).emergency_rollback("incident", by="oncall")
        assert not a.enabled("beta")
        Migration(b, PLAN).advance(by="lead", reason="resume")  # newer; beta was on: event only
        assert [c.by for c in sb.history() if c.flag == "beta"] == ["ana"]
        churn_plans(b)
        assert all(e["plan"] == "other" for e in stream(n.url, "migrations", "event")), "trimmed"
        n.reconnect_a()
        decided(seen, superseded=True)
        lost = seen.named("pending_superseded")[0]
        assert [(e.plan, e.action, e.by) for e in lost["superseded_by"]] == [
            ("plan", "advance", "lead")
        ], lost
        assert sb.migration_stage("plan") == 1
        assert b.enabled("beta")
        must(lambda: a.enabled("beta") and sa.migration_stage("plan") == 1, "a follows B")
        alive_then_closed(n, a, b)


def older_steps_trimmed(work: Path, seen: Seen) -> None:
    """B's migration step is older than A's emergency rollback (and trimmed): it commits."""
    with beta_on_then_a_cut_off(work, "on before the plan") as (n, a, b):
        sb = n.b
        Migration(b, PLAN).advance(by="lead", reason="older than the rollback")
        Migration(a, PLAN).emergency_rollback("incident", by="oncall")
        churn_plans(b)
        n.reconnect_a()
        decided(seen, superseded=False)
        must(lambda: not b.enabled("beta"), "b sees the rollback")
        assert sb.migration_stage("plan") == 0
        events = sb.migration_history("plan")
        assert [(e.action, e.from_stage, e.to_stage) for e in events][-1:] == [
            ("emergency_rollback", 1, 0)
        ], events
        alive_then_closed(n, a, b)


def trimmed_then_restored(work: Path, seen: Seen) -> None:
    """As ``newer_change_trimmed`` and ``newer_step_trimmed`` together, with Redis
    restarted EMPTY before A reconnects: B's node copy mirrors what the trims kept
    and its restore puts it back, so B's newer decisions still win."""
    with beta_on_then_a_cut_off(work, "launch") as (n, a, b):
        sa, sb = n.a, n.b
        a.disable("beta", by="oncall", reason="incident")
        Migration(a, PLAN).emergency_rollback("incident", by="oncall")
        b.set_percentage("beta", 40, by="lead", reason="false alarm")
        Migration(b, PLAN).advance(by="lead", reason="resume")
        churn_flags(b)
        churn_plans(b)
        want = _lasts_in_redis(n.url)
        assert set(want[0]) >= {"beta", "gamma"}, want
        assert set(want[1]) == {"plan", "other"}, want
        must(lambda: _lasts_in_copy(work / "b.sqlite3") == want, "b's copy mirrors them")
        n.restart_empty()
        must(lambda: sb.synced and len(seen.named("restored")) == 1, "b restored Redis")
        assert _lasts_in_redis(n.url) == want, "the restore put them back"
        n.reconnect_a()
        lost = seen.named("pending_superseded")
        assert len(lost) == 2, lost
        assert not seen.named("pending_committed")
        must(lambda: a.state("beta") == FlagState(True, 40.0), "a serves B's decisions")
        assert sa.migration_stage("plan") == 1
        alive_then_closed(n, a, b)


def replayed_after_its_own_trim(work: Path, seen: Seen) -> None:
    """Node A crashed between committing its kill switches and dropping their records,
    and its own entries were trimmed before it came back: they are found committed
    ("already") in what the trims kept, and nothing is written twice."""
    with beta_on_then_a_cut_off(work, "launch") as (n, a, b):
        sa, sb = n.a, n.b
        a.disable("beta", by="oncall", reason="incident")
        Migration(a, PLAN).emergency_rollback("incident", by="oncall")
        rows = _pending_rows(work / "a.sqlite3")
        assert len(rows) == 2, rows
        n.reconnect_a()
        assert len(seen.named("pending_committed")) == 2
        a.close()
        sa.close()
        churn_flags(b)
        churn_plans(b)
        assert all(e["flag"] != "beta" for e in stream(n.url, "history", "change"))
        assert all(e["plan"] == "other" for e in stream(n.url, "migrations", "event"))
        db = sqlite3.connect(work / "a.sqlite3")  # the crash: the records are still there
        with db:
            db.executemany("INSERT INTO pending (id, op) VALUES (?, ?)", rows)
        db.close()
        version = sb.status().version
        sa2 = store(n.proxy.url, work / "a.sqlite3", history_limit=LIMIT)
        try:
            must(lambda: sa2.synced and not sa2.pending(), "replayed")
            committed = seen.named("pending_committed")[2:]
            assert [c["already"] for c in committed] == [True, True], committed
            assert not seen.named("pending_superseded")
            assert sa2.status().version == version, "nothing written twice"
            assert [e.action for e in sb.migration_history("plan")] == [], "all trimmed"
            assert sb.migration_stage("plan") == 0
            assert not b.enabled("beta")
            alive(sa2, sb)
        finally:
            sa2.close()
        b.close()


def _pending_rows(path: Path) -> list[tuple[int, str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT id, op FROM pending ORDER BY id").fetchall()
    finally:
        db.close()


def _lasts_in_redis(url: str) -> tuple[dict[str, str], dict[str, str]]:
    raw = raw_client(url)
    try:
        return tuple(  # type: ignore[return-value]
            {k.decode(): v.decode() for k, v in raw.hgetall(f"{TAG}:flags:{key}:last").items()}
            for key in ("history", "migrations")
        )
    finally:
        raw.close()


def _lasts_in_copy(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    db = sqlite3.connect(path)
    try:
        return (
            dict(db.execute("SELECT name, record FROM history_last")),
            dict(db.execute("SELECT plan, event FROM migrations_last")),
        )
    finally:
        db.close()


SCENARIOS: dict[str, Callable[[Path, Seen], None]] = {
    f.__name__: f
    for f in (newer_change_trimmed, older_changes_trimmed, newer_step_trimmed,
              older_steps_trimmed, trimmed_then_restored, replayed_after_its_own_trim)
}  # fmt: skip


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_pending_kill_switch_is_decided_as_if_nothing_was_trimmed(
    scenario: str, tmp_path: Path
) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src")]))
    out = subprocess.run(
        [sys.executable, "-m", "tests.redis_flags.test_kill_switch_retention",
         scenario, str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert f"OK {scenario}" in out.stdout, out.stdout
    assert "Exception in thread" not in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr


def main(name: str, work: str) -> None:
    seen = Seen()
    SCENARIOS[name](Path(work), seen)
    assert not seen.errors(), f"errors logged: {seen.errors()}"
    assert not seen.logged(logging.WARNING, "not trimmed"), "every trim went through"
    print(f"OK {name}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
