"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020).

``houlsby`` places an adapter after the attention-output projection and after the FFN-output projection of every
layer, before the residual add; ``pfeiffer`` keeps only the FFN one (half the parameters, similar quality).
"""

from __future__ import annotations

from dataclasses import dataclass

from server.errors import InvalidArgument
from server.patches.base import MethodConfig

VARIANTS = ("houlsby", "pfeiffer")
# Each activation maps 0 to 0, which is what lets narrower adapters be zero-padded inside a shared table.
ACTIVATIONS = ("relu", "gelu", "silu")


@dataclass(frozen=True)
class AdapterConfig(MethodConfig):
    variant: str = "houlsby"
    reduction_factor: int = 16  # bottleneck = hidden_size // reduction_factor unless ``bottleneck`` is set
    bottleneck: int = 0
    activation: str = "relu"
    init_std: float = 1e-2

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise InvalidArgument(f"adapter variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.activation not in ACTIVATIONS:
            raise InvalidArgument(f"adapter activation must be one of {', '.join(ACTIVATIONS)}")
        if not isinstance(self.reduction_factor, int) or not 1 <= self.reduction_factor <= 1024:
            raise InvalidArgument("adapter reduction_factor must be an integer in [1, 1024]")
        if not isinstance(self.bottleneck, int) or not 0 <= self.bottleneck <= 4096:
            raise InvalidArgument("adapter bottleneck must be an integer in [0, 4096] (0: use reduction_factor)")
        if not 0 < float(self.init_std) <= 1:
            raise InvalidArgument("adapter init_std must be in (0, 1]")

    def bottleneck_size(self, hidden_size: int) -> int:
        return self.bottleneck or max(1, hidden_size // self.reduction_factor)
