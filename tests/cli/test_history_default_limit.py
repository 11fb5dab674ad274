"""``foundation flags history`` shows the last 100 records by default, as the admin
API's ``GET /api/history``, and says how many more the store holds.

Was: without ``--limit`` it printed every stored record (3,000 changes gave 3,002
lines; with ``history_limit="unlimited"`` there was no bound at all).
"""

from __future__ import annotations

import json
from pathlib import Path

from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
from tests.cli._support import ok_json, run_cli

CHANGES = 130


def _store(path: Path) -> str:
    """A store holding ``CHANGES`` records of one flag (percentages 0, 0.5, 1, ...)."""
    with (
        SQLiteFlagStore(path, history_limit=None) as store,
        FeatureFlags([Flag("beta")], store=store) as flags,
    ):
        for p in range(CHANGES):
            flags.set_percentage("beta", p / 2, by="ana")
    return f"sqlite:///{path}"


def test_json_gives_the_last_100_and_counts_the_rest(tmp_path: Path) -> None:
    url = _store(tmp_path / "flags.db")
    result = run_cli("flags", "history", "--store", url, cwd=tmp_path)
    data = ok_json(result)
    shown = [c["new"]["percentage"] * 2 for c in data["changes"]]
    assert shown == list(range(CHANGES - 100, CHANGES))  # the last 100, oldest first
    assert data["more"] == CHANGES - 100
    assert data["history_limit"] == 10_000  # the command's store: the default bound
    assert result.stderr == ""  # JSON says it in its field
    every = ok_json(run_cli("flags", "history", "--limit", "500", "--store", url, cwd=tmp_path))
    assert len(every["changes"]) == CHANGES
    assert every["more"] == 0


def test_text_says_how_many_more_on_stderr(tmp_path: Path) -> None:
    url = _store(tmp_path / "flags.db")
    result = run_cli("flags", "history", "beta", "--text", "--store", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "  beta  " in line]
    assert len(rows) == 100
    more = CHANGES - 100
    assert result.stderr == f"... {more} earlier changes not shown: --limit {CHANGES} to see them\n"
    with_all = run_cli(
        "flags", "history", "--limit", str(CHANGES), "--text", "--store", url, cwd=tmp_path
    )
    assert with_all.returncode == 0, with_all.stderr
    assert with_all.stderr == ""
    assert sum("  beta  " in line for line in with_all.stdout.splitlines()) == CHANGES


def test_one_more_is_said_in_the_singular(tmp_path: Path) -> None:
    url = _store(tmp_path / "flags.db")
    limit = str(CHANGES - 1)
    result = run_cli("flags", "history", "--limit", limit, "--text", "--store", url, cwd=tmp_path)
    assert result.stderr == f"... 1 earlier change not shown: --limit {CHANGES} to see it\n"


def test_help_documents_the_default(tmp_path: Path) -> None:
    result = run_cli("flags", "history", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "--limit N the last N changes (default 100" in text, text


def test_an_empty_store_history_is_an_empty_list(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store, FeatureFlags([Flag("beta")], store=store):
        pass
    result = run_cli("flags", "history", "--store", f"sqlite:///{path}", cwd=tmp_path)
    assert json.loads(result.stdout) == {"changes": [], "more": 0, "history_limit": 10_000}
