"""A catalogue key that is no hash records nothing, says so, and never stops a resync.

Someone ran ``SET {ns}:flags:catalogue x``. Before: every record of the
catalogue (each ``FeatureFlags`` start, each resync recording it again) failed
with ``BackendUnavailable`` (Redis' WRONGTYPE reply taken for an outage): the
resync failed, again and again, and the store stayed stale with Redis up.
"""

from __future__ import annotations

import logging
import uuid

import pytest

from foundation import errors
from foundation.flags import FeatureFlags, Flag, FlagInfo, RedisFlagStore
from tests.faults._subprocess import run_scenario
from tests.redis_support import RedisServer


def test_a_wrongtype_catalogue_key_records_nothing_and_says_so(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    namespace = f"wrongtype-cat-{uuid.uuid4().hex[:8]}"
    key = "{" + namespace + "}:flags:catalogue"
    redis_server.command("SET", key, "x")
    with RedisFlagStore(redis_server.url, namespace=namespace, cache_path=None) as store:
        with caplog.at_level(logging.WARNING, logger="foundation.flags"):
            FeatureFlags([Flag("a")], store=store).close()
        warned = [r.getMessage() for r in caplog.records if "not recorded" in r.getMessage()]
        assert len(warned) == 1, warned
        assert f"Redis key {key} holds a string, not a hash" in warned[0], warned
        with pytest.raises(errors.FlagError, match="holds a string, not a hash") as info:
            store.record_catalogue([FlagInfo("a", False)])
        assert type(info.value) is errors.FlagError
        assert "remove or rename that key" in str(info.value)
        assert redis_server.command("GET", key) == b"x"  # nothing written
        # The key removed, the catalogue is recorded.
        redis_server.command("DEL", key)
        store.record_catalogue([FlagInfo("a", False)])
        assert set(store.catalogue()) == {"a"}


# The catalogue is recorded again at each resync: a WARNING, and the resync goes on
# (before: BackendUnavailable from the resync's record, the store stale for good).
_WRONGTYPE_RESYNC = """
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from tests.redis_support import RedisServer

srv = RedisServer(); srv.start()
try:
    store = RedisFlagStore(srv.url, namespace="ops", cache_path=None, timeout=0.5)
    flags = FeatureFlags([Flag("a")], store=store)  # recorded: a hash
    srv.command("DEL", "{ops}:flags:catalogue")
    srv.command("SET", "{ops}:flags:catalogue", "x")
    for _ in range(2):  # twice: the first resync's WARNING does not stop the next
        before = store.status().resyncs
        srv.command("CLIENT", "KILL", "TYPE", "normal")  # the store's connections: a resync
        wait_for(lambda: store.status().resyncs > before and store.synced, "in sync again")
    flags.enable("a")  # writes go on
    print("catalogue", srv.command("GET", "{ops}:flags:catalogue"))
    flags.close(); store.close()
finally:
    srv.stop()  # (a failed wait leaves no server behind)
print("OK")
"""


def test_a_wrongtype_catalogue_key_does_not_stop_the_resync() -> None:
    result = run_scenario(_WRONGTYPE_RESYNC)
    assert "catalogue b'x'" in result.stdout, result.stdout
    warned = [line for line in result.stderr.splitlines() if "holds a string" in line]
    assert warned, result.stderr
    assert all("WARNING" in line for line in warned), warned
