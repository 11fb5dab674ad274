"""The public surface: DESIGN.md's names import from `foundation`, and doctests are all found."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import foundation
from foundation import errors

DESIGN_NAMES = [
    "Entry", "RegistryEvent", "Divergence",
    "MemoryRegistry", "ThreadLocalRegistry", "MigratingRegistry", "RedisRegistry",
    "monitor", "Monitor", "Down", "OSProcess", "spawn_thread",
    "Flag", "FeatureFlags", "FlagChange", "MemoryFlagStore", "SQLiteFlagStore", "RedisFlagStore",
    "Stage", "MigrationPlan", "Migration",
    "Supervisor", "ChildSpec", "Application",
]  # fmt: skip

ERROR_BASES = {
    "NotRegistered": KeyError, "UnknownFlag": KeyError,
    "UnsupportedAgent": TypeError, "InvalidKey": TypeError,
    "AlreadyRegistered": ValueError, "NotAlive": ValueError, "InvalidMetadata": ValueError,
    "InvalidCriteria": ValueError, "InvalidFlagValue": ValueError,
    "BackendUnavailable": ConnectionError,
    "MigrationError": RuntimeError, "StartError": RuntimeError,
    "ShutdownError": RuntimeError, "RestartIntensityExceeded": RuntimeError,
}  # fmt: skip


@pytest.mark.parametrize("name", DESIGN_NAMES)
def test_every_design_name_imports_from_foundation(name: str) -> None:
    assert getattr(foundation, name) is not None
    assert name in foundation.__all__


@pytest.mark.parametrize(("name", "builtin"), sorted(ERROR_BASES.items()))
def test_each_error_is_also_the_builtin_a_user_would_catch(name: str, builtin: type) -> None:
    error = getattr(errors, name)
    assert issubclass(error, errors.FoundationError)
    assert issubclass(error, builtin)


def test_public_classes_keep_their_defining_module_so_their_doctests_are_collected() -> None:
    # doctest skips an object whose __module__ is not the module being scanned;
    # rewriting __module__ (for prettier tracebacks) silently dropped doctests.
    for name in DESIGN_NAMES:
        obj = getattr(foundation, name)
        module = importlib.import_module(obj.__module__)
        assert getattr(module, obj.__name__) is obj, name


def test_every_public_class_has_a_runnable_example() -> None:
    finder = doctest.DocTestFinder()
    missing = []
    for name in DESIGN_NAMES:
        obj = getattr(foundation, name)
        if not isinstance(obj, type):
            continue
        found = [t for t in finder.find(obj) if t.examples and t.name.endswith(obj.__name__)]
        if not found:
            missing.append(name)
    assert missing == []


def test_private_modules_are_importable_and_do_not_import_the_package_root_lazily() -> None:
    for info in pkgutil.walk_packages(foundation.__path__, "foundation."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
