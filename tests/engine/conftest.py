from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.backbone import load_backbone
from server.engine import EngineSettings, ServingEngine
from server.metrics import Metrics
from server.model import Patch, PatchedModel
from server.store import PatchStore
from tests.helpers import random_patch


@pytest.fixture()
def model() -> PatchedModel:
    return PatchedModel(load_backbone("tiny:2"))


@pytest.fixture()
def store(tmp_path: Path, model: PatchedModel) -> Iterator[PatchStore]:
    with PatchStore(tmp_path / "store", model.backbone.fingerprint) as opened:
        yield opened


def publish(store: PatchStore, model: PatchedModel, name: str, patch: Patch) -> None:
    store.publish(name, patch.tensors, patch.meta(model.backbone, {"task_name": name}, {}))


@pytest.fixture()
def make_engine(model: PatchedModel, store: PatchStore) -> Iterator[Callable[..., ServingEngine]]:
    engines: list[ServingEngine] = []

    def make(**settings: object) -> ServingEngine:
        engine = ServingEngine(model, store, EngineSettings(**settings), Metrics())  # type: ignore[arg-type]
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


@pytest.fixture()
def tasks(model: PatchedModel, store: PatchStore) -> dict[str, Patch]:
    """Six stored tasks: bitfit and adapter, 2- and 3-class, and one regression."""
    specs = [
        ("b0", "bitfit", ("no", "yes"), {}),
        ("b1", "bitfit", ("a", "b", "c"), {}),
        ("b2", "bitfit", (), {}),
        ("a0", "adapter", ("no", "yes"), {}),
        ("a1", "adapter", ("x", "y", "z"), {"variant": "pfeiffer", "bottleneck": 5}),
        ("a2", "adapter", ("no", "yes"), {"activation": "gelu"}),
    ]
    patches = {}
    for seed, (name, method, labels, config) in enumerate(specs):
        patch = random_patch(model, method, seed + 10, labels=labels, config=config)
        publish(store, model, name, patch)
        patches[name] = patch
    return patches
