"""BitFit as a forward-pass input: per-row bias deltas added to module outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch import nn

from server.patches.base import MethodConfig, PatchMethod, PatchTable, TrainingDefaults
from server.patches.bitfit.config import BitFitConfig
from server.patches.routing import PointApplier
from server.patches.slots import SlotTensor

SUFFIX = ".bias_delta"


def _broadcast_rows(delta: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """[batch, out] -> [batch, 1, ..., out] to match an output of shape [batch, ..., out]."""
    return delta.view(delta.shape[0], *([1] * (output.dim() - 2)), delta.shape[-1])


class _SingleBitFit:
    def __init__(self, deltas: Mapping[str, torch.Tensor]) -> None:
        self.deltas = deltas

    def apply(self, point: str, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        delta = self.deltas.get(point + SUFFIX)
        if delta is None:
            return output
        return output + delta.to(output.dtype)  # [batch, seq, out] + [out]


class _TableBitFit:
    def __init__(self, table: BitFitTable, rows: torch.Tensor) -> None:
        self.table = table
        self.rows = rows

    def apply(self, point: str, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        slots = self.table.deltas.get(point)
        if slots is None:
            return output
        delta = slots.data.index_select(0, self.rows)  # [batch, out]
        if torch.is_inference_mode_enabled():
            # Serving: add in place. The output is a fresh tensor that nothing else holds, and skipping the
            # allocation of a second activation-sized tensor per patch point is most of this hook's cost on CPU.
            return output.add_(_broadcast_rows(delta, output))
        return output + _broadcast_rows(delta, output)


class BitFitTable(PatchTable):
    def __init__(self, shapes: Mapping[str, int], device: torch.device, dtype: torch.dtype) -> None:
        self.deltas = {point: SlotTensor((size,), device, dtype) for point, size in shapes.items()}

    def write(self, slot: int, tensors: Mapping[str, torch.Tensor], config: MethodConfig) -> None:
        for point, slots in self.deltas.items():
            delta = tensors.get(point + SUFFIX)
            if delta is None:
                slots.ensure(slot)
                slots.clear(slot)
            else:
                slots.write(slot, delta)

    def clear(self, slot: int) -> None:
        for slots in self.deltas.values():
            slots.clear(slot)

    def bind(self, rows: torch.Tensor) -> PointApplier:
        return _TableBitFit(self, rows)

    @property
    def nbytes(self) -> int:
        return sum(slots.nbytes for slots in self.deltas.values())


def _bias_size(module: nn.Module) -> int:
    bias = module.bias
    assert isinstance(bias, torch.Tensor)
    return int(bias.shape[0])


def _biased_modules(backbone: nn.Module, pooling: str, layernorm: bool = True) -> dict[str, nn.Module]:
    kinds: tuple[type[nn.Module], ...] = (nn.Linear, nn.LayerNorm) if layernorm else (nn.Linear,)
    found: dict[str, nn.Module] = {}
    for name, module in backbone.named_modules():
        if not isinstance(module, kinds) or getattr(module, "bias", None) is None:
            continue
        # The pooler only runs for pooler pooling; deltas there would never receive a gradient otherwise.
        if pooling != "pooler" and name.split(".")[0] == "pooler":
            continue
        found[name] = module
    return found


class BitFitMethod(PatchMethod):
    name = "bitfit"
    config_class = BitFitConfig
    # Where these come from: docs/training-defaults.md (sweeps on MRPC, CoLA, STS-B with the embedded backbone).
    defaults = TrainingDefaults(learning_rate=3e-3, head_learning_rate=1e-2, epochs=10, batch_size=16)

    def patch_points(self, backbone: nn.Module, pooling: str) -> list[str]:
        return list(_biased_modules(backbone, pooling))

    def init_tensors(
        self, backbone: nn.Module, pooling: str, config: MethodConfig, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        layernorm = cast(BitFitConfig, config).layernorm
        return {
            name + SUFFIX: torch.zeros(_bias_size(module), dtype=torch.float32)
            for name, module in _biased_modules(backbone, pooling, layernorm).items()
        }

    def bind_single(self, tensors: Mapping[str, torch.Tensor], config: MethodConfig) -> PointApplier:
        return _SingleBitFit(tensors)

    def new_table(self, backbone: nn.Module, pooling: str, device: torch.device, dtype: torch.dtype) -> PatchTable:
        shapes = {name: _bias_size(module) for name, module in _biased_modules(backbone, pooling).items()}
        return BitFitTable(shapes, device, dtype)
