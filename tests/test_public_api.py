"""The public surface: one way to build it, every documented name imports, every doctest runs.

The API is built one way (``foundation._public``): each public package imports
its names eagerly and rewrites their ``__module__`` to its own path, classes'
methods included. Doctest finds examples through ``__module__``, so a rewrite
done wrong drops examples silently; the guard is
``test_every_docstring_example_in_src_is_collected_exactly_once``.
"""

from __future__ import annotations

import ast
import collections
import doctest
import importlib
import importlib.util
import inspect
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

import foundation
from foundation import errors

ROOT = Path(foundation.__file__).parent
REPO = ROOT.parent.parent
PUBLIC_PACKAGES = [
    "foundation",
    "foundation.registry",
    "foundation.liveness",
    "foundation.flags",
    "foundation.supervision",
    "foundation.admin",
]
# (foundation.application is a module, not a facade: tests/test_docs_public_api.py
# checks the module paths of its exports with every other public module's.)

DESIGN_NAMES = [
    "Entry", "RegistryEvent", "Divergence",
    "MemoryRegistry", "ThreadLocalRegistry", "MigratingRegistry", "RedisRegistry",
    "monitor", "Monitor", "Down", "OSProcess", "spawn_thread",
    "Flag", "FeatureFlags", "FlagChange", "MemoryFlagStore", "SQLiteFlagStore", "RedisFlagStore",
    "Stage", "MigrationPlan", "Migration",
    "Supervisor", "ChildSpec", "Application",
]  # fmt: skip

# What the README and docs name as things a user touches, beyond docs/contract.md's list.
USER_NAMES = [
    "errors", "telemetry", "Registry", "MonitorManager",
    "DynamicSupervisor", "ChildContext", "Backoff",
    "HealthThresholds", "AutoRollback", "RedisStatus", "Conflict", "RemoteAgent",
    "Evaluation",
]  # fmt: skip

ERROR_BASES = {
    "NotRegistered": KeyError, "UnknownFlag": KeyError,
    "UnsupportedAgent": TypeError, "InvalidKey": TypeError,
    "AlreadyRegistered": ValueError, "NotAlive": ValueError, "InvalidMetadata": ValueError,
    "InvalidCriteria": ValueError, "InvalidFlagValue": ValueError, "InvalidConfig": ValueError,
    "BackendUnavailable": ConnectionError, "FlagStoreUnavailable": ConnectionError,
    "MigrationError": RuntimeError, "StartError": RuntimeError, "Closed": RuntimeError,
    "ShutdownError": RuntimeError, "RestartIntensityExceeded": RuntimeError,
}  # fmt: skip

EXTRAS = (
    "redis",
    "hiredis",
    "rich",
    "openfeature",
    "prometheus_client",
    "opentelemetry",
    "starlette",
    "uvicorn",
)


def _private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def _all_modules() -> list[str]:
    """Every module file under src/foundation, as pytest --doctest-modules sees them."""
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.parametrize("name", DESIGN_NAMES + USER_NAMES)
def test_every_design_and_user_name_imports_from_foundation(name: str) -> None:
    assert getattr(foundation, name) is not None
    assert name in foundation.__all__


@pytest.mark.parametrize("package", PUBLIC_PACKAGES)
def test_all_lists_exactly_the_public_names_a_package_holds(package: str) -> None:
    module = importlib.import_module(package)
    exported = set(module.__all__)
    assert len(exported) == len(module.__all__), "duplicates in __all__"
    for name in exported:
        assert hasattr(module, name), name
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and not inspect.ismodule(v)
        and n not in {"annotations", "fixup_module_paths"}
        and (inspect.isclass(v) or inspect.isfunction(v))
    }
    assert public <= exported, f"public but not in __all__: {sorted(public - exported)}"


@pytest.mark.parametrize(("name", "builtin"), sorted(ERROR_BASES.items()))
def test_each_error_is_also_the_builtin_a_user_would_catch(name: str, builtin: type) -> None:
    error = getattr(errors, name)
    assert issubclass(error, errors.FoundationError)
    assert issubclass(error, builtin)


@pytest.mark.parametrize("package", PUBLIC_PACKAGES)
def test_every_public_object_reports_a_public_module_that_holds_it(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        where = obj.__module__
        if not where.startswith("foundation"):
            continue
        assert not _private(where), f"{package}.{name} reports {where}"
        assert getattr(importlib.import_module(where), obj.__name__) is obj, name
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if inspect.isfunction(value) and value.__qualname__.startswith(obj.__qualname__):
                    assert value.__module__ == where, f"{name}.{attr} reports {value.__module__}"


def test_each_object_has_one_public_home_its_package_not_the_root() -> None:
    # foundation re-exports; it changes nothing, so repr and pickles agree everywhere.
    assert foundation.MemoryRegistry.__module__ == "foundation.registry"
    assert foundation.Monitor.__module__ == "foundation.liveness"
    assert foundation.FeatureFlags.__module__ == "foundation.flags"
    assert foundation.DynamicSupervisor.__module__ == "foundation.supervision"
    assert foundation.spawn_thread.__module__ == "foundation.liveness"
    assert repr(foundation.MemoryRegistry) == "<class 'foundation.registry.MemoryRegistry'>"


def test_type_hints_of_public_classes_still_resolve_after_the_module_rewrite() -> None:
    # Annotations are strings (from __future__ import annotations) that
    # typing.get_type_hints evaluates in the module named by __module__; the
    # fix-up resolves them in the defining module first.
    import typing

    hints = typing.get_type_hints(foundation.Entry)
    assert "Mapping[str, typing.Any]" in str(hints["metadata"])
    for cls in (foundation.Down, foundation.Flag, foundation.FlagChange, foundation.Divergence):
        assert typing.get_type_hints(cls), cls


def test_a_pickle_names_the_public_package_and_loads_back() -> None:
    down = foundation.Down("exit", exit_code=3)
    data = pickle.dumps(down, protocol=0)
    assert b"foundation.liveness" in data
    assert b"_core" not in data
    assert pickle.loads(data) == down
    flag = foundation.Flag("new_parser", description="canary")
    assert pickle.loads(pickle.dumps(flag)) == flag


def _docstrings_with_examples() -> collections.Counter[str]:
    """Every docstring doctest can reach (module, class, method, function) that has examples."""
    parser = doctest.DocTestParser()
    found: collections.Counter[str] = collections.Counter()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                text = ast.get_docstring(child, clean=False)
                if not in_function and text and parser.get_examples(text):
                    found[inspect.cleandoc(text)] += 1
                visit(child, in_function or not isinstance(child, ast.ClassDef))

    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        text = ast.get_docstring(tree, clean=False)
        if text and parser.get_examples(text):
            found[inspect.cleandoc(text)] += 1
        visit(tree, False)
    return found


def test_every_docstring_example_in_src_is_collected_exactly_once() -> None:
    # pytest --doctest-modules runs doctest.DocTestFinder on each module: the
    # same finder here, over the same modules, must reach every docstring
    # with an example in the source once (a class whose __module__ points at
    # a module that does not hold it, or methods left behind, drop out).
    expected = _docstrings_with_examples()
    finder = doctest.DocTestFinder()
    collected: collections.Counter[str] = collections.Counter()
    for name in _all_modules():
        for test in finder.find(importlib.import_module(name)):
            if test.examples and test.docstring is not None:
                # Compared cleaned: Python 3.13's compiler strips the common
                # indentation of docstrings; the source keeps it.
                collected[inspect.cleandoc(test.docstring)] += 1
    assert sum(expected.values()) >= 50  # the source really has examples
    missing = [text.strip().splitlines()[0] for text in expected - collected]
    extra = [text.strip().splitlines()[0] for text in collected - expected]
    assert missing == [], f"examples doctest does not collect: {missing}"
    assert extra == [], f"examples collected twice: {extra}"


def test_no_example_imports_test_code() -> None:
    # Examples are for users: a Redis example names `redis_url` (src/conftest.py
    # supplies a private server under pytest), never tests.redis_support.
    offenders = []
    for text in _docstrings_with_examples():
        for example in doctest.DocTestParser().get_examples(text):
            if re.search(r"^\s*(from|import)\s+tests\b", example.source, flags=re.MULTILINE):
                offenders.append(example.source.strip())
    assert offenders == []


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


def test_private_modules_import_submodules_of_the_root_never_its_names() -> None:
    # Private modules importing the package root make import order fragile:
    # `from foundation import X` is allowed only for a submodule X.
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if not _private(".".join(path.relative_to(ROOT).parts)):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(a.name == "foundation" for a in node.names):
                offenders.append(f"{path.name}: import foundation")
            if isinstance(node, ast.ImportFrom) and node.module == "foundation" and node.level == 0:
                for alias in node.names:
                    if importlib.util.find_spec(f"foundation.{alias.name}") is None:
                        where = path.relative_to(ROOT)
                        offenders.append(f"{where}: from foundation import {alias.name}")
    assert offenders == []
    for name in _all_modules():
        importlib.import_module(name)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_import_foundation_imports_no_optional_extra() -> None:
    result = _run(
        "import sys, foundation\n"
        f"extras = {EXTRAS!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in extras))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_foundation_works_without_redis_and_names_the_extra_when_a_redis_class_is_built() -> None:
    # sys.modules["redis"] = None makes every `import redis` fail, as if the
    # extra were not installed.
    result = _run(
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "import foundation\n"
        "from foundation import FeatureFlags, Flag, MemoryRegistry, RedisFlagStore, RedisRegistry\n"
        "with MemoryRegistry() as registry:\n"
        "    assert len(registry) == 0\n"
        "assert FeatureFlags([Flag('f', default=True)]).enabled('f')\n"
        "for cls in (RedisRegistry, RedisFlagStore):\n"
        "    try:\n"
        "        cls('redis://127.0.0.1:1/0')\n"
        "    except ImportError as exc:\n"
        "        assert 'foundation[redis]' in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError(cls)\n"
        "print('OK')\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"


def _documented_imports() -> list[tuple[str, str, str]]:
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for block in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL):
            for node in ast.walk(ast.parse(block)):
                if not isinstance(node, ast.ImportFrom) or node.module is None:
                    continue
                if node.module.startswith("foundation"):
                    found += [(doc.name, node.module, a.name) for a in node.names]
    return found


def test_every_name_the_docs_import_is_declared_public() -> None:
    imports = _documented_imports()
    assert len(imports) >= 10
    undeclared = []
    for doc, module_name, name in imports:
        assert not _private(module_name), f"{doc} imports from private {module_name}"
        module = importlib.import_module(module_name)
        if name not in getattr(module, "__all__", ()) and not importlib.util.find_spec(
            f"{module_name}.{name}"
        ):
            undeclared.append(f"{doc}: from {module_name} import {name}")
    assert undeclared == []
