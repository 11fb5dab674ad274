"""`import foundation` stays cheap: the heavy standard modules are imported by
the calls that need them, not by the import (issue 11 item 10).

Structural, never timed: each test runs a fresh interpreter and looks at
``sys.modules``. ``benchmarks/bench_import.py`` reports the times.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import pytest

# Each of these costs milliseconds to import and is needed only by some calls:
# asyncio (with ssl, socket, selectors, concurrent.futures, subprocess) only by
# supervisors and asyncio agents, sqlite3/uuid/random only by a SQLite or Redis
# flag store, tomllib/pathlib only to read a config file, ctypes and
# multiprocessing only by OS-process children, secrets/urllib.parse/fractions
# only by Redis backends and percentage rollouts.
HEAVY = (
    "asyncio",
    "ssl",
    "socket",
    "selectors",
    "concurrent.futures",
    "subprocess",
    "multiprocessing",
    "ctypes",
    "sqlite3",
    "uuid",
    "random",
    "secrets",
    "tomllib",
    "pathlib",
    "urllib.parse",
    "fractions",
    "hashlib",  # OpenSSL: flags hash with CPython's own SHA-256 (flags._hashing)
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _imported_by_import_foundation() -> set[str]:
    result = _run(
        f"""
        import sys
        before = set(sys.modules)
        import foundation
        print(sorted(m for m in {HEAVY!r} if m in sys.modules and m not in before))
        """
    )
    assert result.returncode == 0, result.stderr
    return set(ast.literal_eval(result.stdout))


@pytest.fixture(scope="module")
def imported() -> set[str]:
    return _imported_by_import_foundation()


@pytest.mark.parametrize("module", HEAVY)
def test_import_foundation_does_not_import(module: str, imported: set[str]) -> None:
    assert module not in imported


def test_the_interpreter_does_not_import_them_before_foundation() -> None:
    # Otherwise the test above could not fail: every HEAVY module must be
    # absent from a bare interpreter (then only `import foundation` can add it).
    result = _run(f"import sys; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


_ASYNC_AGENTS = """
    import asyncio
    import concurrent.futures
    import subprocess
    import threading

    fired = []
    done = threading.Event()

    def on_down(down):
        fired.append(down.reason)
        done.set()

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(stop.wait())
        fut = asyncio.get_running_loop().create_future()
        with MemoryRegistry() as registry:
            registry.register("task", task)
            registry.register("fut", fut)
            assert is_alive(task) and is_alive(fut)
            assert describe_agent(task)["kind"] == "task"
            assert describe_agent(fut)["kind"] == "future"
            task.cancel()
            fut.set_result(None)
            # Their done-callbacks run on this loop: yield to it until the
            # registry has dropped both (bounded by a deadline).
            deadline = asyncio.get_running_loop().time() + 10
            while len(registry) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0)
            assert len(registry) == 0, "a dead task or future stays registered"

    asyncio.run(main())

    with MonitorManager() as manager:
        cf = concurrent.futures.Future()
        assert describe_agent(cf)["kind"] == "future"
        manager.monitor(cf, on_down)
        cf.set_result(1)
        assert done.wait(10) and fired == ["normal"], fired

        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        assert describe_agent(proc)["kind"] == "process"
        done.clear()
        manager.monitor(proc, on_down)
        assert done.wait(30), "no Down for a Popen"
        proc.wait()
"""

_PROCESS_AGENTS = """
    import multiprocessing

    mp = multiprocessing.get_context("spawn").Process(target=int)
    assert describe_agent(mp)["kind"] == "process"
    assert not is_alive(mp)  # never started
    with MonitorManager() as manager, MemoryRegistry() as registry:
        reasons = []
        manager.monitor(mp, lambda down: reasons.append(down.reason))
        assert reasons == ["noproc"], reasons  # never started: it cannot die later
        mp.start()
        registry.register("mp", mp)
        assert is_alive(mp)
        mp.join(30)
        assert not is_alive(mp)
"""


@pytest.mark.parametrize(
    ("modules", "body"),
    [
        pytest.param(
            ("asyncio", "concurrent.futures", "subprocess"),
            _ASYNC_AGENTS,
            id="asyncio-concurrent-popen",
        ),
        pytest.param(("multiprocessing",), _PROCESS_AGENTS, id="multiprocessing"),
    ],
)
def test_agents_of_modules_imported_after_foundation_are_recognised(
    modules: tuple[str, ...], body: str
) -> None:
    # foundation looks these classes up in sys.modules instead of importing
    # their modules (liveness/_types.py): agents created after `import
    # foundation` are still monitored, registered and described as before.
    preamble = f"""
    import sys
    import foundation
    from foundation import MemoryRegistry, MonitorManager
    from foundation.liveness import describe_agent, is_alive

    for name in {modules!r}:
        assert name not in sys.modules, name + " imported by import foundation"
    """
    result = _run(textwrap.dedent(preamble) + textwrap.dedent(body) + "print('OK')\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"


# Implementation modules that only a constructed object needs: the class
# names them under TYPE_CHECKING and its constructor imports them through
# one module-level `_load_implementation()` (the one way, foundation._public).
DEFERRED = {
    "foundation.registry.RedisRegistry": (
        "foundation.registry._redis._arguments",
        "foundation.registry._redis._batch",
        "foundation.registry._redis._claims",
        "foundation.registry._redis._lease",
        "foundation.registry._redis._lifecycle",
        "foundation.registry._redis._mirror",
        "foundation.registry._redis._prepare",
        "foundation.registry._redis._replies",
        "foundation.registry._redis._scripts",
        "foundation.registry._redis._shared",
        "foundation.registry._redis._state",
        "foundation.registry._redis._tail",
        "foundation.registry._redis._update",
    ),
}


def test_import_foundation_does_not_import_deferred_implementations() -> None:
    modules = sorted(m for ms in DEFERRED.values() for m in ms)
    result = _run(
        f"""
        import sys
        import foundation
        print([m for m in {modules!r} if m in sys.modules])
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("public", sorted(DEFERRED))
def test_the_constructor_imports_its_deferred_implementation(public: str) -> None:
    # A constructor that fails its argument checks has already loaded them
    # (first statement): no Redis server, nor the redis extra, is needed here.
    package, name = public.rsplit(".", 1)
    result = _run(
        f"""
        import importlib
        import sys
        cls = getattr(importlib.import_module({package!r}), {name!r})
        try:
            cls("not-a-redis-url")
        except (ImportError, ValueError):
            pass
        print([m for m in {DEFERRED[public]!r} if m not in sys.modules])
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# Building a dataclass compiles five or six methods (about a millisecond
# each class at import): `import foundation` builds only public records.


def test_import_foundation_builds_dataclasses_only_for_public_records() -> None:
    result = _run(
        """
        import dataclasses
        import sys
        import foundation

        public = set()
        for name, module in list(sys.modules.items()):
            if name.startswith("foundation") and not any(
                part.startswith("_") for part in name.split(".")
            ):
                public.update(id(getattr(module, n)) for n in getattr(module, "__all__", ()))
        private = set()
        for name, module in list(sys.modules.items()):
            if not name.startswith("foundation"):
                continue
            for value in list(vars(module).values()):
                if isinstance(value, type) and dataclasses.is_dataclass(value):
                    if id(value) not in public:
                        private.add(value.__module__ + "." + value.__qualname__)
        print(sorted(private))
        """
    )
    assert result.returncode == 0, result.stderr
    assert ast.literal_eval(result.stdout) == []
