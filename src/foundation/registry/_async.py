"""The async face of every registry: writes an event loop can await without blocking.

``await registry.register_async(key, agent, metadata=None, *, replace=False)``,
``await registry.register_many_async(items, *, replace=False)``,
``await registry.unregister_async(key)`` and
``await registry.update_metadata_async(key, metadata)`` have the results and
errors of ``register``, ``register_many``, ``unregister`` and
``update_metadata``: the same call runs, only where it runs differs.

- **In-memory backends** (``MemoryRegistry``, ``ThreadLocalRegistry``) never
  wait on I/O: the sync call runs directly in the calling thread. For the
  per-thread ``ThreadLocalRegistry`` that is also the only correct place: the
  entry belongs to the store of the thread that awaits.
- **Backends whose writes may block** (``RedisRegistry``, and any
  ``Registry`` subclass by default) run the sync call in a small bounded
  executor owned by the registry: at most 4 threads named
  ``foundation-registry-async``, created on the first async write and shut
  down by ``close()``. The loop thread never waits on the backend; a frozen
  server delays only the awaiting task.
- ``MigratingRegistry`` runs directly when both of its sides are in-memory,
  and in the executor otherwise. With a per-thread legacy side (a
  ``ThreadLocalRegistry``) the executor has **one** thread, so every async
  write lands in one private legacy store (that thread's, visible through
  ``snapshot_all_threads()``): a read from the loop thread sees those
  registrations once the flag makes the shared target authoritative.

Ordering: the writes of one task are made in the order it awaits them. Writes
awaited concurrently by several tasks may run in any order (as the same sync
calls made from several threads would).

Cancellation: cancelling the awaiting task abandons the wait, not necessarily
the write. A write that has not started yet is dropped; one already running in
the executor completes (its result or error is discarded). A caller that must
know the outcome re-reads the registry (``lookup``) afterwards.

After ``close()`` the sync call runs directly (it raises the backend's
"closed" error, as the sync call would).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from foundation import _fork

if TYPE_CHECKING:
    # asyncio and the executor are imported where used: `import foundation` stays cheap.
    from concurrent.futures import ThreadPoolExecutor

    from foundation.errors import RegistryError

__all__ = ["ASYNC_THREAD_PREFIX", "AsyncWrites", "DirectAsyncWrites", "MigratingAsyncWrites"]

#: Name prefix of the executor threads that run blocking writes for the async face.
ASYNC_THREAD_PREFIX = "foundation-registry-async"

_T = TypeVar("_T")

# Guards the lazy creation and the shutdown of every registry's executor. Held
# for a few attribute operations only, never while a write runs. Unlocked in a
# forked child (held by a parent thread at the fork, it hung the child's first
# async write of a registry made there).
_executor_lock = threading.Lock()
_fork.unlock_after_fork(_executor_lock)


class AsyncWrites:
    """Mixin: ``register_async``, ``register_many_async``, ``unregister_async``,
    ``update_metadata_async``.

    Every registry has it (it is a base of :class:`~foundation.registry.Registry`).
    A backend whose sync writes never block sets ``_writes_block = False`` (see
    :class:`DirectAsyncWrites`); one that decides per instance overrides
    ``_async_direct()``. A backend that uses the executor calls
    ``self._close_async()`` from its ``close()``.

    Example:
        >>> import asyncio
        >>> from foundation import MemoryRegistry
        >>> async def main():
        ...     with MemoryRegistry() as reg:
        ...         task = asyncio.current_task()
        ...         await reg.register_async("me", task, {"role": "demo"})
        ...         await reg.update_metadata_async("me", {"role": "main"})
        ...         role = reg.lookup("me").metadata["role"]
        ...         return role, await reg.unregister_async("me"), await reg.unregister_async("me")
        >>> asyncio.run(main())
        ('main', True, False)
    """

    #: True when the sync writes may block on I/O (they then run in the executor).
    _writes_block: ClassVar[bool] = True
    #: Size of the executor (the bound on concurrent blocking writes).
    _async_max_workers: ClassVar[int] = 4

    # Both set lazily (a backend's __init__ need not call ours).
    _async_executor: ThreadPoolExecutor | None
    _async_closed: bool

    if TYPE_CHECKING:  # the sync writes, as every backend defines them

        def register(
            self,
            key: Hashable,
            agent: Any,
            metadata: Mapping[str, Any] | None = None,
            *,
            replace: bool = False,
        ) -> None: ...

        def unregister(self, key: Hashable) -> bool: ...

        def register_many(
            self, items: Iterable[Any], *, replace: bool = False
        ) -> list[RegistryError | None]: ...

        def update_metadata(self, key: Hashable, metadata: Mapping[str, Any]) -> None: ...

    # ------------------------------------------------------------------ the async face

    async def register_async(
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """``register`` without blocking the event loop; same result and errors.

        Raises:
            AlreadyRegistered, NotAlive, UnsupportedAgent, InvalidKey,
            InvalidMetadata, BackendUnavailable: exactly as ``register``.
        """
        await self._async_call(partial(self.register, key, agent, metadata, replace=replace))

    async def register_many_async(
        self, items: Iterable[Any], *, replace: bool = False
    ) -> list[RegistryError | None]:
        """``register_many`` without blocking the event loop; same outcomes and errors.

        ``items`` is read in the calling (loop) thread, before the batch runs.

        Raises:
            TypeError, BackendUnavailable, Closed: exactly as ``register_many``.
        """
        try:
            iterator = iter(items)
        except TypeError:
            # Not iterable: the sync call answers at once, with no I/O (Closed on a
            # closed registry, else its TypeError), as it would for this argument.
            return self.register_many(items, replace=replace)
        batch = list(iterator)
        return await self._async_call(partial(self.register_many, batch, replace=replace))

    async def unregister_async(self, key: Hashable) -> bool:
        """``unregister`` without blocking the event loop: True if removed, False if absent."""
        return await self._async_call(partial(self.unregister, key))

    async def update_metadata_async(self, key: Hashable, metadata: Mapping[str, Any]) -> None:
        """``update_metadata`` without blocking the event loop; same errors.

        Raises:
            NotRegistered, InvalidMetadata, BackendUnavailable: exactly as ``update_metadata``.
        """
        await self._async_call(partial(self.update_metadata, key, metadata))

    # ------------------------------------------------------------------ machinery

    def _async_direct(self) -> bool:
        """True when a write may run directly on the loop (it never blocks)."""
        return not self._writes_block

    def _async_workers(self) -> int:
        """How many executor threads this registry may use."""
        return self._async_max_workers

    async def _async_call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` (a sync registry call) directly or in the executor; its result."""
        import asyncio

        if self._async_direct():
            return fn()
        executor = self._async_get_executor()
        if executor is None:  # closed: the sync call raises the backend's own error
            return fn()
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # as asyncio.to_thread: contextvars follow
        try:
            future = loop.run_in_executor(executor, context.run, fn)
        except RuntimeError:
            # Race: close() shut the executor down between our read and the
            # submit ("cannot schedule new futures after shutdown"). The
            # registry is closed now, so the sync call fails at once.
            return fn()
        # Cancelling this await cancels the executor future: a write that has
        # not started is dropped, a running one completes (see the module docs).
        return await future

    def _async_get_executor(self) -> ThreadPoolExecutor | None:
        from concurrent.futures import ThreadPoolExecutor

        executor: ThreadPoolExecutor | None = getattr(self, "_async_executor", None)
        if executor is not None:
            return executor
        with _executor_lock:
            # Re-read under the lock: two first callers must not build two pools.
            executor = getattr(self, "_async_executor", None)
            if executor is None and not getattr(self, "_async_closed", False):
                executor = ThreadPoolExecutor(
                    max_workers=self._async_workers(), thread_name_prefix=ASYNC_THREAD_PREFIX
                )
                self._async_executor = executor
            return executor

    def _close_async(self) -> None:
        """Shut the executor down (idempotent); backends call it from ``close()``.

        Does not wait: a write already queued or running completes in its
        thread (against the closed registry it then raises the backend's
        "closed" error, which goes to its awaiting task); later async writes
        run directly.
        """
        with _executor_lock:
            self._async_closed = True
            executor, self._async_executor = getattr(self, "_async_executor", None), None
        if executor is not None:
            executor.shutdown(wait=False)


class DirectAsyncWrites(AsyncWrites):
    """For backends whose writes never block: the async face calls them directly.

    Example:
        >>> import asyncio, threading
        >>> from foundation import ThreadLocalRegistry, spawn_thread
        >>> stop = threading.Event()
        >>> reg = ThreadLocalRegistry()
        >>> async def main():
        ...     await reg.register_async("w", spawn_thread(stop.wait))
        ...     return reg.lookup("w") is not None  # the same (calling) thread's store
        >>> asyncio.run(main())
        True
        >>> stop.set(); reg.close()
    """

    _writes_block: ClassVar[bool] = False


class MigratingAsyncWrites(AsyncWrites):
    """For ``MigratingRegistry``: direct when both sides are in-memory, else the executor.

    A per-thread legacy side gets a one-thread executor, so that every async
    write uses the same private legacy store (see the module docs).
    """

    if TYPE_CHECKING:  # as MigratingRegistry defines them

        @property
        def legacy(self) -> Any: ...

        @property
        def target(self) -> Any: ...

        @property
        def finished(self) -> bool: ...

    def _async_direct(self) -> bool:
        target_direct = _is_direct(self.target)
        # After finish() the legacy side is retired: only the target is written.
        return target_direct and (self.finished or _is_direct(self.legacy))

    def _async_workers(self) -> int:
        legacy = self.legacy
        per_thread = bool(getattr(legacy, "per_thread", False)) or hasattr(
            legacy, "snapshot_all_threads"
        )
        return 1 if per_thread else self._async_max_workers


def _is_direct(registry: object) -> bool:
    direct = getattr(registry, "_async_direct", None)
    return bool(direct()) if callable(direct) else False
