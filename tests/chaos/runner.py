"""The pytest side of the chaos suite: run scenario processes, read their output.

Each scenario is a module run as ``sys.executable -m <module> <arg>`` from the
repository root: a plain interpreter with its default ``sys.unraisablehook``
and ``threading.excepthook`` (pytest's are not involved). It prints one
``CHAOS-RESULT {json}`` line of facts. Scenarios run a few at a time
(``WORKERS``) so the suite stays within about a minute and a half on 2 cores;
each is isolated (its own redis-server, namespace and processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tests._stderr import Expected
from tests._stderr import stray_errors as _stray_errors
from tests.chaos._harness import LOG_PREFIX, RESULT_PREFIX

REPO: Final = Path(__file__).resolve().parents[2]
SCENARIO_TIMEOUT: Final = 100.0
WORKERS: Final = 4

# The one exception a documented ``sys.unraisablehook`` report may carry.
_OUR_LISTENER_ERROR: Final = Expected("Exception ignored", "ChaosListenerError")

Job = tuple[str, str]


@dataclass(frozen=True)
class Outcome:
    job: Job
    returncode: int
    result: dict[str, Any] | None
    stdout: str
    stderr: str


def run_job(job: Job) -> Outcome:
    module, arg = job
    # A session of its own: on a timeout, the whole group goes (the scenario, its
    # node processes and its redis-server), so nothing outlives the test.
    proc = subprocess.Popen(
        [sys.executable, "-m", module, arg],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=SCENARIO_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\n[chaos] the scenario timed out after {SCENARIO_TIMEOUT}s and was killed"
    result = None
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
    return Outcome(job, proc.returncode, result, stdout, stderr)


class ScenarioPool:
    """Starts every selected scenario at once (``WORKERS`` at a time)."""

    def __init__(self, jobs: Iterable[Job]) -> None:
        self._executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="chaos")
        self._futures: dict[Job, Future[Outcome]] = {}
        for job in jobs:
            self.submit(job)

    def submit(self, job: Job) -> Future[Outcome]:
        if job not in self._futures:
            self._futures[job] = self._executor.submit(run_job, job)
        return self._futures[job]

    def outcome(self, job: Job) -> Outcome:
        return self.submit(job).result(timeout=SCENARIO_TIMEOUT + 10)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- judging


_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_line(line: str) -> tuple[str, str] | None:
    """(logger, level; "" past the first line) for a line of a log record, else None.

    Every line of a record carries the logger's prefix (``_harness._PrefixFormatter``).
    """
    if not line.startswith(LOG_PREFIX):
        return None
    name, _, text = line[len(LOG_PREFIX) :].partition("]")
    word = text.lstrip().split(" ", 1)[0]
    return name, word if word in _LEVELS else ""


def stray_errors(stderr: str) -> list[str]:
    """Signs of a dead thread or a raw error on stderr, outside ``foundation.`` log records.

    Records of other loggers count when they are errors (asyncio logs a callback's
    exception that way).
    A ``sys.unraisablehook`` report in the default hook's format ("Exception
    ignored in ...") is allowed only when it carries the scenario's own
    ``ChaosListenerError`` (a documented report of a listener's error).
    The check is ``tests._stderr.stray_errors``, shared with ``run_scenario``.
    """
    return _stray_errors(stderr, _log_line, (_OUR_LISTENER_ERROR,))


def died_threads(baseline: list[str], final: list[str]) -> list[str]:
    """Library threads alive at the baseline and gone at the end (same names counted)."""
    return sorted((Counter(baseline) - Counter(final)).elements())


def raw_exceptions(exceptions: list[dict[str, Any]]) -> list[str]:
    """Exceptions from public calls that are not ``FoundationError``."""
    return [
        f"{e['call']} raised {e['type']}: {e['message']}\n{e['traceback']}"
        for e in exceptions
        if not e["foundation"]
    ]
