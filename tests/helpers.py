"""Helpers shared by test modules (fixtures live in conftest files)."""

from __future__ import annotations

import torch

from server.model import Patch, PatchedModel
from server.patches import get_method
from server.patches.heads import HeadSpec, init_head


def random_patch(
    model: PatchedModel, method: str, seed: int, *, labels: tuple[str, ...] = ("no", "yes"), config: dict | None = None
) -> Patch:
    """A patch with non-trivial random values everywhere (a freshly initialised one is mostly zeros)."""
    generator = torch.Generator().manual_seed(seed)
    impl = get_method(method)
    method_config = impl.parse_config(config or {})
    problem = "classification" if labels else "regression"
    head = HeadSpec(problem, labels, model.backbone.pooling)
    tensors = impl.init_tensors(model.backbone.model, model.backbone.pooling, method_config, generator)
    tensors.update(init_head(model.backbone.hidden_size, head, generator))
    tensors = {k: v + torch.randn(v.shape, generator=generator) * 0.05 for k, v in tensors.items()}
    return Patch(method, method_config, head, tensors)
