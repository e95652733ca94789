"""Full fine-tuning: the baseline of the study. Its "patch" is a complete copy of the backbone's weights."""

from __future__ import annotations

from dataclasses import dataclass

from server.patches.base import MethodConfig


@dataclass(frozen=True)
class FullConfig(MethodConfig):
    pass
