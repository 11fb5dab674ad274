"""The INFO record of a flag change stays small however many actors the flag pins.

It once held the whole old and new state, in the message and in ``extra``: the
3,000th ``allow()`` on a flag wrote a 90 KB line, 135 MB for the 3,000 calls
(the history record had been made a delta for the same reason). The message now
says what changed (a few actor names, the rest counted); ``extra`` carries the
delta (``changes``) and the states cut to a few actors per set.

Real FeatureFlags over a real SQLite store; records taken by a logging handler.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
from tests._logs import Records, captured

ACTORS = 3_000
LINE_BOUND = 1_000  # characters, message or extra fields as JSON


@pytest.fixture
def flags(tmp_path: Path) -> Iterator[FeatureFlags]:
    with (
        SQLiteFlagStore(tmp_path / "flags.sqlite3") as store,
        FeatureFlags([Flag("beta"), Flag("other")], store=store) as flags,
    ):
        yield flags


@pytest.fixture
def records() -> Iterator[Records]:
    with captured("foundation.flags", level=logging.INFO) as kept:
        yield kept


def _extra(record: logging.LogRecord) -> str:
    return json.dumps({k: getattr(record, k) for k in ("flag", "changes", "old", "new")})


def test_3000_allow_calls_log_3000_small_lines_that_name_each_actor(
    flags: FeatureFlags, records: Records
) -> None:
    for i in range(ACTORS):
        flags.allow("beta", f"user-{i:04}", by="ana", reason="beta testers")
    lines = records.named("foundation.flags")
    assert len(lines) == ACTORS
    assert max(len(r.getMessage()) for r in lines) < LINE_BOUND
    assert max(len(_extra(r)) for r in lines) < LINE_BOUND
    last = lines[-1]
    assert last.getMessage() == (
        "flag 'beta' changed by ana (beta testers): allow added 'user-2999' (3000 now)"
    )
    assert last.changes == {  # type: ignore[attr-defined]
        "allow": {
            "added": ["user-2999"],
            "added_count": 1,
            "removed": [],
            "removed_count": 0,
            "size": ACTORS,
        }
    }
    assert last.new["allow"] == [f"user-{i:04}" for i in range(10)]  # type: ignore[attr-defined]
    assert last.new["truncated"] == {"allow": ACTORS}  # type: ignore[attr-defined]
    assert last.old["truncated"] == {"allow": ACTORS - 1}  # type: ignore[attr-defined]
    assert (last.by, last.reason) == ("ana", "beta testers")  # type: ignore[attr-defined]


def test_clearing_3000_actors_names_a_few_and_counts_the_rest(
    flags: FeatureFlags, records: Records
) -> None:
    for i in range(ACTORS):
        flags.allow("beta", f"user-{i:04}")
    records.clear()
    flags.clear("beta", by="ops", reason="reset")
    (record,) = records.named("foundation.flags")
    message = record.getMessage()
    assert len(message) < LINE_BOUND
    assert len(_extra(record)) < LINE_BOUND
    assert message == (
        "flag 'beta' changed by ops (reset): "
        "allow removed 'user-0000', 'user-0001', 'user-0002' +2997 more (0 now)"
    )
    assert record.changes["allow"]["removed_count"] == ACTORS  # type: ignore[attr-defined]
    assert len(record.changes["allow"]["removed"]) == 10  # type: ignore[attr-defined]
    assert "truncated" not in record.new  # type: ignore[attr-defined]


def test_each_changed_field_is_said_and_unchanged_ones_are_not(
    flags: FeatureFlags, records: Records
) -> None:
    flags.allow("beta", "ana")
    flags.enable("beta")
    flags.set_percentage("beta", 25)
    flags.deny("beta", "mallory\nERROR forged")
    flags.disable("beta")
    assert records.messages(name="foundation.flags") == [
        "flag 'beta' changed: allow added 'ana' (1 now)",
        "flag 'beta' changed: switch off -> on",
        "flag 'beta' changed: percentage None -> 25.0",
        "flag 'beta' changed: deny added 'mallory\\nERROR forged' (1 now)",
        "flag 'beta' changed: switch on -> off",
    ]
    # A small state is still whole in ``extra``, as ``FlagState.to_dict`` writes it.
    assert records.named("foundation.flags")[-1].new == {  # type: ignore[attr-defined]
        "switch": False,
        "percentage": 25.0,
        "allow": ["ana"],
        "deny": ["mallory\nERROR forged"],
    }
