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

from tests.chaos._harness import LOG_PREFIX, RESULT_PREFIX

REPO: Final = Path(__file__).resolve().parents[2]
SCENARIO_TIMEOUT: Final = 100.0
WORKERS: Final = 4

# What a dead thread, a raw error or a broken report leaves on stderr.
_DEATH_SIGNS: Final = (
    "Traceback (most recent call last)",
    "Exception in thread",
    "Exception ignored",
    "--- Logging error ---",
    "Fatal Python error",
)
# The one exception a documented ``sys.unraisablehook`` report may carry.
_OUR_LISTENER_ERROR: Final = "ChaosListenerError"

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


def _is_foundation_record(line: str) -> bool:
    return line.startswith((f"{LOG_PREFIX}foundation.", f"{LOG_PREFIX}foundation]"))


def stray_errors(stderr: str) -> list[str]:
    """Signs of a dead thread or a raw error on stderr, outside ``foundation.`` log records.

    Records of other loggers count when they are errors (asyncio logs a callback's
    exception that way).
    A ``sys.unraisablehook`` report in the default hook's format ("Exception
    ignored in ...") is allowed only when it carries the scenario's own
    ``ChaosListenerError`` (a documented report of a listener's error).
    """
    raw = [line for line in stderr.splitlines() if not _is_foundation_record(line)]
    found: list[str] = []
    i = 0
    while i < len(raw):
        if raw[i].startswith(LOG_PREFIX):
            # Records of another logger (asyncio's "Exception in callback", say):
            # one finding per run of its lines, if they report an error.
            prefix = raw[i].split("]", 1)[0] + "]"
            end = i
            while end < len(raw) and raw[end].startswith(prefix):
                end += 1
            block = raw[i:end]
            levels = (line[len(prefix) :].lstrip() for line in block)
            if any(sign in line for line in block for sign in _DEATH_SIGNS) or any(
                text.startswith(("ERROR", "CRITICAL")) for text in levels
            ):
                found.append("\n".join(block[:40]))
            i = end
            continue
        if not any(sign in raw[i] for sign in _DEATH_SIGNS):
            i += 1
            continue
        block, i = _traceback_block(raw, i)
        ours = block[0].startswith("Exception ignored") and block[-1].split(":", 1)[0].endswith(
            _OUR_LISTENER_ERROR
        )
        if not ours:
            found.append("\n".join(block))
    return found


def _traceback_block(lines: list[str], start: int) -> tuple[list[str], int]:
    """The report starting at ``lines[start]``, up to its exception line; and the next index."""
    block = [lines[start]]
    i = start + 1
    while i < len(lines) and len(block) < 60:
        text = lines[i]
        block.append(text)
        i += 1
        # The exception line: the first unindented line that is not a traceback
        # header or a chained-exception separator.
        if text and not text.startswith(
            (" ", "Traceback", "During handling", "The above", "Exception in thread")
        ):
            break
    return block, i


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
