"""Task heads: part of every patch, applied after pooling.

A head maps the pooled ``[batch, hidden]`` vector to ``num_outputs`` values: class logits (classification) or one
value (regression). In serving, heads of resident tasks are stacked like any other patch tensor so a mixed batch
applies every row's own head in one batched matmul.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from server.errors import InvalidArgument
from server.patches.slots import SlotTensor

HEAD_WEIGHT, HEAD_BIAS = "head.weight", "head.bias"
PROBLEM_TYPES = ("classification", "regression")
MAX_LABELS = 1000


@dataclass(frozen=True)
class HeadSpec:
    problem_type: str
    labels: tuple[str, ...]
    pooling: str

    def __post_init__(self) -> None:
        if self.problem_type not in PROBLEM_TYPES:
            raise InvalidArgument(f"problem type must be classification or regression, got {self.problem_type!r}")
        if self.problem_type == "classification":
            if not 2 <= len(self.labels) <= MAX_LABELS:
                raise InvalidArgument(f"classification needs 2 to {MAX_LABELS} labels, got {len(self.labels)}")
            if len(set(self.labels)) != len(self.labels):
                raise InvalidArgument("label names must be unique")
        elif self.labels:
            raise InvalidArgument("a regression task has no label names")

    @property
    def num_outputs(self) -> int:
        return len(self.labels) if self.problem_type == "classification" else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem_type": self.problem_type,
            "labels": list(self.labels),
            "pooling": self.pooling,
            "num_outputs": self.num_outputs,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> HeadSpec:
        return cls(
            str(values["problem_type"]), tuple(str(x) for x in values.get("labels", ())), str(values["pooling"])
        )


def init_head(hidden_size: int, spec: HeadSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    weight = torch.randn(spec.num_outputs, hidden_size, generator=generator) * 0.02  # [outputs, hidden]
    return {HEAD_WEIGHT: weight, HEAD_BIAS: torch.zeros(spec.num_outputs)}


def apply_head(pooled: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[batch, hidden] -> [batch, outputs]"""
    weight = tensors[HEAD_WEIGHT].to(pooled.device, pooled.dtype)
    return torch.nn.functional.linear(pooled, weight, tensors[HEAD_BIAS].to(pooled.device, pooled.dtype))


class HeadTable:
    """Resident heads stacked by slot; narrower heads are zero-padded to the widest one."""

    def __init__(self, hidden_size: int, device: torch.device, dtype: torch.dtype) -> None:
        self.weight = SlotTensor((1, hidden_size), device, dtype)  # [slots, outputs, hidden]
        self.bias = SlotTensor((1,), device, dtype)  # [slots, outputs]

    def write(self, slot: int, tensors: Mapping[str, torch.Tensor]) -> None:
        outputs = tensors[HEAD_WEIGHT].shape[0]
        self.weight.widen(0, outputs)
        self.bias.widen(0, outputs)
        self.weight.write(slot, tensors[HEAD_WEIGHT])
        self.bias.write(slot, tensors[HEAD_BIAS])

    def clear(self, slot: int) -> None:
        self.weight.clear(slot)
        self.bias.clear(slot)

    def apply(self, pooled: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[batch, hidden] -> [batch, max_outputs]; columns past a row's own head width are 0."""
        weight = self.weight.data.index_select(0, rows)  # [batch, outputs, hidden]
        bias = self.bias.data.index_select(0, rows)  # [batch, outputs]
        return torch.baddbmm(bias.unsqueeze(2), weight, pooled.to(weight.dtype).unsqueeze(2)).squeeze(2)

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes + self.bias.nbytes
