"""The chaos suite's process pool: every selected scenario starts at the first test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.runner import Job, ScenarioPool


def _job(item: pytest.Item) -> Job | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or item.path.parent != Path(__file__).parent:
        return None
    if "scenario" in callspec.params:
        return ("tests.chaos.scenarios", callspec.params["scenario"])
    if "backend" in callspec.params:
        return ("tests.chaos.listeners", callspec.params["backend"])
    return None


@pytest.fixture(scope="session")
def chaos_pool(request: pytest.FixtureRequest) -> Iterator[ScenarioPool]:
    jobs = [job for item in request.session.items if (job := _job(item)) is not None]
    pool = ScenarioPool(jobs)
    yield pool
    pool.close()
