"""Test data for the patch store tests: small random tensors and metadata, no model needed."""

from __future__ import annotations

from typing import Any

import torch

from server.store.format import PatchMeta

FINGERPRINT = "f" * 8 + "0123456789abcdef" * 3 + "00000000"  # 64 hex chars, like a sha256
OTHER_FINGERPRINT = "a" * 64


def make_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Mixed dtypes and shapes, including a 0-dim tensor: what a BitFit/adapter patch plus head look like."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "encoder.layer.0.attention.output.dense.bias": torch.randn(8, generator=gen),
        "encoder.layer.0.output.LayerNorm.bias": torch.randn(8, generator=gen).to(torch.bfloat16),
        "head.weight": torch.randn(2, 8, generator=gen),
        "head.label_ids": torch.randint(0, 100, (2,), generator=gen, dtype=torch.int64),
        "head.scale": torch.tensor(1.5),
    }


def make_meta(fingerprint: str = FINGERPRINT, **overrides: Any) -> PatchMeta:
    fields: dict[str, Any] = {
        "method": "bitfit",
        "method_config": {"include_layernorm": True},
        "head": {"problem_type": "classification", "labels": ["neg", "pos"], "pooling": "mean", "num_outputs": 2},
        "backbone_id": "tiny-bert",
        "backbone_fingerprint": fingerprint,
        "training": {"lr": 1e-3, "seed": 0, "data_fraction": 0.5, "steps": 10, "task_name": "sst2"},
        "metrics": {"accuracy": 0.75, "f1": 0.7},
    }
    fields.update(overrides)
    return PatchMeta(**fields)
