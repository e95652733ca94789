"""Servable random patches published straight into a store directory (no training, no server running).

Used to prepare stores before a server starts: damaged-store cases, the soak's stable tasks.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from server.backbone import load_backbone
from server.model import PatchedModel
from server.store import PatchStore, PatchVersion
from tests.helpers import random_patch


@lru_cache(maxsize=4)
def tiny_model(backbone: str = "tiny") -> PatchedModel:
    return PatchedModel(load_backbone(backbone, device="cpu", dtype="fp32"))


def random_meta_and_tensors(name: str, seed: int, backbone: str = "tiny", labels: tuple[str, ...] = ("neg", "pos")):  # type: ignore[no-untyped-def]
    model = tiny_model(backbone)
    patch = random_patch(model, "bitfit", seed, labels=labels)
    training = {"task_name": name, "seed": seed, "source": "tests/reliability/patches.py"}
    meta = patch.meta(model.backbone, training, {"accuracy": 0.5})
    return patch.tensors, meta


def publish_random(
    store_dir: Path, names: Iterable[str], *, versions: int = 1, backbone: str = "tiny", seed: int = 0
) -> dict[str, list[PatchVersion]]:
    """Publish ``versions`` random BitFit versions of each task into the store at ``store_dir`` (then close it)."""
    model = tiny_model(backbone)
    published: dict[str, list[PatchVersion]] = {}
    with PatchStore(store_dir, model.backbone.fingerprint) as store:
        for i, name in enumerate(names):
            for v in range(versions):
                tensors, meta = random_meta_and_tensors(name, seed + 1000 * i + v, backbone)
                published.setdefault(name, []).append(store.publish(name, tensors, meta))
    return published
