"""A ``RedisFlagStore`` whose listener thread cannot start leaves no node copy file.

Before the fix the start failed with ``BackendUnavailable`` (EAGAIN) as it
should, its connections and copy closed, but the node copy file this start
had just created (and filled from Redis) stayed on disk: an unreachable
Redis at start already removed it, a thread limit did not. Threads are
exhausted for real (``RLIMIT_NPROC`` at 0, see
``tests/faults/test_resource_exhaustion.py``), in a plain interpreter with the
default hooks. A copy that existed before the start is kept.
"""

from __future__ import annotations

import sys
from textwrap import dedent

import pytest

from tests.faults._subprocess import run_scenario
from tests.faults.test_resource_exhaustion import _NPROC
from tests.redis_support import running_redis

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux rlimits")


def test_a_listener_that_cannot_start_leaves_no_new_copy_file() -> None:
    with running_redis() as server:
        run_scenario(
            f"URL = {server.url!r}\n"
            + _NPROC
            + dedent(
                """
                import errno, tempfile, uuid
                from foundation.errors import BackendUnavailable
                from foundation.flags import RedisFlagStore

                ns = "nproc-" + uuid.uuid4().hex[:8]
                folder = tempfile.mkdtemp()
                copy = os.path.join(folder, "copy.db")
                RedisFlagStore(URL, namespace="warm", cache_path=False).close()  # imports
                wait_for(lambda: not library_threads(), "the warm-up's threads gone")

                def start_without_threads():
                    with no_threads():
                        try:
                            RedisFlagStore(URL, namespace=ns, cache_path=copy)
                        except BackendUnavailable as exc:
                            assert exc.errno == errno.EAGAIN, exc
                        else:
                            raise AssertionError("a flag store without its listener")

                start_without_threads()
                # Before the fix: ['copy.db'] left behind.
                assert os.listdir(folder) == [], os.listdir(folder)
                # A copy of an earlier run is kept: it is what an outage serves.
                RedisFlagStore(URL, namespace=ns, cache_path=copy).close()
                assert os.path.exists(copy)
                start_without_threads()
                assert os.path.exists(copy), os.listdir(folder)
                print("OK")
                """
            ),
        )
