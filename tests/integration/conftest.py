"""Fixtures for integration tests: real servers on port 0 with the tiny in-process backbone (no downloads)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import ServerHandle, Servers


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
