"""User text in a log message cannot forge another log line.

A flag change's ``reason`` and ``by`` come from an admin API body or the CLI's
``--reason``: a newline in them once started a second, forged line in a text
log ("...\\nERROR foundation.supervision.crash ..."). They are now written with
control characters escaped; plain text is written as it was, and the record's
``extra`` fields keep the exact values.
"""

from __future__ import annotations

import logging

import pytest

from foundation import FeatureFlags, Flag
from foundation.errors import escape_controls
from foundation.flags import Migration, MigrationPlan, Stage

_FORGED = "rollout\nERROR foundation.supervision.crash Child db of supervisor app crashed"


def test_a_newline_in_a_reason_or_actor_does_not_forge_a_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="foundation.flags")
    flags = FeatureFlags([Flag("f")])
    try:
        flags.enable("f", by="ana\r\nINFO forged actor", reason=_FORGED)
    finally:
        flags.close()
    (record,) = [r for r in caplog.records if " changed by " in r.getMessage()]
    message = record.getMessage()
    assert "\n" not in message, message
    assert "\r" not in message, message
    assert "by ana\\r\\nINFO forged actor (rollout\\nERROR foundation.supervision" in message
    assert record.reason == _FORGED  # type: ignore[attr-defined]


def test_plain_text_is_written_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="foundation.flags")
    flags = FeatureFlags([Flag("f")])
    try:
        flags.enable("f", by="ana", reason='café "launch" 50%')
    finally:
        flags.close()
    (record,) = [r for r in caplog.records if " changed by " in r.getMessage()]
    assert record.getMessage().startswith("flag 'f' changed by ana (café \"launch\" 50%): ")


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("a\tb", "a\\tb"),
        ("x\x00y\x1b[31m", "x\\x00y\\x1b[31m"),
        ("line\u2028sep", "line\\u2028sep"),
        ("lone \udcff", "lone \\udcff"),
        ("plain 'quoted' \\ text", "plain 'quoted' \\ text"),
    ],
)
def test_escape_controls(text: str, written: str) -> None:
    assert escape_controls(text) == written


def test_a_migration_step_cannot_forge_a_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="foundation.flags.migration")
    flags = FeatureFlags([Flag("f")])
    try:
        migration = Migration(flags, MigrationPlan([Stage(1, "one", ["f"])]))
        migration.advance(by="ana\nINFO forged", reason=_FORGED)
    finally:
        flags.close()
    (record,) = [r for r in caplog.records if r.name == "foundation.flags.migration"]
    message = record.getMessage()
    assert "\n" not in message, message
    assert "by ana\\nINFO forged (rollout\\nERROR foundation.supervision" in message, message
    assert record.reason == _FORGED  # type: ignore[attr-defined]
