"""Fixtures for integration tests: real servers on port 0 with the tiny in-process backbone (no downloads)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client.api import TaskPatchClient
from server.app import create_server
from server.settings import Settings
from tests.integration.helpers import ServerHandle

ServerFactory = Callable[..., ServerHandle]


def make_settings(store_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server: tiny backbone, free ports, short batching wait; ``overrides`` win."""
    values: dict[str, Any] = {
        "backbone": "tiny",
        "device": "cpu",
        "port": 0,
        "metrics_port": 0,
        "store_dir": store_dir,
        "max_wait_ms": 2,
        "grace_s": 5,
        **overrides,
    }
    return Settings(**values)


class Servers:
    """Starts servers and stops every one still running at teardown."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.started: list[ServerHandle] = []

    def start(self, store_dir: Path | None = None, **overrides: Any) -> ServerHandle:
        store = store_dir or self.base_dir / f"store{len(self.started)}"
        server, port = create_server(make_settings(store, **overrides))
        handle = ServerHandle(server, port, store, server_client(port))
        self.started.append(handle)
        return handle

    def stop(self, handle: ServerHandle) -> None:
        handle.client.close()
        handle.server.stop(grace_s=5)

    def stop_all(self) -> None:
        for handle in reversed(self.started):
            self.stop(handle)  # stop() is idempotent


def server_client(port: int) -> TaskPatchClient:
    return TaskPatchClient(f"127.0.0.1:{port}", timeout_s=60)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """Function-scoped: ``servers.start(**setting_overrides)`` starts a server; all stop at teardown."""
    pool = Servers(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Module-scoped variant of :func:`servers`, for modules that share one server across tests."""
    pool = Servers(tmp_path_factory.mktemp("servers"))
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
def server(servers: Servers) -> ServerHandle:
    """A fresh default server (its own store and metrics)."""
    return servers.start()
