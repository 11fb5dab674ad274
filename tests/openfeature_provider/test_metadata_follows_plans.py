"""``FoundationProvider``'s migration metadata follows a plan recorded after it
was initialized, over every flag store, with no outage and no re-initialize:
the plan recorded (by another store object on the same backend, or through the
provider's own flags) and advanced, the flags change, and the provider re-reads
the plans on a worker thread (a bounded rate), never in a resolution.

Real SDK, a real redis-server (the tests' session server, a namespace of its
own), a real SQLite file.
"""

from __future__ import annotations

import threading

import pytest
from openfeature import api

from foundation.flags import FeatureFlags, Migration
from foundation.openfeature import FoundationProvider
from tests import _plans_follow
from tests._plans_follow import DECLARED, PLAN, WANT, StoreMaker
from tests._plans_follow import wait_for as _wait_for

make_store = _plans_follow.make_store  # the fixture: store objects on each backend


@pytest.mark.parametrize("recorder", ["another-store", "own-flags"])
def test_a_plan_recorded_and_advanced_after_initialize_is_described(
    make_store: StoreMaker, recorder: str
) -> None:
    flags = FeatureFlags(DECLARED, store=make_store())
    other = flags
    try:
        provider = FoundationProvider(flags)
        api.set_provider_and_wait(provider)
        client = api.get_client()

        def metadata() -> dict[str, object]:
            return dict(client.get_boolean_details("f_a", False).flag_metadata)

        assert metadata() == {"description": "in plan a"}
        if recorder == "another-store":
            other = FeatureFlags(DECLARED, store=make_store())
        Migration(other, PLAN).advance(by="test", reason="recorded after initialize")
        _wait_for(lambda: metadata() == WANT, "plan a's metadata from the provider")
        api.shutdown()
        # Shut down: no re-read worker left behind.
        _wait_for(
            lambda: (
                not any(t.name == "foundation-openfeature-plans" for t in threading.enumerate())
            ),
            "no plan refresher thread",
        )
    finally:
        other.close()
        flags.close()
