"""The plug-in contract every patch method implements.

A method is one folder (``config.py`` + ``method.py``) and one ``register`` call. The model, engine, store and RPC
layer only talk to this interface, so adding LoRA or IA3 touches none of them.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from server.errors import InvalidArgument
from server.patches.routing import PointApplier

ConfigT = TypeVar("ConfigT", bound="MethodConfig")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base for a method's configuration; subclasses are frozen dataclasses with defaults for every field."""

    @classmethod
    def from_dict(cls: type[ConfigT], values: Mapping[str, Any] | None) -> ConfigT:
        values = dict(values or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidArgument(
                f"unknown option(s) {', '.join(unknown)}; valid options: {', '.join(known) or 'none'}"
            )
        config = cls(**values)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise InvalidArgument for values out of range."""


@dataclasses.dataclass(frozen=True)
class TrainingDefaults:
    """Per-method hyper-parameters that the trainer uses when the caller leaves them unset."""

    learning_rate: float
    head_learning_rate: float
    epochs: int
    batch_size: int
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0


class PatchTable(ABC):
    """Resident patches of one method, stacked by slot so one forward pass can gather per-row patches.

    Slot 0 is reserved and always means "no patch of this method" (the bare backbone at every point).
    """

    @abstractmethod
    def write(self, slot: int, tensors: Mapping[str, torch.Tensor], config: MethodConfig) -> None:
        """Copy one patch's tensors into ``slot`` (growing the table when needed)."""

    @abstractmethod
    def clear(self, slot: int) -> None:
        """Zero ``slot`` so stale weights can never be gathered."""

    @abstractmethod
    def bind(self, rows: torch.Tensor) -> PointApplier:
        """An applier for a batch whose row ``i`` uses slot ``rows[i]`` (``rows``: LongTensor[batch])."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held on the device by the table."""


class PatchMethod(ABC):
    """One way of patching the frozen backbone (BitFit, adapters, ...)."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    defaults: ClassVar[TrainingDefaults]
    # Methods that can be stacked into a PatchTable and mixed per row; ``full`` cannot.
    servable: ClassVar[bool] = True

    def parse_config(self, values: Mapping[str, Any] | None) -> MethodConfig:
        return self.config_class.from_dict(values)

    @abstractmethod
    def patch_points(self, backbone: nn.Module, pooling: str) -> list[str]:
        """Qualified module names in ``backbone`` whose output this method modifies."""

    @abstractmethod
    def init_tensors(
        self, backbone: nn.Module, pooling: str, config: MethodConfig, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Fresh patch tensors (fp32, CPU) that make the patched model equal the bare backbone or close to it."""

    @abstractmethod
    def bind_single(self, tensors: Mapping[str, torch.Tensor], config: MethodConfig) -> PointApplier:
        """An applier that applies one patch to every row (training, single-task reference)."""

    def new_table(self, backbone: nn.Module, pooling: str, device: torch.device, dtype: torch.dtype) -> PatchTable:
        raise NotImplementedError(f"method {self.name!r} cannot be served from a resident table")

    def parameter_overrides(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Backbone parameters to substitute via ``torch.func.functional_call`` (full fine-tuning); else None."""
        return None


def module_output_points(backbone: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    modules = dict(backbone.named_modules())
    return {name: modules[name] for name in names}
