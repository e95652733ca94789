"""Adapters as a forward-pass input: ``out + up(act(down(out)))`` at each adapter point, per row."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from server.errors import InvalidArgument
from server.patches.adapter.config import ACTIVATIONS, AdapterConfig
from server.patches.base import MethodConfig, PatchMethod, PatchTable, TrainingDefaults
from server.patches.routing import PointApplier
from server.patches.slots import SlotTensor

_ACTIVATION_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}

# Output projections of the attention block and of the feed-forward block, per architecture family.
_ATTENTION_OUTPUT = re.compile(r"(.*\.attention\.output\.dense|.*\.attention\.out_lin)$")
_FFN_OUTPUT = re.compile(r"(.*\.layer\.\d+\.output\.dense|.*\.ffn\.lin2)$")

DOWN_W, DOWN_B, UP_W, UP_B = ".adapter.down.weight", ".adapter.down.bias", ".adapter.up.weight", ".adapter.up.bias"


def adapter_points(backbone: nn.Module, variant: str) -> list[str]:
    names = [name for name, module in backbone.named_modules() if isinstance(module, nn.Linear)]
    ffn = [name for name in names if _FFN_OUTPUT.match(name)]
    attention = [name for name in names if _ATTENTION_OUTPUT.match(name)]
    if not ffn:
        raise InvalidArgument("adapters: cannot find the feed-forward output projections of this backbone")
    return sorted(ffn + attention) if variant == "houlsby" else ffn


class _SingleAdapter:
    def __init__(self, tensors: Mapping[str, torch.Tensor], activation: str) -> None:
        self.tensors = tensors
        self.activation = _ACTIVATION_FNS[activation]

    def apply(self, point: str, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        down_w = self.tensors.get(point + DOWN_W)
        if down_w is None:
            return output
        t = self.tensors
        dtype = output.dtype
        hidden = self.activation(F.linear(output, down_w.to(dtype), t[point + DOWN_B].to(dtype)))  # [b, s, r]
        return output + F.linear(hidden, t[point + UP_W].to(dtype), t[point + UP_B].to(dtype))  # [b, s, h]


class _PointSlots:
    """Stacked weights of one adapter point, stored pre-transposed for ``baddbmm``."""

    def __init__(self, hidden: int, device: torch.device, dtype: torch.dtype) -> None:
        self.down_w = SlotTensor((hidden, 1), device, dtype)  # [slots, hidden, r]
        self.down_b = SlotTensor((1,), device, dtype)  # [slots, r]
        self.up_w = SlotTensor((1, hidden), device, dtype)  # [slots, r, hidden]
        self.up_b = SlotTensor((hidden,), device, dtype)  # [slots, hidden]

    def parts(self) -> tuple[SlotTensor, ...]:
        return (self.down_w, self.down_b, self.up_w, self.up_b)


class AdapterTable(PatchTable):
    def __init__(self, points: Mapping[str, int], device: torch.device, dtype: torch.dtype) -> None:
        self.points = {point: _PointSlots(hidden, device, dtype) for point, hidden in points.items()}
        self.activation_ids = SlotTensor((), device, torch.long)  # [slots] index into ACTIVATIONS

    def write(self, slot: int, tensors: Mapping[str, torch.Tensor], config: MethodConfig) -> None:
        activation = cast(AdapterConfig, config).activation
        self.activation_ids.write(slot, torch.tensor(ACTIVATIONS.index(activation)))
        for point, slots in self.points.items():
            down_w = tensors.get(point + DOWN_W)
            if down_w is None:  # a pfeiffer patch has no attention-output adapters
                for part in slots.parts():
                    part.ensure(slot)
                    part.clear(slot)
                continue
            rank = down_w.shape[0]
            slots.down_w.widen(1, rank)
            slots.down_b.widen(0, rank)
            slots.up_w.widen(0, rank)
            slots.down_w.write(slot, down_w.t())
            slots.down_b.write(slot, tensors[point + DOWN_B])
            slots.up_w.write(slot, tensors[point + UP_W].t())
            slots.up_b.write(slot, tensors[point + UP_B])

    def clear(self, slot: int) -> None:
        for slots in self.points.values():
            for part in slots.parts():
                part.clear(slot)

    def bind(self, rows: torch.Tensor) -> PointApplier:
        activation_ids = self.activation_ids.data.index_select(0, rows)  # [batch]
        return _TableAdapter(self, rows, activation_ids)

    @property
    def nbytes(self) -> int:
        return self.activation_ids.nbytes + sum(p.nbytes for s in self.points.values() for p in s.parts())


class _TableAdapter:
    def __init__(self, table: AdapterTable, rows: torch.Tensor, activation_ids: torch.Tensor) -> None:
        self.table = table
        self.rows = rows
        present = torch.unique(activation_ids).tolist()
        self.activation_masks = [(ACTIVATIONS[i], activation_ids == i) for i in present]

    def _activate(self, z: torch.Tensor) -> torch.Tensor:
        if len(self.activation_masks) == 1:
            return _ACTIVATION_FNS[self.activation_masks[0][0]](z)
        out = torch.zeros_like(z)
        for name, mask in self.activation_masks:
            out = torch.where(mask[:, None, None], _ACTIVATION_FNS[name](z), out)
        return out

    def apply(self, point: str, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        slots = self.table.points.get(point)
        if slots is None:
            return output
        rows = self.rows
        down_w = slots.down_w.data.index_select(0, rows)  # [batch, hidden, r]
        down_b = slots.down_b.data.index_select(0, rows).unsqueeze(1)  # [batch, 1, r]
        up_w = slots.up_w.data.index_select(0, rows)  # [batch, r, hidden]
        up_b = slots.up_b.data.index_select(0, rows).unsqueeze(1)  # [batch, 1, hidden]
        hidden = self._activate(torch.baddbmm(down_b, output, down_w))  # [batch, seq, r]
        return output + torch.baddbmm(up_b, hidden, up_w)  # [batch, seq, hidden]


class AdapterMethod(PatchMethod):
    name = "adapter"
    config_class = AdapterConfig
    # Where these come from: docs/training-defaults.md.
    defaults = TrainingDefaults(learning_rate=1e-3, head_learning_rate=1e-3, epochs=10, batch_size=32)

    def patch_points(self, backbone: nn.Module, pooling: str) -> list[str]:
        # Hooks go on every possible point; a pfeiffer patch simply has no tensors for the attention points.
        return adapter_points(backbone, "houlsby")

    def init_tensors(
        self, backbone: nn.Module, pooling: str, config: MethodConfig, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        config = cast(AdapterConfig, config)
        modules = dict(backbone.named_modules())
        tensors: dict[str, torch.Tensor] = {}
        for point in adapter_points(backbone, config.variant):
            hidden = cast(nn.Linear, modules[point]).out_features
            rank = config.bottleneck_size(hidden)
            # Up-projection starts at zero so the patched model starts exactly at the backbone (Houlsby's
            # near-identity initialisation, made exact).
            tensors[point + DOWN_W] = torch.randn(rank, hidden, generator=generator) * config.init_std
            tensors[point + DOWN_B] = torch.zeros(rank)
            tensors[point + UP_W] = torch.zeros(hidden, rank)
            tensors[point + UP_B] = torch.zeros(hidden)
        return tensors

    def bind_single(self, tensors: Mapping[str, torch.Tensor], config: MethodConfig) -> PointApplier:
        return _SingleAdapter(tensors, cast(AdapterConfig, config).activation)

    def new_table(self, backbone: nn.Module, pooling: str, device: torch.device, dtype: torch.dtype) -> PatchTable:
        modules = dict(backbone.named_modules())
        points = {p: cast(nn.Linear, modules[p]).out_features for p in adapter_points(backbone, "houlsby")}
        return AdapterTable(points, device, dtype)
