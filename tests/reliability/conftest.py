"""Fixtures for the reliability tests: real server processes (see ``procs.py``), the tiny backbone's fingerprint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.procs import ExecLauncher, ForkLauncher, Launcher, Pool


@pytest.fixture(scope="session")
def fork_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkLauncher]:
    """One fork server for the whole session: pays the server's imports once (see ``forkserver.py``)."""
    launcher = ForkLauncher(tmp_path_factory.mktemp("forkserver"))
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture(scope="module")
def procs(fork_launcher: ForkLauncher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """Forked server processes for one module; every one still running is killed at the end of the module."""
    pool = Pool(fork_launcher, tmp_path_factory.mktemp("logs"))
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def exec_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """``python -m server`` subprocesses for one module (slow to start: seconds of imports each)."""
    launcher = ExecLauncher(tmp_path_factory.mktemp("exec-logs"))
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture(scope="session")
def tiny_fingerprint() -> str:
    """The fingerprint of ``--backbone tiny`` (what every patch the test servers write carries)."""
    from server.backbone import load_backbone

    return load_backbone("tiny", device="cpu", dtype="fp32").fingerprint


def store_names(root: Path) -> set[str]:
    return {entry.name for entry in root.iterdir()} if root.is_dir() else set()
