"""The library's one retry policy (``foundation._retry.RetryBackoff``)."""

from __future__ import annotations

import pytest

from foundation._retry import RetryBackoff


def test_backoff_is_full_jitter_exponential_up_to_the_cap() -> None:
    backoff = RetryBackoff()
    assert (backoff.base, backoff.cap) == (0.05, 2.0)
    ceilings = []
    for _ in range(12):
        ceiling = backoff.ceiling()
        delay = backoff.next()
        assert 0.0 <= delay <= ceiling
        ceilings.append(ceiling)
    assert ceilings[:4] == [0.05, 0.1, 0.2, 0.4]
    assert ceilings[-1] == 2.0
    assert backoff.attempt == 12
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.ceiling() == 0.05


def test_backoff_delays_are_jittered() -> None:
    backoff = RetryBackoff(base=1.0, cap=1.0)
    assert len({backoff.next() for _ in range(50)}) > 1


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryBackoff(base=0.0)
    with pytest.raises(ValueError):
        RetryBackoff(base=3.0, cap=2.0)
