"""``FoundationProvider``'s migration metadata follows a plan recorded after it
was initialized, over every flag store, with no outage and no re-initialize:
the plan recorded (by another store object on the same backend, or through the
provider's own flags) and advanced, the flags change, and the provider re-reads
the plans on a worker thread (a bounded rate), never in a resolution.

Real SDK, a real redis-server (the tests' session server, a namespace of its
own), a real SQLite file.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openfeature import api

from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagStore,
    MemoryFlagStore,
    Migration,
    MigrationPlan,
    RedisFlagStore,
    SQLiteFlagStore,
    Stage,
)
from foundation.openfeature import FoundationProvider
from tests.redis_support import RedisServer

DECLARED = [Flag("f_a", description="in plan a"), Flag("plain")]
PLAN = MigrationPlan([Stage(1, "sa", ["f_a"])], name="a")
WANT = {
    "description": "in plan a",
    "migration_plan": "a",
    "migration_stage": 1,
    "migration_stage_name": "sa",
}
WAIT = 30.0

StoreMaker = Callable[[], FlagStore]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> Iterator[StoreMaker]:
    """Opens store objects on one backend (the memory store: one object, shared)."""
    made: list[FlagStore] = []
    memory = MemoryFlagStore()
    namespace = f"of-follows-{uuid.uuid4().hex[:8]}"

    def make() -> FlagStore:
        if request.param == "memory":
            return memory
        if request.param == "sqlite":
            store: FlagStore = SQLiteFlagStore(tmp_path / "flags.db")
        else:
            store = RedisFlagStore(redis_server.url, namespace=namespace)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
    memory.close()


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # sleep-ok: polling a resolution's metadata with a deadline


@pytest.mark.parametrize("recorder", ["another-store", "own-flags"])
def test_a_plan_recorded_and_advanced_after_initialize_is_described(
    make_store: StoreMaker, recorder: str
) -> None:
    flags = FeatureFlags(DECLARED, store=make_store())
    other = flags
    try:
        provider = FoundationProvider(flags)
        api.set_provider_and_wait(provider)
        client = api.get_client()

        def metadata() -> dict[str, object]:
            return dict(client.get_boolean_details("f_a", False).flag_metadata)

        assert metadata() == {"description": "in plan a"}
        if recorder == "another-store":
            other = FeatureFlags(DECLARED, store=make_store())
        Migration(other, PLAN).advance(by="test", reason="recorded after initialize")
        _wait_for(lambda: metadata() == WANT, "plan a's metadata from the provider")
        api.shutdown()
        # Shut down: no re-read worker left behind.
        _wait_for(
            lambda: (
                not any(t.name == "foundation-openfeature-plans" for t in threading.enumerate())
            ),
            "no plan refresher thread",
        )
    finally:
        other.close()
        flags.close()
