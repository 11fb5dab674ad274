"""The async face of the registries: the same answers as the sync calls, and a
loop that never waits on the backend."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from foundation import errors
from foundation.flags import FeatureFlags, Flag
from foundation.liveness import spawn_thread
from foundation.registry import (
    MemoryRegistry,
    MigratingRegistry,
    RedisRegistry,
    Registry,
    RegistryEvent,
    ThreadLocalRegistry,
)
from foundation.registry._async import ASYNC_THREAD_PREFIX
from tests.faults._subprocess import run_scenario
from tests.redis_support import RedisServer

FLAG = "use_ets_agent_registry"


def _migrating(legacy: Registry, target: Registry, *, on: bool) -> MigratingRegistry:
    flags = FeatureFlags([Flag(FLAG)])
    if on:
        flags.enable(FLAG)
    return MigratingRegistry(legacy, target, flags)


IN_MEMORY: dict[str, Callable[[], Registry]] = {
    "memory": MemoryRegistry,
    "thread_local": ThreadLocalRegistry,
    "migrating-legacy": lambda: _migrating(ThreadLocalRegistry(), MemoryRegistry(), on=False),
    "migrating-target": lambda: _migrating(ThreadLocalRegistry(), MemoryRegistry(), on=True),
}


def _dead_agent() -> threading.Thread:
    thread = spawn_thread(lambda: None)
    thread.join()
    return thread


Outcome = tuple[str, Any]


def _script(stop: threading.Event) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """Writes covering every result and error of the three calls."""
    first, second = spawn_thread(stop.wait), spawn_thread(stop.wait)
    return [
        ("register", ("a", first, {"r": 1}), {}),
        ("register", ("a", second), {}),  # AlreadyRegistered (.entry is first's)
        ("register", ("a", second, {"r": 2}), {"replace": True}),
        ("update_metadata", ("a", {"r": 3}), {}),
        ("update_metadata", ("missing", {"r": 0}), {}),  # NotRegistered
        ("update_metadata", ("a", {"bad": {1}}), {}),  # InvalidMetadata, nothing changes
        ("register", (["unhashable"], first), {}),  # InvalidKey
        ("register", ("dead", _dead_agent()), {}),  # NotAlive
        ("register", ("odd", object()), {}),  # UnsupportedAgent
        ("register", ("b", first, {"nested": {"x": [1, 2]}}), {}),
        ("unregister", ("a",), {}),
        ("unregister", ("a",), {}),  # False: absent
    ]


def _outcome(call: Callable[[], Any]) -> Outcome:
    try:
        return ("ok", call())
    except errors.AlreadyRegistered as exc:
        return ("AlreadyRegistered", exc.entry.agent)
    except Exception as exc:
        return (type(exc).__name__, None)


def _state(reg: Registry) -> list[tuple[Any, Any, dict[str, Any]]]:
    return sorted(
        ((e.key, e.agent, dict(e.metadata)) for e in reg.list_all()), key=lambda t: repr(t[0])
    )


@pytest.mark.parametrize("backend", sorted(IN_MEMORY))
def test_the_async_face_answers_exactly_as_the_sync_calls(
    backend: str, stop: threading.Event
) -> None:
    script = _script(stop)
    with IN_MEMORY[backend]() as sync_reg:
        expected = [_outcome(partial(getattr(sync_reg, n), *a, **kw)) for n, a, kw in script]
        expected_state = _state(sync_reg)

    async def main() -> tuple[list[Outcome], list[Any]]:
        with IN_MEMORY[backend]() as reg:
            got = []
            for name, args, kwargs in script:
                call = getattr(reg, f"{name}_async")
                try:
                    got.append(("ok", await call(*args, **kwargs)))
                except errors.AlreadyRegistered as exc:
                    got.append(("AlreadyRegistered", exc.entry.agent))
                except Exception as exc:
                    got.append((type(exc).__name__, None))
            return got, _state(reg)

    got, state = asyncio.run(main())
    assert got == expected
    assert state == expected_state
    # The script really did reach every outcome (a test that cannot fail is a defect).
    kinds = {kind for kind, _ in expected}
    assert kinds == {
        "ok",
        "AlreadyRegistered",
        "NotRegistered",
        "InvalidMetadata",
        "InvalidKey",
        "NotAlive",
        "UnsupportedAgent",
    }


@pytest.mark.parametrize("backend", sorted(IN_MEMORY))
def test_in_memory_backends_write_directly_in_the_calling_thread(
    backend: str, stop: threading.Event
) -> None:
    writers: list[int] = []

    def on_event(event: RegistryEvent) -> None:
        writers.append(threading.get_ident())

    async def main() -> tuple[int, bool]:
        with IN_MEMORY[backend]() as reg:
            reg.subscribe(on_event)
            await reg.register_async("k", spawn_thread(stop.wait), {"n": 1})
            await reg.update_metadata_async("k", {"n": 2})
            entry = reg.lookup("k")  # the awaiting thread's own store, for thread_local too
            assert entry is not None
            assert entry.metadata["n"] == 2
            removed = await reg.unregister_async("k")
            return threading.get_ident(), removed

    loop_thread, removed = asyncio.run(main())
    assert removed is True
    assert writers == [loop_thread, loop_thread, loop_thread]
    assert not [t for t in threading.enumerate() if t.name.startswith(ASYNC_THREAD_PREFIX)]


class _Recording(RedisRegistry):
    """A real RedisRegistry that records which threads run its writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writers: set[threading.Thread] = set()

    def register(self, *args: Any, **kwargs: Any) -> None:
        self.writers.add(threading.current_thread())
        super().register(*args, **kwargs)

    def close(self) -> None:
        super().close()
        self._close_async()  # until RedisRegistry.close() calls it itself


def test_redis_writes_run_in_a_bounded_executor_shut_down_by_close(
    redis_server: RedisServer, stop: threading.Event
) -> None:
    async def main(reg: _Recording) -> list[Any]:
        agents = [spawn_thread(stop.wait) for _ in range(20)]
        await asyncio.gather(
            *(reg.register_async(("w", i), a, {"i": i}) for i, a in enumerate(agents))
        )
        outcomes = [await _async_outcome(reg.register_async(("w", 0), agents[1]))]
        outcomes.append(await _async_outcome(reg.update_metadata_async("nope", {})))
        outcomes.append(await _async_outcome(reg.unregister_async(("w", 19))))
        outcomes.append(await _async_outcome(reg.unregister_async(("w", 19))))
        return outcomes

    reg = _Recording(redis_server.url, namespace="async-executor")
    try:
        outcomes = asyncio.run(main(reg))
        assert outcomes == [
            ("AlreadyRegistered", reg.lookup(("w", 0)).agent),  # type: ignore[union-attr]
            ("NotRegistered", None),
            ("ok", True),
            ("ok", False),
        ]
        assert reg.count() == 19
        writers = set(reg.writers)
        assert writers
        assert len(writers) <= 4
        assert all(t.name.startswith(ASYNC_THREAD_PREFIX) for t in writers)
    finally:
        reg.close()
    for thread in writers:
        thread.join(timeout=10)
        assert not thread.is_alive()


async def _async_outcome(awaitable: Any) -> Outcome:
    try:
        return ("ok", await awaitable)
    except errors.AlreadyRegistered as exc:
        return ("AlreadyRegistered", exc.entry.agent)
    except Exception as exc:
        return (type(exc).__name__, None)


def test_a_per_thread_legacy_side_gets_one_async_writer_thread(
    redis_server: RedisServer, stop: threading.Event
) -> None:
    """Migrating(ThreadLocal, Redis): every async write uses the same private legacy store."""
    legacy = ThreadLocalRegistry()
    target = RedisRegistry(redis_server.url, namespace="async-per-thread")
    reg = _migrating(legacy, target, on=False)

    async def main() -> list[Outcome]:
        agent = spawn_thread(stop.wait)
        return [
            await _async_outcome(reg.register_async("k", agent, {"n": 1})),
            await _async_outcome(reg.update_metadata_async("k", {"n": 2})),
            await _async_outcome(reg.register_async("k", agent)),
            await _async_outcome(reg.unregister_async("k")),
            await _async_outcome(reg.unregister_async("k")),
        ]

    try:
        outcomes = asyncio.run(main())
        assert [kind for kind, _ in outcomes] == ["ok", "ok", "AlreadyRegistered", "ok", "ok"]
        assert [outcomes[3][1], outcomes[4][1]] == [True, False]
        assert target.lookup("k") is None  # the mirror followed
    finally:
        reg.close()


CANCELLED_WRITE = """
import asyncio
from foundation.liveness import spawn_thread
from foundation.registry import RedisRegistry
from tests.redis_support import RedisServer

class Instrumented(RedisRegistry):
    in_flight = 0
    def register(self, *args, **kwargs):
        type(self).in_flight += 1
        try:
            super().register(*args, **kwargs)
        finally:
            type(self).in_flight -= 1

stop = threading.Event()

async def main(server, reg):
    ticks = {"all": 0, "pending": 0}
    async def ticker():
        while True:
            await asyncio.sleep(0.001)  # sleep-ok: a 1 ms ticker measuring the loop
            ticks["all"] += 1
            if Instrumented.in_flight:
                ticks["pending"] += 1
    tick_task = asyncio.create_task(ticker())
    agent = spawn_thread(stop.wait)
    server.freeze()
    write = asyncio.create_task(reg.register_async("frozen", agent, {"n": 1}))
    deadline = time.monotonic() + 20
    while ticks["pending"] < 200:  # the loop keeps ticking while the write waits on Redis
        assert time.monotonic() < deadline, ticks
        await asyncio.sleep(0.005)  # sleep-ok: polling with a deadline
    assert not write.done()
    write.cancel()  # abandons the wait; the write itself is running and completes
    await asyncio.wait({write})
    assert write.cancelled()
    server.thaw()
    deadline = time.monotonic() + 20
    while reg.lookup("frozen") is None:
        assert time.monotonic() < deadline, "the cancelled write never completed"
        await asyncio.sleep(0.005)  # sleep-ok: polling with a deadline
    tick_task.cancel()
    print("TICKS_WHILE_PENDING", ticks["pending"])

with RedisServer() as server:
    reg = Instrumented(server.url, op_timeout=15.0, lease_ttl=30.0)
    try:
        asyncio.run(main(server, reg))
    finally:
        reg.close()
        stop.set()
print("OK")
"""


def test_the_loop_ticks_while_a_write_waits_on_a_frozen_redis_and_a_cancelled_write_completes() -> (
    None
):
    result = run_scenario(CANCELLED_WRITE)
    [line] = result.lines("TICKS_WHILE_PENDING")
    assert int(line.split()[1]) >= 200
