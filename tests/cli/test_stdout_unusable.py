"""A stdout that cannot take the result (a full disk, or no stdout at all: file
descriptor 1 closed, ``>&-``), and an empty setting (``--namespace "$NS"`` with
NS unset), in real subprocesses.

After a write, a result that cannot be printed must not say "failed" (exit 1):
an operator or a wrapper would run the command again (``migration advance``
one stage too far). So: exit 0 and one stderr line saying the write was done.
Before any write: exit 1 and one line, never a traceback or an AttributeError.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from foundation import Migration, MigrationPlan
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
from tests.cli._support import cli_env
from tests.redis_support import RedisServer

FULL_DISK = Path("/dev/full")  # every write fails with ENOSPC (Linux)

pytestmark = pytest.mark.skipif(not FULL_DISK.exists(), reason="needs /dev/full (Linux)")


def _declared() -> list[Flag]:
    return [Flag("beta"), *(Flag(n) for n in MigrationPlan.default().flags)]


def _store(tmp_path: Path) -> Path:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store:
        flags = FeatureFlags(_declared(), store=store)
        Migration(flags, MigrationPlan.default())
        flags.close()
    return path


def _close_stdout() -> None:
    os.close(1)  # in the child, before exec: Python starts with sys.stdout None


def _run(args: list[str], cwd: Path, stdout: str) -> subprocess.CompletedProcess[str]:
    """``foundation ARGS`` with stdout on a full disk (``full``) or closed (``closed``)."""
    command = [sys.executable, "-m", "foundation.cli", *args]
    options: dict[str, Any] = {"cwd": cwd, "env": cli_env(), "stderr": subprocess.PIPE}
    if stdout == "closed":
        return subprocess.run(
            command, **options, preexec_fn=_close_stdout, text=True, timeout=60, check=False
        )
    with FULL_DISK.open("w") as full:
        return subprocess.run(command, **options, stdout=full, text=True, timeout=60, check=False)


def _enabled(path: Path) -> bool:
    with SQLiteFlagStore(path) as store, FeatureFlags(_declared(), store=store) as flags:
        return flags.enabled("beta")


def _stage(path: Path) -> int:
    with SQLiteFlagStore(path) as store, FeatureFlags(_declared(), store=store) as flags:
        return Migration.from_store(flags).status().stage


WRITES: dict[str, tuple[list[str], str, Callable[[Path], bool]]] = {
    "flags-enable": (["flags", "enable", "beta"], "flags enable", _enabled),
    "migration-advance": (["migration", "advance"], "migration advance", lambda p: _stage(p) == 1),
}


@pytest.mark.parametrize("mode", ["--json", "--text"])
@pytest.mark.parametrize("stdout", ["full", "closed"])
@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_write_whose_result_cannot_be_printed_exits_0_and_says_it_was_done(
    write: str, stdout: str, mode: str, tmp_path: Path
) -> None:
    args, words, done = WRITES[write]
    path = _store(tmp_path)
    result = _run([mode, *args, "--store", f"sqlite:///{path}"], tmp_path, stdout)
    assert done(path)  # the write was done
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 0, result.stderr
    why = "No space left on device" if stdout == "full" else "stdout is closed"
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"foundation {words}: the result could not be printed to stdout ")
    assert why in lines[0], lines[0]
    assert lines[0].endswith(" after the write, which was done"), lines[0]


@pytest.mark.parametrize("mode", ["--json", "--text"])
@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_a_read_whose_result_cannot_be_printed_fails_with_one_line(
    stdout: str, mode: str, tmp_path: Path
) -> None:
    path = _store(tmp_path)
    result = _run([mode, "flags", "list", "--store", f"sqlite:///{path}"], tmp_path, stdout)
    assert result.returncode == 1, result.stderr
    why = "[Errno 28] No space left on device" if stdout == "full" else "[Errno 9] stdout is closed"
    assert result.stderr.strip().splitlines() == [
        f"StdoutError: the result could not be printed to stdout ({why})"
    ]


# ---------------------------------------------------------------- empty settings


def _settings_run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foundation.cli", "--json", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_empty_namespace_option_is_a_usage_error(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # `--namespace "$NS"` with NS unset: not FOUNDATION_NAMESPACE's namespace, exit 0.
    result = _settings_run(
        ["agents", "count", "--redis", redis_server.url, "--namespace", ""],
        tmp_path,
        FOUNDATION_NAMESPACE="another",
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "UsageError: --namespace is empty: give it a value, or leave the option out"
    ]


def test_an_empty_store_option_is_a_usage_error(tmp_path: Path) -> None:
    path = _store(tmp_path)
    result = _settings_run(
        ["flags", "enable", "beta", "--store="], tmp_path, FOUNDATION_STORE=f"sqlite:///{path}"
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        "UsageError: --store is empty: give it a value, or leave the option out"
    ]
    assert not _enabled(path)  # nothing written to FOUNDATION_STORE's store


@pytest.mark.parametrize("variable", ["FOUNDATION_NAMESPACE", "FOUNDATION_REDIS"])
def test_an_empty_variable_is_a_usage_error(
    variable: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    # A variable set but empty is not a variable left unset: [cli] (or the
    # default namespace) would name another registry.
    (tmp_path / "foundation.toml").write_text(
        f'[cli]\nredis = "{redis_server.url}"\nnamespace = "another"\n'
    )
    result = _settings_run(["agents", "count"], tmp_path, **{variable: ""})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        f"UsageError: {variable} is set but empty: give it a value, or unset it"
    ]


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["flags", "--help"], ["agents", "watch", "--help"], ["demo", "-h"]],
)
def test_help_that_cannot_be_printed_fails_with_one_line(tmp_path: Path, args: list[str]) -> None:
    # argparse drops the OSError of its own write: this exited 0, nothing printed.
    done = _run(args, tmp_path, "full")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "StdoutError: the help could not be printed to stdout ([Errno 28] No space left on device)"
    ]


# ---------------------------------------------------------------- the demo


@pytest.mark.parametrize("console", ["--plain", "--rich"])
def test_the_demo_whose_output_cannot_be_printed_fails_with_one_line(
    tmp_path: Path, console: str
) -> None:
    # It printed `OSError: [Errno 28] No space left on device`, not the line any
    # other command prints for a full stdout.
    shown = ["--plain"] if console == "--plain" else []  # rich's console without it
    done = _run(["demo", *shown, "--agents", "2", "--seconds", "0.1"], tmp_path, "full")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "StdoutError: the demo's output could not be printed to stdout "
        "([Errno 28] No space left on device)"
    ]


@pytest.mark.parametrize("console", ["--plain", "--rich"])
def test_the_demo_whose_reader_goes_away_stops_quietly_with_141(
    tmp_path: Path, console: str
) -> None:
    # `foundation demo | head -N`: rich's console exited 1 with nothing said (its
    # SystemExit on a closed pipe), where any other command exits 141.
    from tests._processes import kill_session
    from tests.cli.test_demo_run import session_processes

    shown = ["--plain"] if console == "--plain" else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "foundation.cli", "demo", *shown, "--agents", "5"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # what it starts stays in its session: listed below
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        first = proc.stdout.readline()
        while first == "\n":  # the plain heading's blank line
            first = proc.stdout.readline()
        assert "1. A registry of live agents" in first, (first, proc.stderr.read())
        proc.stdout.close()  # the reader goes away mid-part
        err = proc.stderr.read()
        code = proc.wait(120)
        assert (code, err) == (141, ""), (code, err)
        # The part stopped what it had started (its `sleep` processes among them).
        assert session_processes(proc.pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        kill_session(proc.pid)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
