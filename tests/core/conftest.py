from __future__ import annotations

import pytest

from server.backbone import Backbone, load_backbone
from server.model import PatchedModel


@pytest.fixture()
def backbone() -> Backbone:
    return load_backbone("tiny:1")


@pytest.fixture()
def model(backbone: Backbone) -> PatchedModel:
    return PatchedModel(backbone)


@pytest.fixture()
def tiny_task():
    from tasks.types import Example, TaskData

    train = [Example(f"sentence number {i} about cats", f"another {i}", "yes" if i % 2 else "no") for i in range(24)]
    dev = train[:8]
    return TaskData("tiny", "classification", ("no", "yes"), ("accuracy",), train, dev)


@pytest.fixture()
def toy_task():
    """Separable by one token: the word 'good' vs 'bad' decides the label."""
    from tasks.types import Example, TaskData

    words = ["red", "blue", "green", "small", "large", "old", "new", "fast"]
    train = [
        Example(f"this {w} thing is {'good' if i % 2 else 'bad'}", None, "pos" if i % 2 else "neg")
        for i, w in enumerate(words * 4)
    ]
    return TaskData("toy", "classification", ("neg", "pos"), ("accuracy",), train, train[:16])
