"""The exit codes the documentation lists are the ones the command returns.

docs/cli.md holds the table, the README repeats it and ``foundation --help``
sums it up: the three list the same codes as ``foundation.cli.EXIT_CODES``,
and each documented code is produced by a real run below (130 and 143 by a
signal sent to a command blocked on a frozen Redis; the long-running
commands' own signal cases are in test_signals.py). A backend that cannot be
used (unreachable, frozen, read-only) is its own code, 69, with one line on
stderr, for every command that meets it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from foundation import cli
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore, open_store
from foundation.registry import RedisRegistry
from tests.cli._support import Running, cli_env, one_line_error, run_cli, start_cli, wait_connected
from tests.redis_support import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]


def _table_codes(text: str, heading: str) -> set[int]:
    """The codes of the first ``| code | when |`` table after ``heading``."""
    rest = text[text.index(heading) :]
    table = rest[rest.index("| code | when |") :]
    codes = set()
    for row in table.splitlines()[2:]:
        if not row.startswith("|"):
            break
        codes.add(int(re.fullmatch(r"\| `(\d+)` \|.*", row).group(1)))  # type: ignore[union-attr]
    return codes


def test_the_docs_the_readme_and_help_list_the_command_s_codes(tmp_path: Path) -> None:
    codes = set(cli.EXIT_CODES)
    assert _table_codes((ROOT / "docs" / "cli.md").read_text(), "## Exit codes") == codes
    assert _table_codes((ROOT / "README.md").read_text(), "**Exit codes**") == codes
    shown = run_cli("--help", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    epilog = " ".join(shown.stdout[shown.stdout.index("Exit codes:") :].split())
    listed = {int(n) for n in re.findall(r"(?:codes:|;) (\d+) ", epilog)}
    assert listed == codes, epilog


# ------------------------------------------------------------------ each code, run


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("codes") / "flags.db"
    with SQLiteFlagStore(path) as store:
        flags = FeatureFlags([Flag("beta")], store=store)
        flags.enable("beta", by="ana")
        flags.close()
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def frozen() -> Iterator[RedisServer]:
    """A redis-server with a flag store (namespace ``codes``), frozen (SIGSTOP)."""
    with RedisServer() as server:
        store = open_store(f"{server.url}?namespace=codes", create=True)
        FeatureFlags([Flag("beta")], store=store).close()
        store.close()
        server.freeze()
        yield server
        server.thaw()


def _signalled(frozen: RedisServer, signum: int, tmp_path: Path) -> int | None:
    """``flags list`` on the frozen Redis, sent ``signum`` while it waits for it."""
    run = Running("flags", "list", "--store", f"{frozen.url}?namespace=codes", cwd=tmp_path)
    try:
        wait_connected(run, frozen.port)
        run.send(signum)
        code = run.finish()
    finally:
        run.close()
    word = {signal.SIGINT: "interrupted", signal.SIGHUP: "hung up"}.get(signum, "terminated")
    assert run.stderr == [f"foundation flags list: {word}"], run.stderr
    return code


def _closed_pipe_code(sqlite_url: str, tmp_path: Path) -> int:
    read, write = os.pipe()
    os.close(read)
    proc = start_cli("flags", "history", "--store", sqlite_url, cwd=tmp_path, stdout=write)
    os.close(write)
    _, err = proc.communicate(timeout=60)
    assert err == "", err
    return proc.returncode


SCENARIOS: dict[int, Callable[[str, RedisServer, Path], int | None]] = {
    0: lambda url, _f, tmp: run_cli("flags", "list", "--store", url, cwd=tmp).returncode,
    1: lambda url, _f, tmp: _one_line(run_cli("flags", "show", "btea", "--store", url, cwd=tmp)),
    2: lambda url, _f, tmp: run_cli("flags", "percentage", "beta", "x", cwd=tmp).returncode,
    69: lambda _u, _f, tmp: _one_line(
        run_cli("flags", "list", "--store", f"redis://127.0.0.1:{free_port()}/0", cwd=tmp)
    ),
    129: lambda _u, frozen, tmp: _signalled(frozen, signal.SIGHUP, tmp),
    130: lambda _u, frozen, tmp: _signalled(frozen, signal.SIGINT, tmp),
    141: lambda url, _f, tmp: _closed_pipe_code(url, tmp),
    143: lambda _u, frozen, tmp: _signalled(frozen, signal.SIGTERM, tmp),
}


def _one_line(result: subprocess.CompletedProcess[str]) -> int:
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.returncode


def test_every_documented_code_has_a_run() -> None:
    assert set(SCENARIOS) == set(cli.EXIT_CODES)


@pytest.mark.parametrize("code", sorted(SCENARIOS))
def test_a_run_returns_the_documented_code(
    code: int, sqlite_url: str, frozen: RedisServer, tmp_path: Path
) -> None:
    assert SCENARIOS[code](sqlite_url, frozen, tmp_path) == code


# ------------------------------------------------- backend unavailable: 69, one line


@pytest.fixture(scope="module")
def seeded() -> Iterator[RedisServer]:
    """A redis-server of this module's own with a flag store and a registry namespace."""
    with RedisServer() as server:
        store = open_store(f"{server.url}?namespace=codes", create=True)
        FeatureFlags([Flag("beta")], store=store).close()
        store.close()
        RedisRegistry(server.url, namespace="codes").close()
        yield server


READS = [
    ("flags", "list", "--store", "{url}?namespace=codes"),
    ("flags", "history", "beta", "--store", "{url}?namespace=codes"),
    ("migration", "status", "--store", "{url}?namespace=codes"),
    ("agents", "count", "--redis", "{url}", "--namespace", "codes"),
    ("agents", "list", "--redis", "{url}", "--namespace", "codes"),
]
WRITES = [
    ("flags", "enable", "beta", "--store", "{url}?namespace=codes"),
    ("flags", "percentage", "beta", "50", "--store", "{url}?namespace=codes"),
]


def _unavailable(args: tuple[str, ...], url: str, tmp_path: Path, env: dict[str, str]) -> str:
    result = run_cli(*(a.replace("{url}", url) for a in args), cwd=tmp_path, env=env)
    line = one_line_error(result, cli.EXIT_UNAVAILABLE)
    assert line.startswith("BackendUnavailable: "), line
    return line


@pytest.fixture
def no_node_copy(tmp_path: Path) -> dict[str, str]:
    """An environment whose flag node copies are in an empty directory (none to answer from)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    return cli_env(FOUNDATION_CACHE_DIR=str(cache))


@pytest.mark.parametrize("args", READS + WRITES, ids=lambda a: " ".join(a[:2]))
def test_an_unreachable_redis_is_69(
    args: tuple[str, ...], tmp_path: Path, no_node_copy: dict[str, str]
) -> None:
    _unavailable(args, f"redis://127.0.0.1:{free_port()}/0", tmp_path, no_node_copy)


@pytest.mark.parametrize("args", READS[::2] + WRITES[:1], ids=lambda a: " ".join(a[:2]))
def test_a_frozen_redis_is_69_after_the_op_timeout(
    args: tuple[str, ...], frozen: RedisServer, tmp_path: Path, no_node_copy: dict[str, str]
) -> None:
    # Bounded by the operation timeout: run_cli's own timeout would fail a hang.
    line = _unavailable(args, frozen.url, tmp_path, no_node_copy)
    assert "no answer in time" in line, line


@pytest.mark.parametrize("args", WRITES, ids=lambda a: " ".join(a[:2]))
def test_a_read_only_redis_refusing_a_write_is_69(
    args: tuple[str, ...], seeded: RedisServer, tmp_path: Path, no_node_copy: dict[str, str]
) -> None:
    seeded.make_read_only()
    try:
        line = _unavailable(args, seeded.url, tmp_path, no_node_copy)
    finally:
        seeded.make_writable()
    assert "READONLY" in line, line


def test_reads_on_a_read_only_redis_still_exit_0(seeded: RedisServer, tmp_path: Path) -> None:
    seeded.make_read_only()
    try:
        for args in READS:
            if "migration" in args:
                continue  # no plan recorded: MigrationError (1), another story
            result = run_cli(*(a.replace("{url}", seeded.url) for a in args), cwd=tmp_path)
            assert result.returncode == 0, (args, result.stderr)
    finally:
        seeded.make_writable()
