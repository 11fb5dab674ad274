"""Fixtures of the OpenFeature provider tests: the SDK's global state reset around each test.

The SDK keeps providers, hooks, handlers and the global evaluation context in
module globals; ``api.shutdown()`` clears them all (and shuts the providers
down), so every test starts from and leaves a clean API.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.event import EventDetails, ProviderEvent

from foundation.flags import FeatureFlags, Flag
from foundation.openfeature import FoundationProvider

DECLARED = (
    Flag("beta", description="the new checkout"),
    Flag("plain"),
    Flag("color", variants={"red": "#f00", "blue": "#00f", "green": "#0f0"}, default="red",
         description="button color"),
    Flag("limit", variants={"low": 10, "high": 1000}, default="low"),
    Flag("ratio", variants={"half": 0.5, "ten": 10.0, "one": 1}, default="half"),
    Flag("layout", variants={"grid": {"cols": 3, "tags": ["a"]}, "list": [1, 2]}, default="grid"),
)  # fmt: skip

WAIT = 10.0


@pytest.fixture(autouse=True)
def clean_api() -> Iterator[None]:
    api.shutdown()
    yield
    api.shutdown()


@pytest.fixture
def flags() -> Iterator[FeatureFlags]:
    f = FeatureFlags(DECLARED)
    yield f
    f.close()


@pytest.fixture
def provider(flags: FeatureFlags) -> FoundationProvider:
    return FoundationProvider(flags)


@pytest.fixture
def client(provider: FoundationProvider) -> OpenFeatureClient:
    api.set_provider_and_wait(provider)
    return api.get_client()


class Events:
    """Event details received by a handler, in arrival order, waited on with a deadline."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[ProviderEvent, EventDetails]] = queue.Queue()

    def handler(self, event: ProviderEvent) -> Callable[[EventDetails], None]:
        return lambda details: self._queue.put((event, details))

    def next(self, timeout: float = WAIT) -> tuple[ProviderEvent, EventDetails]:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no provider event within {timeout}s") from None

    def until(self, predicate: Callable[[ProviderEvent, EventDetails], bool]) -> list[Any]:
        """Every event received up to and including the first matching ``predicate``."""
        seen = []
        while True:
            event, details = self.next()
            seen.append((event, details))
            if predicate(event, details):
                return seen


@pytest.fixture
def events() -> Events:
    return Events()
