"""Fixtures: a real uvicorn admin server over a real SQLite store and registry."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from foundation import MemoryRegistry, spawn_thread
from foundation.admin import AdminServer
from foundation.flags import FeatureFlags, Migration, SQLiteFlagStore
from tests.admin._world import TOKENS, open_world

REPO = Path(__file__).resolve().parents[2]


@dataclass
class World:
    path: Path
    store: SQLiteFlagStore
    flags: FeatureFlags
    migration: Migration
    registry: MemoryRegistry
    server: AdminServer
    problems: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def sleeper(self) -> subprocess.Popen[bytes]:
        """An OS process that runs until killed (an agent to kill)."""
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        self.processes.append(proc)
        return proc

    def other_process(self, action: str, flag: str) -> None:
        """Another process writes the same SQLite store."""
        out = subprocess.run(
            [sys.executable, "-m", "tests.admin._world", str(self.path), action, flag],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "OK", out.stderr


def make_world(tmp_path: Path, **server: Any) -> World:
    path = tmp_path / "flags.db"
    store, flags, _ = open_world(path)
    problems: list[str] = []
    from tests.admin._world import PLAN

    migration = Migration(flags, PLAN, readiness=[lambda: list(problems)])
    registry = MemoryRegistry()
    admin = AdminServer(
        flags=flags,
        migration=migration,
        registry=registry,
        token=server.pop("token", TOKENS),
        bind=server.pop("bind", "127.0.0.1:0"),
        **server,
    )
    world = World(path, store, flags, migration, registry, admin, problems)
    admin.start()
    return world


def close_world(world: World) -> None:
    world.server.close()
    world.stop.set()
    for proc in world.processes:
        proc.kill()
        proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
    world.registry.close()
    world.flags.close()
    world.store.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path)
    try:
        w.registry.register(
            "worker-1",
            spawn_thread(w.stop.wait, name="worker-1"),
            {"role": "io", "limits": {"cpu": 2}},
        )
        w.registry.register(
            "worker-2",
            spawn_thread(w.stop.wait, name="worker-2"),
            {"role": "cpu", "limits": {"cpu": 8}},
        )
        yield w
    finally:
        close_world(w)
