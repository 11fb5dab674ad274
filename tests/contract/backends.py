"""The registry backends the contract suite runs against.

To add a backend, APPEND ONE entry to ``BACKENDS`` (keep the factory in your
own test module and import it lazily inside a small function, so that this
file stays importable without your extras). A factory receives pytest's
``request`` — use ``request.getfixturevalue("redis_server")`` to get fixtures —
and the ``indexed`` attribute names, and returns a context manager yielding a
fresh, empty registry that it closes (and cleans up after) on exit.

Capability flags name the documented exceptions to the contract; tests that
depend on them are named after the exception (for example
``test_legacy_store_sees_only_the_calling_threads_entries``) and run on the
backends the flag selects — nothing is skipped silently.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from typing import Any

import pytest

from foundation.registry import MemoryRegistry, Registry, ThreadLocalRegistry

__all__ = ["BACKENDS", "BackendSpec", "backend_params", "lazy_factory"]

Factory = Callable[[pytest.FixtureRequest, tuple[str, ...]], ContextManager[Registry]]


@dataclass(frozen=True)
class BackendSpec:
    """One backend (or backend mode) under the contract.

    ``per_thread_visibility``: each thread sees only its own entries (the
    legacy store). ``monitors_agents``: dead agents are removed by a monitor,
    with a ``"down"`` event, freeing memory; when False they are filtered at
    read time and linger (the legacy store). ``monitor_count(registry)``:
    live monitors the backend holds (for leak checks; 0 when it monitors
    nothing). ``stored_count(registry)``: entries held in memory, dead
    ones included. ``marks``: pytest marks for every test of this backend.
    """

    name: str
    make: Factory
    per_thread_visibility: bool = False
    monitors_agents: bool = True
    monitor_count: Callable[[Any], int] = field(default=lambda registry: 0)
    stored_count: Callable[[Any], int] = field(default=lambda registry: registry.count())
    marks: tuple[Any, ...] = ()


def lazy_factory(module: str, name: str) -> Factory:
    """A factory that imports ``module`` and calls its ``name`` only when used.

    Example entry: ``BackendSpec("redis", lazy_factory("tests.redis.specs", "make"))``.
    """

    def factory(
        request: pytest.FixtureRequest, indexed: tuple[str, ...]
    ) -> ContextManager[Registry]:
        make: Factory = getattr(importlib.import_module(module), name)
        return make(request, indexed)

    return factory


@contextlib.contextmanager
def _memory(request: pytest.FixtureRequest, indexed: tuple[str, ...]) -> Iterator[Registry]:
    with MemoryRegistry(indexed=indexed) as registry:
        yield registry
    assert registry.manager.closed  # its own manager: closing it released every monitor


@contextlib.contextmanager
def _thread_local(request: pytest.FixtureRequest, indexed: tuple[str, ...]) -> Iterator[Registry]:
    with ThreadLocalRegistry(indexed=indexed) as registry:
        yield registry


BACKENDS: list[BackendSpec] = [
    BackendSpec(
        "memory",
        _memory,
        monitor_count=lambda r: r.manager.active_count(),
        stored_count=lambda r: r.stats().entries,
    ),
    BackendSpec(
        "thread_local",
        _thread_local,
        per_thread_visibility=True,
        monitors_agents=False,
        stored_count=lambda r: r.stats().entries,
    ),
    # Other backends append one entry each below this line.
    BackendSpec(  # MigratingRegistry, flag off: the per-thread legacy store answers
        "migrating_flag_off",
        lazy_factory("tests.migrating.specs", "make_off"),
        per_thread_visibility=True,
        monitors_agents=False,
        # The legacy side monitors nothing; the shared mirror must hold exactly
        # one monitor per entry, so any monitor beyond that is a leak.
        monitor_count=lambda r: r.target.manager.active_count() - r.target.stats().entries,
        stored_count=lambda r: r.legacy.stats().entries,
    ),
    BackendSpec(  # MigratingRegistry, flag on: the shared table answers
        "migrating_flag_on",
        lazy_factory("tests.migrating.specs", "make_on"),
        monitor_count=lambda r: r.target.manager.active_count(),
        stored_count=lambda r: r.target.stats().entries,
    ),
    BackendSpec(  # MigratingRegistry after finish(): legacy retired, flag no longer read
        "migrating_finished",
        lazy_factory("tests.migrating.specs", "make_finished"),
        monitor_count=lambda r: r.target.manager.active_count(),
        stored_count=lambda r: r.target.stats().entries,
    ),
    BackendSpec(  # RedisRegistry on the session redis-server, a namespace per registry
        "redis",
        lazy_factory("tests.redis.specs", "make"),
        monitor_count=lambda r: r.manager.active_count(),
    ),
]


def backend_params(predicate: Callable[[BackendSpec], bool] = lambda spec: True) -> list[Any]:
    """``pytest.param``s for the backends selected by ``predicate`` (ids = names)."""
    return [
        pytest.param(spec, id=spec.name, marks=spec.marks) for spec in BACKENDS if predicate(spec)
    ]
