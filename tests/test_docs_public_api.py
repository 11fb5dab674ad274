"""The public API as the docs present it: every public module, its paths, its help().

tests/test_public_api.py pins the four core packages and ``foundation``; this
file walks every public module (any ``foundation`` module path without a
``_`` component, the extras' modules included) as a user browsing the docs
would: each exported class or function reports a public module that holds it,
``help()`` renders without leaking the environment or object addresses, and
``import foundation`` loads no extra at all.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import pydoc
import re
import subprocess
import sys

import pytest

import foundation

PUBLIC_MODULES = [
    "foundation",
    *sorted(
        m.name
        for m in pkgutil.walk_packages(foundation.__path__, "foundation.")
        if not any(part.startswith("_") for part in m.name.split("."))
    ),
]

# Every optional extra of pyproject.toml, and the CLI frameworks a user might expect.
EXTRAS = (
    "redis",
    "hiredis",
    "rich",
    "starlette",
    "uvicorn",
    "prometheus_client",
    "opentelemetry",
    "openfeature",
    "click",
    "typer",
    "httpx",
)


def _private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def _exports(name: str) -> list[tuple[str, object]]:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    return [(n, getattr(module, n)) for n in exported]


def test_the_public_modules_are_the_documented_ones() -> None:
    documented = {
        "foundation",
        "foundation.registry",
        "foundation.liveness",
        "foundation.flags",
        "foundation.supervision",
        "foundation.application",
        "foundation.errors",
        "foundation.telemetry",
        "foundation.metrics",
        "foundation.otel",
        "foundation.openfeature",
        "foundation.admin",
        "foundation.cli",
    }
    assert set(PUBLIC_MODULES) == documented


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_export_reports_a_public_module_that_holds_it(name: str) -> None:
    wrong = []
    for export, obj in _exports(name):
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # constants, modules, typing aliases
        module = obj.__module__
        if _private(module) or not module.startswith("foundation"):
            wrong.append(f"{export}: {module}")
        elif getattr(importlib.import_module(module), obj.__name__, None) is not obj:
            wrong.append(f"{export}: {module} does not hold it")
    assert not wrong, f"{name}: {wrong}"


def _public_objects() -> list[tuple[str, object]]:
    seen: dict[int, tuple[str, object]] = {}
    for name in PUBLIC_MODULES:
        for export, obj in _exports(name):
            if inspect.isclass(obj) or inspect.isfunction(obj):
                seen.setdefault(id(obj), (f"{name}.{export}", obj))
    return list(seen.values())


OBJECTS = _public_objects()


@pytest.mark.parametrize(("label", "obj"), OBJECTS, ids=[label for label, _ in OBJECTS])
def test_help_is_sensible_and_leaks_nothing(label: str, obj: object) -> None:
    text = pydoc.render_doc(obj, renderer=pydoc.plaintext)
    assert inspect.getdoc(obj), f"{label} has no docstring"
    assert "environ(" not in text, f"help({label}) shows os.environ"
    secrets = [v for k, v in os.environ.items() if len(v) >= 8 and k not in {"PWD", "HOME"}]
    leaked = [v for v in secrets if v in text]
    assert not leaked, f"help({label}) shows environment values"
    assert not re.search(r" at 0x[0-9a-f]+>", text), f"help({label}) shows an object address"


def test_import_foundation_loads_no_extra() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, foundation\n"
            f"extras = {EXTRAS!r}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in extras))\n",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
