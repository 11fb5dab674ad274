"""Flag history retention's cost, one way for every store: commits that trim
against commits that never do, interleaved in one run (``compare``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from benchmarks._harness import Row, compare
from foundation.flags import FeatureFlags, Flag, FlagStore

TRIM_TARGET = 1.3  # commits that trim cost at most 30 % more than commits that never do


def trim_cost_row(
    section: str,
    declared: Sequence[Flag],
    trimmed: FlagStore,
    unbounded: FlagStore,
    *,
    limit: int,
    n: int,
    entries: str,
) -> Row:
    """``set_percentage`` commits on ``trimmed`` (``history_limit=limit``, filled
    to the limit first, so a trim of ``limit // 10`` lands every ``limit // 10``
    commits) against ``unbounded`` (``history_limit=None``); ``n`` commits per
    timed run. ``entries`` names what the store keeps ("rows", "entries")."""
    with (
        FeatureFlags(declared, store=trimmed) as on_trimmed,
        FeatureFlags(declared, store=unbounded) as on_unbounded,
    ):
        counter = iter(range(10**9))

        def commits(flags: FeatureFlags) -> Callable[[int], None]:
            def body(count: int) -> None:
                for _ in range(count):
                    flags.set_percentage("beta", next(counter) % 100)

            return body

        for flags in (on_trimmed, on_unbounded):  # both at the limit before timing
            commits(flags)(limit + limit // 20)
        ratio, t_s, u_s = compare(commits(on_trimmed), commits(on_unbounded), n, rounds=5, repeat=3)
        kept = len(trimmed.history())
    return Row(
        section,
        f"commit (set_percentage), history_limit={limit}: trims during the run",
        "history_limit=None",
        ratio,
        "x",
        f"<= {TRIM_TARGET:g}x",
        ratio <= TRIM_TARGET,
        f"{t_s * 1e6:.0f} us vs {u_s * 1e6:.0f} us per commit; {kept} {entries} kept "
        f"(a trim of {limit // 10} every {limit // 10} commits)",
    )
