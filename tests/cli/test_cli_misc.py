"""``foundation version``, ``demo`` pass-through, ``--help``, and the ``admin`` slot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from foundation import __version__
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
from tests.cli._support import cli_env, ok_json, one_line_error, run_cli


def test_version(tmp_path: Path) -> None:
    assert ok_json(run_cli("version", cwd=tmp_path)) == {"version": __version__}
    text = run_cli("version", "--text", cwd=tmp_path)
    assert text.returncode == 0
    assert text.stdout == f"{__version__}\n"


def test_help_and_demo_pass_through(tmp_path: Path) -> None:
    top = run_cli("--help", cwd=tmp_path)
    assert top.returncode == 0
    for command in ("flags", "migration", "agents", "admin", "demo", "version"):
        assert command in top.stdout
    assert run_cli(cwd=tmp_path).returncode == 2  # no command: usage
    demo = run_cli("demo", "--help", cwd=tmp_path)
    assert demo.returncode == 0
    assert "--chaos" in demo.stdout  # the demo's own options, passed through untouched


def test_admin_without_the_server_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store:
        FeatureFlags([Flag("beta")], store=store).close()
    # A Python without foundation.admin (the extra not installed): the import fails.
    code = (
        "import sys; sys.modules['foundation.admin'] = None\n"
        "from foundation.cli import main\n"
        f"raise SystemExit(main(['admin', '--store', 'sqlite:///{path}']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = one_line_error(result)
    assert line.startswith("ImportError: the admin server is not available")
