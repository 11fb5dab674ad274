"""Numbers out of range in an application's config are refused when it is read.

Before, ``health_interval = 0`` or ``lease_ttl = -1`` (in ``foundation.toml``
or ``AppConfig(...)``) was accepted and failed only when the application
started, or not at all.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from foundation.application import AppConfig
from foundation.errors import InvalidConfig

BAD_DURATIONS = [0, -1, math.nan, math.inf, 10**400]
BAD_LIMITS = [-0.1, -1, math.nan, math.inf, 10**400]


@pytest.mark.parametrize("value", BAD_DURATIONS)
@pytest.mark.parametrize("name", ["lease_ttl", "health_interval"])
def test_a_duration_must_be_finite_and_above_zero(name: str, value: Any) -> None:
    with pytest.raises(InvalidConfig, match=f"{name} must be a finite number of seconds above 0"):
        AppConfig(**{name: value})


@pytest.mark.parametrize("value", BAD_LIMITS)
@pytest.mark.parametrize("name", ["max_error_rate", "max_restarts_per_minute", "max_latency_ratio"])
def test_a_health_limit_must_be_finite_and_at_least_zero(name: str, value: Any) -> None:
    with pytest.raises(InvalidConfig, match=f"{name} must be a finite number of at least 0"):
        AppConfig(**{name: value})


def test_the_config_file_rules_are_the_same() -> None:
    with pytest.raises(InvalidConfig) as raised:
        AppConfig.from_mapping(
            {"registry": {"lease_ttl": 0}, "migration": {"health_interval": -2.5}}
        )
    message = str(raised.value)
    assert "lease_ttl must be a finite number of seconds above 0: 0" in message
    assert "health_interval must be a finite number of seconds above 0: -2.5" in message
    assert len(message) < 400  # bounded, whatever the values


def test_values_in_range_are_kept() -> None:
    config = AppConfig(lease_ttl=0.5, health_interval=2, max_error_rate=0, max_latency_ratio=1.5)
    assert (config.lease_ttl, config.health_interval) == (0.5, 2)
    assert (config.max_error_rate, config.max_latency_ratio) == (0, 1.5)
