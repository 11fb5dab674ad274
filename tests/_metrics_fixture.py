"""The ``metrics`` fixture the metrics tests share: a real ``Metrics`` installed
for the test, and ``FeatureFlags.enabled`` checked uncounted again after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from foundation.flags._flags import FeatureFlags as _FlagsClass
from foundation.metrics import Metrics

ORIGINAL_ENABLED = _FlagsClass.__dict__["enabled"]


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    m.install()
    yield m
    m.uninstall()
    # Every test leaves FeatureFlags.enabled uncounted again.
    assert _FlagsClass.__dict__["enabled"] is ORIGINAL_ENABLED
