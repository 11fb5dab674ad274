"""Bad arguments refused at the call, on every backend: a non-callable listener."""

from __future__ import annotations

import pytest

from foundation.registry import Registry
from tests.contract.agents import Agents


@pytest.mark.parametrize("listener", [None, 42, "print", object()])
def test_subscribe_refuses_a_non_callable_at_the_call(
    registry: Registry, agents: Agents, listener: object
) -> None:
    with pytest.raises(TypeError, match="callable"):
        registry.subscribe(listener)  # type: ignore[arg-type]
    # Nothing was subscribed: later writes deliver no broken call anywhere.
    seen: list[object] = []
    registry.subscribe(seen.append)
    registry.register("w", agents.new("thread"))
    assert [getattr(e, "kind", None) for e in seen] == ["registered"]


def test_one_unsubscribe_removes_one_subscription_of_a_listener_subscribed_twice(
    registry: Registry, agents: Agents
) -> None:
    seen: list[object] = []
    first = registry.subscribe(seen.append)
    registry.subscribe(seen.append)
    first()
    first()  # idempotent: the second subscription stays
    registry.register("w", agents.new("thread"))
    assert len(seen) == 1
