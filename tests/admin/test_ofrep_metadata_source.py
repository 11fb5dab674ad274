"""OFREP's ``metadata`` comes from the same source as ``FoundationProvider``'s
``flag_metadata``: every migration plan recorded in the store, not only the plan
of the migration the admin server serves.

Both bridges run for real: the in-process provider through the OpenFeature SDK,
and ``OFREPProvider`` (plus plain HTTP for the bulk call) against an
``AdminServer`` on a free loopback port.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider

from foundation.admin import AdminServer
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, Stage
from foundation.openfeature import FoundationProvider

NAMES = ("f_a", "f_b", "f_ab", "plain")
PLAN_A = MigrationPlan([Stage(1, "sa", ["f_a", "f_ab"])], name="a")
PLAN_B = MigrationPlan([Stage(1, "sb", ["f_b", "f_ab"])], name="b")


@pytest.fixture(autouse=True)
def openfeature_global_state() -> Iterator[None]:
    """The SDK keeps a global provider registry: reset around each test."""
    api.shutdown()
    try:
        yield
    finally:
        api.shutdown()


def _declared() -> list[Flag]:
    return [
        Flag("f_a", description="in plan a"),
        Flag("f_b"),
        Flag("f_ab", description="in both plans"),
        Flag("plain"),
    ]


def _both_bridges(flags: FeatureFlags, server: AdminServer) -> dict[str, tuple[Any, Any, Any]]:
    """Per flag: (in-process metadata, OFREP client metadata, bulk HTTP metadata)."""
    api.set_provider_and_wait(FoundationProvider(flags), "local")
    ofrep = OFREPProvider(server.url)
    try:
        api.set_provider_and_wait(ofrep, "ofrep")
        local, remote = api.get_client("local"), api.get_client("ofrep")
        with httpx.Client(base_url=server.url, timeout=30) as http:
            r = http.post("ofrep/v1/evaluate/flags", json={})
        assert r.status_code == 200, r.text
        bulk = {item["key"]: item["metadata"] for item in r.json()["flags"]}
        return {
            name: (
                dict(local.get_boolean_details(name, False).flag_metadata),
                dict(remote.get_boolean_details(name, False).flag_metadata),
                bulk[name],
            )
            for name in NAMES
        }
    finally:
        api.shutdown()
        ofrep.session.close()


def _expected(plan: str, stage: str) -> dict[str, Any]:
    return {"migration_plan": plan, "migration_stage": 1, "migration_stage_name": stage}


@pytest.mark.parametrize("served", ["a", "b", None], ids=["serves-a", "serves-b", "no-migration"])
def test_every_recorded_plan_reads_the_same_over_ofrep_as_in_process(served: str | None) -> None:
    flags = FeatureFlags(_declared())
    try:
        migrations = {"a": Migration(flags, PLAN_A), "b": Migration(flags, PLAN_B)}  # recorded
        migration = None if served is None else migrations[served]
        with AdminServer(flags=flags, migration=migration, bind="127.0.0.1:0") as server:
            seen = _both_bridges(flags, server)
    finally:
        flags.close()
    for name, (local, remote, bulk) in seen.items():
        assert local == remote == bulk, (name, served, seen[name])
    # The provider's rule (foundation.flags._metadata): a flag in two plans is
    # described by the first plan by name, whichever one the server serves.
    assert seen["f_a"][1] == {"description": "in plan a", **_expected("a", "sa")}
    assert seen["f_b"][1] == _expected("b", "sb")
    assert seen["f_ab"][1] == {"description": "in both plans", **_expected("a", "sa")}
    assert seen["plain"][1] == {}


# The served migration's plan when the store could neither record nor return it:
# Redis killed or frozen before Migration(flags, plan) is constructed. Its plan
# is not recorded (WARNING), store.plans() fails or returns none, and the admin
# server still starts, answers OFREP evaluations, and describes the served
# plan's flags (as it did before plans were read from the store). Each in a
# subprocess under the interpreter's default hooks (a Redis fault scenario).
_UNRECORDED = """
import tempfile, uuid
import httpx
from foundation.admin import AdminServer
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, Stage, RedisFlagStore
from tests.redis_support import RedisServer

server = RedisServer()
server.start()
copy = tempfile.mkdtemp()
store = RedisFlagStore(server.url, namespace=f"unrec-{uuid.uuid4().hex[:8]}", timeout=0.5,
                       cache_path=copy + "/node-copy")
flags = FeatureFlags([Flag("f_a", description="in plan p"), Flag("plain")], store=store)
try:
    threads_before = library_threads()
    FAULT
    migration = Migration(flags, MigrationPlan([Stage(1, "sa", ["f_a"])], name="p"))
    with AdminServer(flags=flags, migration=migration, bind="127.0.0.1:0") as admin:
        with httpx.Client(base_url=admin.url, timeout=30) as http:
            one = http.post("ofrep/v1/evaluate/flags/f_a", json={})
            bulk = http.post("ofrep/v1/evaluate/flags", json={})
    assert one.status_code == 200, one.text
    want = {"description": "in plan p", "migration_plan": "p", "migration_stage": 1,
            "migration_stage_name": "sa"}
    assert one.json()["metadata"] == want, one.text
    assert {f["key"]: f["metadata"] for f in bulk.json()["flags"]} == {"f_a": want, "plain": {}}
    assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
finally:
    flags.close()
    server.stop()  # (thawed first when frozen)
print("OK")
"""


@pytest.mark.parametrize("fault", ["server.kill()", "server.freeze()"], ids=["killed", "frozen"])
def test_the_served_plan_is_described_when_the_store_cannot_record_it(fault: str) -> None:
    from tests.faults._subprocess import run_scenario

    result = run_scenario(_UNRECORDED.replace("FAULT", fault))
    assert "migration plan 'p' not recorded" in result.stderr, result.stderr
