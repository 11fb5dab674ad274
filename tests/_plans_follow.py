"""What the admin server's and the OpenFeature provider's "metadata follows the
plans" tests share: the declared flags, the plan, the metadata it gives, and
store objects opened on each backend."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from foundation.flags import (
    Flag,
    FlagStore,
    MemoryFlagStore,
    MigrationPlan,
    RedisFlagStore,
    SQLiteFlagStore,
    Stage,
)
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
    namespace = f"follows-{uuid.uuid4().hex[:8]}"

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


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` until true, failing after ``WAIT`` seconds."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # sleep-ok: polling an answer with a deadline
