"""What a new user gets wrong on the command line, and what ``foundation`` says.

Each test runs the real command (``python -m foundation.cli``) in a subprocess
against a real redis-server or SQLite file: URL query parameters redis-py does
not read, a blank ``--by``, bad input judged before acting (exit 2),
``--version``, ``admin`` off loopback without ``--token``, and migration plans.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from foundation import __version__
from foundation.errors import InvalidConfig
from foundation.flags import (
    DEFAULT_FLAGS,
    FeatureFlags,
    Flag,
    Migration,
    MigrationPlan,
    RedisFlagStore,
    SQLiteFlagStore,
    Stage,
    open_store,
)
from foundation.registry._redis import RedisRegistry
from tests.cli._support import ok_json, one_line_error, run_cli
from tests.redis_support import RedisServer

FLAGS = (
    Flag("beta"),
    Flag("color", variants={"red": "#f00", "blue": "#00f"}, default="red"),
)


def _sqlite_app(path: Path, *plans: MigrationPlan) -> str:
    """An application's start over a SQLite file (flags declared, plans recorded)."""
    with SQLiteFlagStore(path) as store:
        flags = FeatureFlags([*FLAGS, Flag("search_v2"), *DEFAULT_FLAGS], store=store)
        for plan in plans:
            Migration(flags, plan)
        flags.close()
    return f"sqlite:///{path}"


# ------------------------------------------------------------ URL query parameters


@pytest.mark.parametrize(
    ("option", "query", "names"),
    [
        ("--redis", "?namespace=shop", ("'namespace'", "--namespace")),
        ("--redis", "?foo=1", ("'foo'",)),
        ("--store", "?namespace=shop&foo=1", ("'foo'",)),
    ],
)
def test_an_unknown_url_parameter_is_invalid_config_not_an_outage(
    redis_server: RedisServer, tmp_path: Path, option: str, query: str, names: tuple[str, ...]
) -> None:
    command = ("agents", "count") if option == "--redis" else ("flags", "list")
    result = run_cli(option, redis_server.url + query, *command, cwd=tmp_path)
    line = one_line_error(result)
    assert line.startswith("InvalidConfig: invalid Redis URL "), line
    assert "unknown query parameter" in line, line
    assert "TypeError" not in line, line  # redis-py's, as an outage, before the fix
    for name in names:
        assert name in line, line


def test_a_query_parameter_redis_py_reads_is_still_taken(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url + "?health_check_interval=5&client_name=ops"
    namespace = f"cli-{uuid.uuid4().hex[:8]}"
    counted = run_cli("--redis", url, "--namespace", namespace, "agents", "count", cwd=tmp_path)
    assert ok_json(counted)["count"] == 0


def test_a_library_user_gets_invalid_config_for_an_unknown_parameter(
    redis_server: RedisServer,
) -> None:
    with pytest.raises(InvalidConfig, match=r"unknown query parameter 'foo'"):
        RedisRegistry(redis_server.url + "?foo=1", namespace="lib")
    with pytest.raises(InvalidConfig, match=r"unknown query parameter 'namespace'"):
        RedisRegistry(redis_server.url + "?namespace=shop", namespace="lib")
    with pytest.raises(InvalidConfig, match=r"unknown query parameter 'namespace'"):
        RedisFlagStore(redis_server.url + "?namespace=shop", namespace="lib")
    with pytest.raises(InvalidConfig, match=r"unknown query parameter 'foo'"):
        open_store(redis_server.url + "?namespace=shop&foo=1", create=True)


def test_an_empty_store_namespace_is_invalid_config(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    result = run_cli("--store", redis_server.url + "?namespace=", "flags", "list", cwd=tmp_path)
    line = one_line_error(result)
    assert line.startswith("InvalidConfig: "), line
    assert "namespace" in line, line
    with pytest.raises(InvalidConfig, match="namespace"):
        open_store(redis_server.url + "?namespace=", create=True)


# ------------------------------------------------------------------ usage errors


@pytest.mark.parametrize("by", ["", "   "])
def test_a_blank_by_is_a_usage_error_and_writes_nothing(tmp_path: Path, by: str) -> None:
    url = _sqlite_app(tmp_path / "flags.db")
    result = run_cli("flags", "enable", "beta", "--by", by, "--store", url, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--by" in result.stderr
    assert ok_json(run_cli("flags", "history", "--store", url, cwd=tmp_path))["changes"] == []
    step = run_cli("migration", "advance", "--by", by, "--store", url, cwd=tmp_path)
    assert step.returncode == 2, (step.stdout, step.stderr)


@pytest.mark.parametrize(
    ("args", "label"),
    [
        (("split", "color", "red=90", "blue=20"), "InvalidFlagValue"),
        (("split", "color", "rde=100"), "InvalidFlagValue"),
        (("percentage", "beta", "150"), "InvalidFlagValue"),
        (("assign", "color", "qa-1", "bleu"), "InvalidFlagValue"),
    ],
)
def test_a_value_the_flags_refuse_exits_2_and_writes_nothing(
    tmp_path: Path, args: tuple[str, ...], label: str
) -> None:
    url = _sqlite_app(tmp_path / "flags.db")
    line = one_line_error(run_cli("flags", *args, "--store", url, cwd=tmp_path), exit_code=2)
    assert line.startswith(f"{label}: "), line
    assert ok_json(run_cli("flags", "history", "--store", url, cwd=tmp_path))["changes"] == []


def test_a_bad_where_operator_exits_2_like_a_malformed_where(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    where = ("--redis", redis_server.url, "--namespace", f"cli-{uuid.uuid4().hex[:8]}")
    result = run_cli("agents", "list", "--where", "role", "like", "io", *where, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith("InvalidCriteria: ")
    malformed = run_cli("agents", "list", "--where", "role", *where, cwd=tmp_path)
    assert malformed.returncode == 2


def test_version_option(tmp_path: Path) -> None:
    result = run_cli("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"foundation {__version__}\n",
        "",
    )


def test_admin_help_gives_bind_a_help_and_its_default(tmp_path: Path) -> None:
    result = run_cli("admin", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    bind = text[text.index("--bind HOST:PORT", text.index("options:")) :]
    assert "127.0.0.1:8800" in bind.split("--token")[0], result.stdout


def test_admin_off_loopback_without_a_token_names_the_token_option(tmp_path: Path) -> None:
    url = _sqlite_app(tmp_path / "flags.db")
    result = run_cli("admin", "--store", url, "--bind", "0.0.0.0:0", cwd=tmp_path)
    line = one_line_error(result, exit_code=2)
    assert line.startswith("InvalidConfig: refusing to serve"), line
    assert "--token" in line, line
    assert "token=" not in line, line  # the library's keyword, not the command's option


# ---------------------------------------------------------------- migration plans

ONE = MigrationPlan([Stage(1, "search", ["search_v2"])], name="p1")
TWO = MigrationPlan([Stage(1, "beta", ["beta"])], name="p2")


def test_several_plans_name_the_plan_option_and_list_them(tmp_path: Path) -> None:
    url = _sqlite_app(tmp_path / "flags.db", ONE, TWO)
    line = one_line_error(run_cli("migration", "status", "--store", url, cwd=tmp_path), 2)
    assert line == (
        "MigrationError: several migration plans are recorded (p1, p2): name one with --plan NAME"
    )
    line = one_line_error(
        run_cli("migration", "status", "--plan", "nope", "--store", url, cwd=tmp_path)
    )
    assert line.startswith("MigrationError: no migration plan 'nope' is recorded"), line
    assert line.endswith("the recorded plans: p1, p2"), line
    chosen = ok_json(run_cli("migration", "status", "--plan", "p2", "--store", url, cwd=tmp_path))
    assert chosen["plan"] == "p2"
