"""What ``import foundation`` costs, next to ``python -c pass`` and ``import asyncio``.

Each round starts one fresh interpreter per command, interleaved, and times it
wall-clock; a row reports the median of the rounds (target: ``import
foundation`` <= 60 ms, as installed). Two settings:

- as installed: bytecode cached (a private ``PYTHONPYCACHEPREFIX``, filled by
  one warm-up run), as after ``pip install``;
- no bytecode: ``PYTHONDONTWRITEBYTECODE=1`` with no cache, so every run
  compiles foundation's sources (how a checkout runs when the environment
  sets that variable): informational.

One more row counts the heavy standard modules that ``import foundation``
pulls in (``tests/test_import_cost.py`` checks them one by one).
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from statistics import median

from tests.test_import_cost import HEAVY  # one list: the test's

from benchmarks._harness import Row

SECTION = "import"
ROUNDS = 10
TARGET_MS = 60.0
COMMANDS = {
    "python -c pass": "pass",
    "import asyncio": "import asyncio",
    "import foundation": "import foundation",
}


def _env(cache: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPYCACHEPREFIX", None)
    if cache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = cache
    return env


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(code: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one fresh interpreter running ``code``."""
    cpu, start = _cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - start, _cpu() - cpu


def _medians_ms(env: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) ms per command over interleaved rounds (order rotates).

    CPU time (the child's user + system) is reported next to wall time: on a
    shared, loaded machine it moves far less than wall time does.
    """
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    names = list(COMMANDS)
    for i in range(ROUNDS):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            times[name].append(_timed(COMMANDS[name], env))
    return {
        name: (median(w for w, _ in t) * 1000, median(c for _, c in t) * 1000)
        for name, t in times.items()
    }


def _importtime_ms(env: dict[str, str]) -> float:
    """Median of what ``-X importtime`` reports for ``foundation`` (cumulative)."""
    totals = []
    for _ in range(ROUNDS):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import foundation"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        found = re.search(r"^import time:\s+\d+ \|\s+(\d+) \| foundation$", err, re.MULTILINE)
        assert found, err[-500:]
        totals.append(int(found.group(1)) / 1000)
    return median(totals)


def _row(label: str, env: dict[str, str], target: bool) -> Row:
    ms = _medians_ms(env)
    (base, base_cpu), (aio, aio_cpu), (ours, ours_cpu) = (
        ms["python -c pass"],
        ms["import asyncio"],
        ms["import foundation"],
    )
    return Row(
        SECTION,
        f"import foundation, {label} (median of {ROUNDS} fresh runs)",
        "python -c pass / import asyncio",
        ours,
        " ms",
        f"<= {TARGET_MS:.0f} ms" if target else "info",
        (ours <= TARGET_MS) if target else None,
        f"wall: pass {base:.1f}, import asyncio {aio:.1f}, import foundation {ours:.1f} ms "
        f"(+{ours - base:.1f} over pass, {ours / aio:.2f}x import asyncio); "
        f"CPU: pass {base_cpu:.1f}, import asyncio {aio_cpu:.1f}, import foundation "
        f"{ours_cpu:.1f} ms; -X importtime: foundation {_importtime_ms(env):.1f} ms",
    )


def _heavy_row(env: dict[str, str]) -> Row:
    code = (
        f"import sys\nimport foundation\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    found = [m for m in out.split(",") if m]
    return Row(
        SECTION,
        "heavy standard modules imported by import foundation",
        f"{len(HEAVY)} checked",
        float(len(found)),
        "",
        "0",
        not found,
        ", ".join(found) or "none",
    )


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="foundation-bench-pyc-") as cache:
        installed = _env(cache)
        for code in COMMANDS.values():  # warm-up: compile into the private cache
            subprocess.run([sys.executable, "-c", code], env=installed, check=True)
        rows = [_row("as installed (bytecode cached)", installed, target=True)]
        rows.append(_row("no bytecode (PYTHONDONTWRITEBYTECODE=1)", _env(None), target=False))
        rows.append(_heavy_row(installed))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
