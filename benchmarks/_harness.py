"""Tiny benchmark harness: interleaved timing and a table of ratios.

Machines are shared and noisy, so an absolute time is not a result: every row
compares two things measured in the same run, interleaved, and reports the
ratio of their best (minimum) per-operation times.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from statistics import median

__all__ = ["Row", "compare", "per_op"]


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    ``value`` is the measured figure (a ratio unless ``unit`` says otherwise);
    ``target`` is a human-readable target such as ``"<= 2.5x"``; ``passed`` is
    None when the row is informational.
    """

    section: str
    what: str
    against: str
    value: float
    unit: str
    target: str
    passed: bool | None
    detail: str = ""


def per_op(fn: Callable[[int], None], n: int, *, repeat: int = 7) -> float:
    """Best seconds per operation of ``fn(n)`` (which performs ``n`` operations)."""
    best = float("inf")
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn(n)
            best = min(best, (time.perf_counter() - t0) / n)
    finally:
        if gc_was_enabled:
            gc.enable()
    return best


def compare(
    subject: Callable[[int], None],
    baseline: Callable[[int], None],
    n: int,
    *,
    rounds: int = 5,
    repeat: int = 3,
) -> tuple[float, float, float]:
    """Interleave subject and baseline; return (ratio, subject s/op, baseline s/op).

    Each round times both, back to back (alternating which goes first), and
    yields one ratio; the result is the median ratio over the rounds, so a
    noisy neighbour that slows one round skews neither side alone. The
    per-operation times returned are the medians of each side's round bests.
    """
    ratios: list[float] = []
    subject_times: list[float] = []
    baseline_times: list[float] = []
    for i in range(max(rounds, 3)):
        if i % 2:
            b = per_op(baseline, n, repeat=repeat)
            s = per_op(subject, n, repeat=repeat)
        else:
            s = per_op(subject, n, repeat=repeat)
            b = per_op(baseline, n, repeat=repeat)
        ratios.append(s / b)
        subject_times.append(s)
        baseline_times.append(b)
    return median(ratios), median(subject_times), median(baseline_times)
