"""Bad arguments are refused at the call that makes them, not at a later event (issue 11, item 7).

``subscribe`` of a non-callable is covered on every registry backend by
``tests/contract/test_bad_listener.py``; here: the same for ``FeatureFlags``,
and a ``MigratingRegistry`` whose two sides are one object.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from foundation import (
    FeatureFlags,
    Flag,
    MemoryRegistry,
    MigratingRegistry,
    ThreadLocalRegistry,
    spawn_thread,
)
from foundation.flags import FlagChange
from foundation.registry import Registry

FLAG = "use_ets_agent_registry"


@pytest.fixture
def flags() -> Iterator[FeatureFlags]:
    with FeatureFlags([Flag(FLAG), Flag("beta")]) as f:
        yield f


BACKENDS: dict[str, Callable[[], Registry]] = {
    "memory": MemoryRegistry,
    "thread_local": ThreadLocalRegistry,
}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_migrating_registry_over_one_object_twice_is_refused_at_construction(
    backend: str, flags: FeatureFlags, stop: threading.Event
) -> None:
    registry = BACKENDS[backend]()
    try:
        with pytest.raises(ValueError, match="two different backends"):
            MigratingRegistry(registry, registry, flags)
        # Refused before anything happened: the backend has no listener of the
        # facade (its writes deliver nothing) and works as before.
        seen: list[object] = []
        registry.subscribe(seen.append)
        registry.register("w", spawn_thread(stop.wait))
        assert len(seen) == 1
        flags.enable(FLAG)  # no facade is listening to the flag either
        assert registry.lookup("w") is not None
    finally:
        registry.close()


def test_two_different_backends_of_one_type_are_fine(flags: FeatureFlags) -> None:
    with MigratingRegistry(MemoryRegistry(), MemoryRegistry(), flags) as registry:
        assert registry.count() == 0


@pytest.mark.parametrize("listener", [None, 1, "print", object()])
def test_feature_flags_subscribe_refuses_a_non_callable_at_the_call(
    flags: FeatureFlags, listener: object
) -> None:
    with pytest.raises(TypeError, match="callable"):
        flags.subscribe(listener)  # type: ignore[arg-type]
    seen: list[FlagChange] = []
    flags.subscribe(seen.append)
    flags.enable("beta")  # nothing broken was subscribed: the write notifies cleanly
    assert [c.flag for c in seen] == ["beta"]


def test_feature_flags_unsubscribe_is_idempotent_and_removes_one_subscription(
    flags: FeatureFlags,
) -> None:
    seen: list[FlagChange] = []
    first = flags.subscribe(seen.append)
    flags.subscribe(seen.append)
    first()
    first()
    flags.enable("beta")
    assert len(seen) == 1
