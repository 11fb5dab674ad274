"""Contract-suite factories for MigratingRegistry: flag off, flag on, and after finish().

Referenced from ``tests/contract/backends.py`` through ``lazy_factory``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from foundation import FeatureFlags, MemoryRegistry, MigratingRegistry, ThreadLocalRegistry
from tests.migrating.support import FLAG, FLAGS


@contextlib.contextmanager
def _migrating(indexed: tuple[str, ...], mode: str) -> Iterator[MigratingRegistry]:
    flags = FeatureFlags(FLAGS)
    flags.set(FLAG, mode != "off")
    target = MemoryRegistry(indexed=indexed)
    try:
        with MigratingRegistry(ThreadLocalRegistry(indexed=indexed), target, flags) as registry:
            if mode == "finished":
                registry.finish()
            yield registry
        assert target.manager.closed  # its own manager: closing it released every monitor
    finally:
        flags.close()


def make_off(
    request: pytest.FixtureRequest, indexed: tuple[str, ...]
) -> contextlib.AbstractContextManager[MigratingRegistry]:
    return _migrating(indexed, "off")


def make_on(
    request: pytest.FixtureRequest, indexed: tuple[str, ...]
) -> contextlib.AbstractContextManager[MigratingRegistry]:
    return _migrating(indexed, "on")


def make_finished(
    request: pytest.FixtureRequest, indexed: tuple[str, ...]
) -> contextlib.AbstractContextManager[MigratingRegistry]:
    return _migrating(indexed, "finished")
