"""Fixtures for client tests: a fake in-process gRPC peer, and a CLI runner with a controlled environment."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.cli import run
from tests.client.fake_server import FakeTaskPatch, start_fake_server


@pytest.fixture
def fake() -> Iterator[FakeTaskPatch]:
    server, servicer = start_fake_server()
    try:
        yield servicer
    finally:
        server.stop(grace=None)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


CliRunner = Callable[..., CliResult]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """``cli(*argv, env={...})`` runs the CLI in-process with exactly ``env`` as its environment."""
    monkeypatch.setenv("COLUMNS", "200")  # wide rich tables, so assertions do not depend on wrapping

    def invoke(*argv: str | Path, env: dict[str, str] | None = None) -> CliResult:
        capsys.readouterr()
        code = run([str(arg) for arg in argv], env or {})
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke
