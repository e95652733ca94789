"""Shared fixtures: a tiny random BERT built in-process (no downloads), and where the GLUE files are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def glue_dir() -> Path:
    return Path(os.environ.get("GLUE_DIR") or REPO_ROOT.parent / "shared" / "data" / "glue")


@pytest.fixture(scope="session")
def glue_data_dir() -> Path:
    path = glue_dir()
    if not (path / "MRPC" / "train.tsv").is_file():
        pytest.skip(f"GLUE data not found at {path} (set GLUE_DIR)")
    return path
