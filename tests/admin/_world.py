"""The world the admin tests serve: declared flags, a two-stage plan, operators.

Run as a program it is "another process" writing the same SQLite store::

    python -m tests.admin._world PATH enable FLAG      (prints OK)
"""

from __future__ import annotations

import sys
from pathlib import Path

from foundation.flags import (
    DEFAULT_FLAGS,
    FeatureFlags,
    Flag,
    Migration,
    MigrationPlan,
    SQLiteFlagStore,
    Stage,
)

DECLARED = [
    Flag("new_checkout", description="the 2026 checkout"),
    Flag("dark_mode", default=True, description="dark theme for everyone"),
    Flag("search_v2", description="the rewritten search"),
    Flag(
        "theme",
        variants={"light": "#ffffff", "dark": "#101418", "sepia": "#f4ecd8"},
        default="light",
        description="page colours",
    ),
    *DEFAULT_FLAGS,
]
PLAN = MigrationPlan(
    [
        Stage(1, "registry", ["use_ets_agent_registry"]),
        Stage(2, "monitoring", ["enable_migration_monitoring"], risk="medium"),
    ]
)
TOKENS = ["ana:ana-secret", "bo:bo-secret"]
ANA = {"Authorization": "Bearer ana-secret"}
BO = {"Authorization": "Bearer bo-secret"}


def open_world(path: Path) -> tuple[SQLiteFlagStore, FeatureFlags, Migration]:
    store = SQLiteFlagStore(path)
    flags = FeatureFlags(DECLARED, store=store)
    return store, flags, Migration(flags, PLAN)


def main(argv: list[str]) -> int:
    path, action, flag = argv
    store, flags, _ = open_world(Path(path))
    try:
        if action == "enable":
            flags.enable(flag, by="other-process", reason="changed elsewhere")
        elif action == "percentage":
            flags.set_percentage(flag, 42, by="other-process", reason="changed elsewhere")
        else:
            raise SystemExit(f"unknown action {action!r}")
    finally:
        flags.close()
        store.close()
    print("OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
