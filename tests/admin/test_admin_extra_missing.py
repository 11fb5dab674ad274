"""Without the admin extra (any of Starlette, uvicorn, prometheus-client),
``import foundation.admin`` raises ``ImportError`` naming ``foundation[admin]``,
as the redis, openfeature and otel extras do.

Was: a bare ``ModuleNotFoundError: starlette``; and without prometheus-client
alone the server started, then every ``/metrics`` scrape was a 500 with an
ERROR traceback. A real interpreter per case, a meta-path finder making the
package's import fail as an uninstalled one does.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
from tests.cli._support import cli_env, one_line_error

BLOCKER = """
import sys

class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Missing())
"""

SCENARIO = """
import foundation
from foundation.flags import FeatureFlags, Flag
try:
    import foundation.admin
except ImportError as exc:
    assert type(exc) is ImportError, type(exc)
    assert "pip install 'foundation[admin]'" in str(exc), exc
    assert BLOCKED in str(exc), exc
    print("OK")
else:
    raise AssertionError("foundation.admin imported without " + BLOCKED)
assert FeatureFlags([Flag("f", default=True)]).enabled("f")  # the rest still works
"""


@pytest.mark.parametrize("blocked", ["starlette", "uvicorn", "prometheus_client"])
def test_a_missing_admin_package_names_the_extra(blocked: str) -> None:
    code = f"BLOCKED = {blocked!r}\n" + textwrap.dedent(BLOCKER) + textwrap.dedent(SCENARIO)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK", done.stderr
    assert done.stderr == ""


CLI_SCENARIO = """
from foundation.cli import main
raise SystemExit(main(["admin", "--store", STORE]))
"""


@pytest.mark.parametrize("blocked", ["starlette", "prometheus_client"])
def test_the_cli_says_the_hint_once(blocked: str, tmp_path: Path) -> None:
    # `foundation admin` passes foundation.admin's message through: one hint, not
    # "...: pip install 'foundation[admin]'); install foundation[admin]".
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store:
        FeatureFlags([Flag("beta")], store=store).close()
    code = (
        f"BLOCKED = {blocked!r}\nSTORE = {f'sqlite:///{path}'!r}\n"
        + textwrap.dedent(BLOCKER)
        + textwrap.dedent(CLI_SCENARIO)
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
    assert line.startswith("ImportError: foundation.admin needs the admin extra"), line
    assert blocked in line, line
    assert line.count("foundation[admin]") == 1, line
