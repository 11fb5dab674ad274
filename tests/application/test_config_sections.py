"""One ``foundation.toml`` for the application and the ``foundation`` command,
and a Redis flag store that goes where its own section says."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis

from foundation import Application
from foundation.application import AppConfig
from foundation.errors import InvalidConfig
from foundation.flags import RedisFlagStore
from tests.redis_support import RedisServer


def test_the_cli_section_shares_the_file_with_the_application(tmp_path: Path) -> None:
    store = tmp_path / "flags.sqlite3"
    (tmp_path / "foundation.toml").write_text(
        textwrap.dedent(
            f"""
            [flag_store]
            kind = "sqlite"
            path = "{store}"

            [flags]
            use_ets_agent_registry = true

            [cli]
            store = "sqlite:///{store}"
            """
        )
    )
    config = AppConfig.discover(tmp_path)
    with Application.start(config, services=("flags",)) as app:
        assert app.flags is not None
        app.flags.enable("enable_migration_monitoring", by="ops")
    # The foundation command reads the same file, from the same directory.
    shown = subprocess.run(
        [sys.executable, "-m", "foundation.cli", "--json", "flags", "show",
         "enable_migration_monitoring"],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert '"switch": true' in shown.stdout, shown.stdout


def test_pyproject_may_hold_the_cli_table_too(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.foundation.registry]\nindexed = ["node"]\n\n'
        '[tool.foundation.cli]\nnamespace = "shop"\n'
    )
    assert AppConfig.discover(tmp_path).indexed == ("node",)


def test_a_redis_flag_store_uses_its_own_url_and_namespace(tmp_path: Path) -> None:
    with RedisServer() as registry_redis, RedisServer() as flags_redis:
        path = tmp_path / "foundation.toml"
        path.write_text(
            textwrap.dedent(
                f"""
                [registry]
                backend = "redis"
                redis_url = "{registry_redis.url}"
                namespace = "shop"

                [flag_store]
                kind = "redis"
                redis_url = "{flags_redis.url}"
                namespace = "shop-flags"
                """
            )
        )
        config = AppConfig.from_file(path)
        assert (config.flag_store_redis_url, config.flag_store_namespace) == (
            flags_redis.url,
            "shop-flags",
        )
        with Application.start(config, services=("flags",)) as app:
            assert app.flags is not None
            app.flags.disable("use_ets_agent_registry", by="ops")
        # The write is where the flag store section said, and nowhere else.
        with RedisFlagStore(flags_redis.url, namespace="shop-flags") as store:
            assert store.load_states()["use_ets_agent_registry"].switch is False
            assert [c.by for c in store.history("use_ets_agent_registry")] == ["ops"]
        with redis.Redis.from_url(registry_redis.url) as plain:
            assert plain.keys("*") == []


def test_a_redis_flag_store_falls_back_to_the_registry_settings(tmp_path: Path) -> None:
    config = AppConfig.from_mapping(
        {
            "registry": {"redis_url": "redis://127.0.0.1:1/0", "namespace": "shop"},
            "flag_store": {"kind": "redis"},
        }
    )
    assert config.flag_store_redis_url is None
    assert (config.redis_url, config.namespace) == ("redis://127.0.0.1:1/0", "shop")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"flag_store": {"kind": "redis"}}, "flag_store.kind = 'redis' needs flag_store.redis_url"),
        ({"registry": {"backend": "redis"}}, "registry.backend = 'redis' needs registry.redis_url"),
        ({"flag_store": {"kind": "redis", "namespace": 3, "redis_url": "redis://h/0"}},
         "flag_store_namespace has the wrong type"),
    ],
)  # fmt: skip
def test_a_redis_choice_without_its_settings_is_refused(
    data: dict[str, dict[str, object]], message: str
) -> None:
    with pytest.raises(InvalidConfig, match=message):
        AppConfig.from_mapping(data)


def test_history_limit_reaches_the_flag_store(tmp_path: Path) -> None:
    store_path = tmp_path / "flags.sqlite3"
    (tmp_path / "foundation.toml").write_text(
        f'[flag_store]\nkind = "sqlite"\npath = "{store_path}"\nhistory_limit = 20\n'
    )
    config = AppConfig.discover(tmp_path)
    assert config.flag_store_history_limit == 20
    with Application.start(config, services=("flags",)) as app:
        assert app.flags is not None
        for n in range(60):
            app.flags.set_percentage("use_ets_agent_registry", n, by="ops")
        kept = app.flags.history("use_ets_agent_registry")
    assert 20 <= len(kept) <= 22, len(kept)  # trimmed in steps of 10 %
    assert kept[-1].new.percentage == 59.0


def test_unlimited_history_keeps_every_record() -> None:
    config = AppConfig.from_mapping({"flag_store": {"history_limit": "unlimited"}})
    assert config.flag_store_history_limit == "unlimited"
    with Application.start(config, services=("flags",)) as app:
        assert app.flags is not None
        assert app.flags.store.history_limit is None  # type: ignore[attr-defined]


def test_the_default_history_limit_is_the_stores() -> None:
    with Application.start(AppConfig(), services=("flags",)) as app:
        assert app.flags is not None
        assert app.flags.store.history_limit == 10_000  # type: ignore[attr-defined]


@pytest.mark.parametrize("limit", [0, -5, "all", 2.5, True])
def test_a_bad_history_limit_is_refused(limit: object) -> None:
    with pytest.raises(InvalidConfig, match="history_limit"):
        AppConfig.from_mapping({"flag_store": {"history_limit": limit}})
