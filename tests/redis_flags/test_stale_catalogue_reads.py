"""A stale ``RedisFlagStore`` answers ``catalogue()`` and ``plans()`` from its node
copy without calling Redis.

Before the fix each of these reads connected to Redis first, even while the
store was stale: on a frozen Redis (it accepts connections, answers nothing)
every read waited a whole ``timeout`` in ``connect()`` before falling back to
the copy. ``foundation migration status`` on a service machine during such an
outage took four timeouts or more (8 to 16 s with the default 2 s), where
docs/cli.md promises about one. Flag states already answered from the copy
(``_read``); the catalogue and the plans now do the same.

The frozen Redis is a real TCP listener that accepts connections and never
answers; it counts the connections it gets. The scenario runs in a plain
interpreter with the default hooks (``run_scenario``).
"""

from __future__ import annotations

from textwrap import dedent

from tests.faults._subprocess import run_scenario
from tests.redis_support import running_redis

READS = 20


def test_a_stale_store_reads_catalogue_and_plans_from_its_copy_without_connecting() -> None:
    with running_redis() as server:
        run_scenario(
            f"URL = {server.url!r}\nREADS = {READS}\n"
            + dedent(
                """
                import os, socket, tempfile
                from foundation.flags import (
                    DEFAULT_FLAGS, FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore,
                )

                class FrozenRedis:
                    \"\"\"Accepts connections, answers nothing, counts connections.\"\"\"

                    def __init__(self):
                        self.sock = socket.create_server(("127.0.0.1", 0))
                        self.url = f"redis://127.0.0.1:{self.sock.getsockname()[1]}/0"
                        self.accepted = 0
                        self.lock = threading.Lock()
                        self.held = []
                        threading.Thread(target=self._accept, daemon=True).start()

                    def _accept(self):
                        while True:
                            try:
                                conn, _ = self.sock.accept()
                            except OSError:
                                return
                            with self.lock:
                                self.accepted += 1
                                self.held.append(conn)

                    def count(self):
                        with self.lock:
                            return self.accepted

                copy = os.path.join(tempfile.mkdtemp(), "copy.sqlite3")
                store = RedisFlagStore(URL, namespace="ops", cache_path=copy)
                flags = FeatureFlags([Flag("beta"), *DEFAULT_FLAGS], store=store)
                Migration(flags, MigrationPlan.default())
                flags.close()
                store.close()

                frozen = FrozenRedis()
                stale = RedisFlagStore(frozen.url, namespace="ops", cache_path=copy, timeout=0.3)
                assert stale.stale
                before = frozen.count()
                for _ in range(READS):
                    assert "beta" in stale.catalogue()
                    assert list(stale.plans()) == ["default"]
                during = frozen.count() - before
                stale.close()
                # Only the listener's own reconnect attempts (backoff, one timeout
                # each) may land meanwhile; before the fix each read connected:
                # 2 * READS connections at least.
                assert during < READS, during
                print("OK")
                """
            ),
        )
