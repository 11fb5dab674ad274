"""A bulk read of the flags shows one committed state, even when a migration step
lands in the middle of it.

A migration step switches every flag of its stage in one store transaction, and
``FeatureFlags`` publishes each change as whole tables. OFREP's bulk evaluation
(``POST /ofrep/v1/evaluate/flags``) and the admin's flag list (``GET
/api/flags``) read every flag: flag by flag from the newest tables, a step
landing mid-read showed the first flags before it and the last after it (half
a stage on: a state never committed), under a valid ETag. They now read every
flag from one snapshot (``FeatureFlags._snapshot``).

Real ``AdminServer`` on a free loopback port, real HTTP, a real ``Migration``.
The deterministic tests make the step land mid-read with a profile hook on the
server's threads: when the read reaches the middle flag's declaration
(``FeatureFlags.flag``, read for every flag), the hook makes the step there,
synchronously (the same write another thread or process could make at that
moment). The looping test races a real writer thread instead.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from foundation.admin import AdminServer
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, Stage

STAGED = [f"stage_{i:03}" for i in range(60)]  # one stage switches all of them
MIDDLE = STAGED[len(STAGED) // 2]
DECLARED = [Flag("first", description="not in the plan"), *map(Flag, STAGED), Flag("last")]
PLAN = MigrationPlan([Stage(1, "all", STAGED)], name="bulk")
BULK = "ofrep/v1/evaluate/flags"
CONTEXT = {"context": {"targetingKey": "u1"}}
_FLAG_CODE = FeatureFlags.flag.__code__


@dataclass
class Served:
    flags: FeatureFlags
    migration: Migration
    http: httpx.Client
    # Set: the next read of MIDDLE's declaration on a server thread calls it (once).
    step_at_middle: list[Callable[[], object]] = field(default_factory=list)
    stepped: threading.Event = field(default_factory=threading.Event)

    def bulk(self, etag: str | None = None) -> httpx.Response:
        headers = {} if etag is None else {"If-None-Match": etag}
        return self.http.post(BULK, json=CONTEXT, headers=headers)


@contextmanager
def _served() -> Iterator[Served]:
    flags = FeatureFlags(DECLARED)
    migration = Migration(flags, PLAN)
    served: Served | None = None

    def hook(frame: Any, event: str, arg: object) -> None:
        # Cheap tests first: this runs for every call on the server's threads.
        if event != "call" or frame.f_code is not _FLAG_CODE or served is None:
            return
        if served.step_at_middle and frame.f_locals.get("name") == MIDDLE:
            step = served.step_at_middle.pop()
            step()  # profiling is off inside the hook: the step runs unhooked
            served.stepped.set()

    # Threads started from here on (the server's, its thread pool's, started on the
    # first /api/flags) carry the hook; this thread does not.
    threading.setprofile(hook)
    try:
        server = AdminServer(flags=flags, migration=migration, bind="127.0.0.1:0").start()
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                served = Served(flags, migration, http)
                yield served
        finally:
            server.close()
            flags.close()
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]


def _staged_values(body: dict[str, Any]) -> set[object]:
    """The stage's flags in one bulk answer: DISABLED (off) has no value."""
    return {f.get("value", "off") for f in body["flags"] if f["key"] in STAGED}


def _reference(served: Served) -> tuple[str, bytes]:
    """(ETag, body) of the bulk answer now, with nothing landing meanwhile."""
    r = served.bulk()
    assert r.status_code == 200
    return r.headers["ETag"], r.content


def test_a_step_landing_mid_bulk_is_not_half_shown_and_the_etag_names_the_state() -> None:
    with _served() as served:
        before = _reference(served)  # stage 0: every staged flag off
        served.migration.advance(by="test")
        after = _reference(served)  # stage 1: every staged flag on
        assert before[0] != after[0]
        served.migration.rollback_to(0, by="test")

        for step, state, then in (
            (lambda: served.migration.advance(by="test"), before, after),
            (lambda: served.migration.rollback_to(0, by="test"), after, before),
        ):
            served.stepped.clear()
            served.step_at_middle.append(step)
            r = served.bulk()
            assert served.stepped.is_set(), "the step did not land mid-answer"
            assert r.status_code == 200
            # All of the state the answer began in (before the step: one snapshot),
            # with the very ETag that state answers with.
            assert _staged_values(r.json()) in ({"off"}, {True})
            assert (r.headers["ETag"], r.content) == state
            # The next poll sees the step, whole; the old ETag is no match any more.
            r = served.bulk(etag=state[0])
            assert r.status_code == 200
            assert (r.headers["ETag"], r.content) == then


def test_a_step_landing_mid_flag_list_is_not_half_shown() -> None:
    with _served() as served:
        for step, enabled in (
            (lambda: served.migration.advance(by="test"), False),
            (lambda: served.migration.rollback_to(0, by="test"), True),
        ):
            served.stepped.clear()
            served.step_at_middle.append(step)
            r = served.http.get("api/flags")
            assert served.stepped.is_set(), "the step did not land mid-list"
            assert r.status_code == 200
            listed = {f["name"]: f for f in r.json()["flags"] if f["name"] in STAGED}
            assert {f["enabled"] for f in listed.values()} == {enabled}
            # Each flag's state goes with its answer (one snapshot for both).
            assert {f["switch"] for f in listed.values()} == {enabled}


def test_bulk_answers_racing_a_looping_migration_are_each_one_committed_state() -> None:
    with _served() as served:
        states = {_reference(served)}
        served.migration.advance(by="test")
        states.add(_reference(served))
        served.migration.rollback_to(0, by="test")
        assert len(states) == 2

        stop = threading.Event()
        steps = [0]
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                while not stop.is_set():
                    served.migration.advance(by="writer")
                    served.migration.rollback_to(0, by="writer")
                    steps[0] += 2
            except BaseException as exc:  # reported by the test below
                errors.append(exc)

        # Frequent thread switches: a swap lands inside a bulk answer far more often.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        thread = threading.Thread(target=writer, name="test-migration-writer")
        thread.start()
        try:
            for i in range(400):
                r = served.bulk()
                assert r.status_code == 200
                # Every answer is one of the two committed states, with its own ETag.
                assert len(_staged_values(r.json())) == 1, f"answer {i}: half a step shown"
                assert (r.headers["ETag"], r.content) in states, f"answer {i}"
        finally:
            stop.set()
            thread.join(60)
            sys.setswitchinterval(interval)
        assert not thread.is_alive()
        assert not errors, errors
        assert steps[0] > 0
