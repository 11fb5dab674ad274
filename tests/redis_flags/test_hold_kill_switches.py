"""``RedisFlagStore(hold_kill_switches=False)``: a kill switch during an outage is
refused like any other write, for a short-lived process (the default holds it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation import errors
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from tests.redis_flags._support import wait_until
from tests.redis_support import RedisServer


@pytest.mark.parametrize("hold", [True, False])
def test_a_kill_switch_during_an_outage_is_held_or_refused(
    fresh_redis: RedisServer, tmp_path: Path, hold: bool
) -> None:
    store = RedisFlagStore(
        fresh_redis.url,
        namespace="hold",
        timeout=0.5,
        resync_interval=0.2,
        cache_path=tmp_path / "copy.sqlite3",
        hold_kill_switches=hold,
    )
    with store, FeatureFlags([Flag("beta")], store=store) as flags:
        flags.enable("beta", by="ana")
        fresh_redis.kill()
        assert wait_until(lambda: store.stale)
        if hold:
            flags.disable("beta", by="oncall")  # applied here at once, kept in the copy
            assert not flags.enabled("beta")
            assert store.status().pending_flags == ("beta",)
        else:
            with pytest.raises(errors.BackendUnavailable):
                flags.disable("beta", by="oncall")
            assert flags.enabled("beta")  # nothing changed, nothing kept
            assert store.status().pending == 0
            assert store.pending() == []


def test_hold_kill_switches_must_be_a_bool(redis_server: RedisServer) -> None:
    with pytest.raises(errors.InvalidConfig, match="hold_kill_switches must be a bool"):
        RedisFlagStore(redis_server.url, hold_kill_switches=1, cache_path=None)  # type: ignore[arg-type]
