"""Full fine-tuning without touching the shared backbone.

The trainable tensors are copies of every backbone parameter, substituted at call time with
``torch.func.functional_call``; the resident backbone itself is never written. It cannot be stacked per row, so the
server does not serve it (``servable = False``) and the study harness uses it as the baseline.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from server.patches.base import MethodConfig, PatchMethod, TrainingDefaults
from server.patches.full.config import FullConfig
from server.patches.routing import PointApplier

PREFIX = "backbone."


class _NoPointChanges:
    def apply(self, point: str, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return output


class FullMethod(PatchMethod):
    name = "full"
    config_class = FullConfig
    # Where these come from: docs/training-defaults.md.
    defaults = TrainingDefaults(
        learning_rate=5e-5, head_learning_rate=1e-3, epochs=10, batch_size=32, weight_decay=0.01
    )
    servable = False

    def patch_points(self, backbone: nn.Module, pooling: str) -> list[str]:
        return []

    def init_tensors(
        self, backbone: nn.Module, pooling: str, config: MethodConfig, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        return {
            PREFIX + name: p.detach().to(device="cpu", dtype=torch.float32).clone()
            for name, p in backbone.named_parameters()
        }

    def bind_single(self, tensors: Mapping[str, torch.Tensor], config: MethodConfig) -> PointApplier:
        return _NoPointChanges()

    def parameter_overrides(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        return {name[len(PREFIX) :]: t for name, t in tensors.items() if name.startswith(PREFIX)}
