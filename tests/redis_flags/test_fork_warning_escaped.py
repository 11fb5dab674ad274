"""The fork's WARNING names the lost changes and kept kill switches on one line:
their ``by`` and ``reason`` escaped (``escape_controls``), so a newline in a
reason cannot forge another log line.

The fork of ``test_equal_version_fork`` (node A's acknowledged write lost to
node B's at the same version on a Redis restarted empty), A's write carrying a
newline in its reason and actor. Runs in a plain interpreter (``run_scenario``)
with a real redis-server.
"""

from __future__ import annotations

import pytest

from tests.faults._subprocess import run_scenario
from tests.redis_flags.test_equal_version_fork import _SCENARIO, _fork_warnings


def _forged(kill: bool) -> str:
    """The scenario, A's lost write by "A\\r" with a reason ending "\\nERROR forged"."""
    script = _SCENARIO.format(warm=True, kill=kill)
    for reason in ("incident", "stage 1"):
        old = f'by="A", reason="{reason}"'
        assert script.count(old) == 1, old
        script = script.replace(old, f'by="A\\r", reason="{reason}\\nERROR forged"')
    return script


@pytest.mark.parametrize("kill", [False, True], ids=["lost-change", "kept-kill-switch"])
def test_the_forks_warning_escapes_by_and_reason(kill: bool) -> None:
    result = run_scenario(_forged(kill))
    forks = _fork_warnings(result.stderr)
    assert len(forks) == 1, result.stderr
    named = "A\\r (incident\\nERROR forged) on k" if kill else "by A\\r (stage 1\\nERROR forged)"
    assert named in forks[0], forks
    # The WARNING stayed one line: no continuation line of its record follows it.
    lines = result.stderr.splitlines()
    after = lines[lines.index(forks[0]) + 1 :]
    assert not after or not after[0].startswith("LOG| "), after[:2]
    # No other line of the run (the kill switch's own "recorded" and "committed"
    # lines included) was forged by the reason's newline.
    forged = [line for line in lines if line.startswith(("LOG| ERROR forged", "ERROR forged"))]
    assert not forged, forged
