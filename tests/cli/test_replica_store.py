"""A flag command pointed at a read-only replica holding no flags says replica, not typo.

Found by an explorer (3/3): a master demoted to a replica of an empty server
(REPLICAOF) made `flags list` and `migration status` exit 1 with
`InvalidConfig: no flag store in namespace ... add ?namespace=NS`, sending the
operator after a typo while the nodes still held their flags. Real
redis-servers.
"""

from __future__ import annotations

from pathlib import Path

from tests.cli._support import one_line_error, run_cli
from tests.redis_support import replica_of_an_empty_master


def test_no_flag_store_on_a_replica_is_backend_unavailable(tmp_path: Path) -> None:
    with replica_of_an_empty_master() as (master, replica):
        store = f"{replica.url}?namespace=f"
        for command in (("flags", "list"), ("migration", "status")):
            done = run_cli(*command, "--store", store, cwd=tmp_path)
            line = one_line_error(done, exit_code=69)
            assert line.startswith("BackendUnavailable: no flag store in namespace 'f'"), line
            assert "a read-only replica" in line, line
        # A typo on a master is still a typo.
        typo = run_cli("flags", "list", "--store", f"{master.url}?namespace=f", cwd=tmp_path)
        assert one_line_error(typo).startswith("InvalidConfig: no flag store"), typo.stderr
