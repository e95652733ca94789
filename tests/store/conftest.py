"""Fixtures for the patch store tests (data helpers live in ``helpers.py`` so tests can import them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from server.store.format import PatchMeta

from .helpers import make_meta, make_tensors


@pytest.fixture
def tensors() -> dict[str, torch.Tensor]:
    return make_tensors()


@pytest.fixture
def meta() -> PatchMeta:
    return make_meta()


@pytest.fixture
def tree_snapshot() -> Callable[[Path], dict[str, bytes]]:
    """Every file under a directory with its content, to prove that nothing was deleted or changed."""

    def snapshot(root: Path) -> dict[str, bytes]:
        return {
            str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file() and path.name != ".lock"
        }

    return snapshot
