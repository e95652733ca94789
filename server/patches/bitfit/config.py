"""BitFit (Ben Zaken et al., 2022): train only bias terms.

The patch stores a delta per bias rather than the new bias itself, so the backbone's bias stays untouched and the
delta is simply added to the module's output (``x W^T + b + delta``): the same arithmetic as a model whose bias was
set to ``b + delta``.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.errors import InvalidArgument
from server.patches.base import MethodConfig


@dataclass(frozen=True)
class BitFitConfig(MethodConfig):
    # Include LayerNorm biases (the paper trains every bias term; turning this off leaves only Linear biases).
    layernorm: bool = True

    def validate(self) -> None:
        if not isinstance(self.layernorm, bool):
            raise InvalidArgument("bitfit option layernorm must be true or false")
