"""Small things a new user of the command met, each fixed and checked by running it.

- ``flags allow NAME "   "`` wrote a blank actor (shown as nothing): now the
  library's rule (no blank stored actor) refuses it, exit 2, nothing written.
- A blank ``--by`` is refused by the flags' own rule, labelled as the library's
  error (``InvalidFlagValue``), for flag writes and migration steps alike.
- ``agents show true`` was ``InvalidKey`` without a word on quoting.
- ``agents list --text`` printed a 60 KB metadata value whole in its row.
- A misspelt table (``[clii]``) in ``foundation.toml`` was ignored by the command,
  though ``Application`` refuses unknown sections.
- The migration log line ended ``by ana (None)`` when no reason was given.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, SQLiteFlagStore
from foundation.flags._migration import DEFAULT_FLAGS
from tests.cli._support import ok_json, one_line_error, run_cli
from tests.cli.test_agents_cli import Node
from tests.redis_support import RedisServer


def _store(path: Path) -> str:
    with SQLiteFlagStore(path) as store, FeatureFlags([Flag("beta"), *DEFAULT_FLAGS], store=store):
        pass
    return f"sqlite:///{path}"


def _history(url: str, cwd: Path) -> list[object]:
    changes: list[object] = ok_json(run_cli("flags", "history", "--store", url, cwd=cwd))["changes"]
    return changes


@pytest.mark.parametrize("actor", ["   ", "\t", "\n "])
@pytest.mark.parametrize("action", ["allow", "deny"])
def test_a_blank_actor_is_refused_and_nothing_written(
    tmp_path: Path, action: str, actor: str
) -> None:
    url = _store(tmp_path / "flags.db")
    result = run_cli("flags", action, "beta", actor, "--store", url, cwd=tmp_path)
    line = one_line_error(result, exit_code=2)
    assert line.startswith("InvalidFlagValue: an actor written to the store must not be blank")
    assert _history(url, tmp_path) == []


@pytest.mark.parametrize("by", ["", "   ", "\n"])
@pytest.mark.parametrize(
    "command", [("flags", "enable", "beta"), ("migration", "advance")], ids=" ".join
)
def test_a_blank_by_is_the_library_s_error_and_nothing_written(
    tmp_path: Path, by: str, command: tuple[str, ...]
) -> None:
    path = tmp_path / "flags.db"
    url = _store(path)
    with SQLiteFlagStore(path) as store, FeatureFlags.from_store(store) as flags:
        Migration(flags, MigrationPlan.default())
    result = run_cli(*command, "--by", by, "--store", url, cwd=tmp_path)
    line = one_line_error(result, exit_code=2)
    assert line.startswith("InvalidFlagValue: --by names who makes the change: not empty or blank")
    assert line.endswith("(the history would record nobody); leave it out for the OS user")
    assert _history(url, tmp_path) == []


@pytest.fixture
def node(redis_server: RedisServer) -> Iterator[tuple[Node, tuple[str, ...]]]:
    namespace = f"cli-{uuid.uuid4().hex[:10]}"
    n = Node(redis_server.url, namespace)
    yield n, ("--redis", redis_server.url, "--namespace", namespace)
    n.close()


def test_show_of_a_refused_json_key_says_how_to_quote_it(
    node: tuple[Node, tuple[str, ...]], tmp_path: Path
) -> None:
    agent, where = node
    agent.do(op="register", key="true", meta={})
    line = one_line_error(run_cli(*where, "agents", "show", "true", cwd=tmp_path))
    assert line.startswith("InvalidKey: "), line
    assert line.endswith(
        "'true' was read as JSON: for the string key, quote it (foundation agents show '\"true\"')"
    ), line
    shown = ok_json(run_cli(*where, "agents", "show", '"true"', cwd=tmp_path))
    assert shown["key"] == "true"


def test_list_text_cuts_a_long_metadata_value_json_keeps_it(
    node: tuple[Node, tuple[str, ...]], tmp_path: Path
) -> None:
    agent, where = node
    big = "x" * 60_000
    agent.do(op="register", key="big", meta={"blob": big})
    text = run_cli(*where, "agents", "list", "--text", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    row = next(line for line in text.stdout.splitlines() if line.startswith("big "))
    assert row.endswith('{"blob": "' + "x" * 187 + "..."), row[-300:]
    assert len(row) < 400
    listed = ok_json(run_cli(*where, "agents", "list", "--json", cwd=tmp_path))
    assert listed[0]["metadata"] == {"blob": big}


def test_an_unknown_table_in_foundation_toml_is_refused(tmp_path: Path) -> None:
    url = _store(tmp_path / "flags.db")
    config = tmp_path / "foundation.toml"
    config.write_text(f'[clii]\nstore = "{url}"\n')
    line = one_line_error(run_cli("flags", "list", cwd=tmp_path))
    assert line == (
        f"InvalidConfig: invalid config in {config}: unknown section [clii] (did you mean [cli]?)"
    )


def test_the_tables_an_application_reads_are_left_to_it(tmp_path: Path) -> None:
    url = _store(tmp_path / "flags.db")
    (tmp_path / "foundation.toml").write_text(
        '[registry]\nbackend = "memory"\n[flag_store]\nkind = "memory"\n'
        "[flags]\nbeta = true\n[migration]\nhealth_interval = 5.0\n"
        f'[cli]\nstore = "{url}"\n'
    )
    names = [row["name"] for row in ok_json(run_cli("flags", "list", cwd=tmp_path))]
    assert "beta" in names


def test_the_migration_log_line_leaves_out_a_reason_not_given(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    url = _store(path)
    with SQLiteFlagStore(path) as store, FeatureFlags.from_store(store) as flags:
        Migration(flags, MigrationPlan.default())
    step = run_cli(
        "migration", "advance", "--by", "ana", "--log-level", "INFO", "--store", url, cwd=tmp_path
    )
    assert step.returncode == 0, step.stderr
    lines = [x for x in step.stderr.splitlines() if "foundation.flags.migration" in x]
    assert lines == [
        "INFO foundation.flags.migration: migration 'default': advance from stage 0 to 1 by ana"
    ]
    back = run_cli(
        "migration", "rollback", "0", "--by", "ana", "--reason", "why", "--log-level", "INFO",
        "--store", url, cwd=tmp_path,
    )  # fmt: skip
    assert back.returncode == 0, back.stderr
    assert "rollback from stage 1 to 0 by ana (why)" in back.stderr
