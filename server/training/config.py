"""Training hyper-parameters: what the caller may set, and the per-method defaults that fill the rest."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from server.errors import InvalidArgument
from server.patches.registry import get_method

MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 1024
MAX_SEQ_LENGTH = 512


@dataclass(frozen=True)
class TrainConfig:
    """``None`` means "the method's default" (see ``PatchMethod.defaults``)."""

    method: str = "bitfit"
    method_config: Mapping[str, Any] = field(default_factory=dict)
    learning_rate: float | None = None
    head_learning_rate: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    warmup_ratio: float | None = None
    weight_decay: float | None = None
    max_grad_norm: float = 1.0
    max_seq_length: int = 128
    seed: int = 0
    data_fraction: float = 1.0
    time_budget_s: float = 0.0  # 0: unlimited
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0: off
    evals_per_epoch: int = 1
    keep_best: bool = True
    head_dropout: float = 0.1

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` replaced by the method's default, validated."""
        defaults = get_method(self.method).defaults
        filled = dataclasses.replace(
            self,
            learning_rate=defaults.learning_rate if self.learning_rate is None else self.learning_rate,
            head_learning_rate=(
                defaults.head_learning_rate if self.head_learning_rate is None else self.head_learning_rate
            ),
            epochs=defaults.epochs if self.epochs is None else self.epochs,
            batch_size=defaults.batch_size if self.batch_size is None else self.batch_size,
            warmup_ratio=defaults.warmup_ratio if self.warmup_ratio is None else self.warmup_ratio,
            weight_decay=defaults.weight_decay if self.weight_decay is None else self.weight_decay,
            method_config=dict(self.method_config),
        )
        filled.validate()
        return filled

    def validate(self) -> None:
        get_method(self.method).parse_config(self.method_config)

        def check(name: str, ok: bool, rule: str) -> None:
            if not ok:
                raise InvalidArgument(f"{name} must be {rule}, got {getattr(self, name)!r}")

        def finite(value: object) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        lr, head_lr = self.learning_rate, self.head_learning_rate
        check("learning_rate", lr is None or (finite(lr) and 0 < lr <= 1), "in (0, 1]")
        check("head_learning_rate", head_lr is None or (finite(head_lr) and 0 < head_lr <= 1), "in (0, 1]")
        epochs, batch = self.epochs, self.batch_size
        check("epochs", epochs is None or (isinstance(epochs, int) and 1 <= epochs <= MAX_EPOCHS), f"1..{MAX_EPOCHS}")
        check("batch_size", batch is None or (isinstance(batch, int) and 1 <= batch <= MAX_BATCH_SIZE), "1..1024")
        warmup, decay = self.warmup_ratio, self.weight_decay
        check("warmup_ratio", warmup is None or (finite(warmup) and 0 <= warmup < 1), "in [0, 1)")
        check("weight_decay", decay is None or (finite(decay) and 0 <= decay <= 1), "in [0, 1]")
        check("max_grad_norm", finite(self.max_grad_norm) and self.max_grad_norm > 0, "positive")
        check("max_seq_length", 8 <= self.max_seq_length <= MAX_SEQ_LENGTH, f"8..{MAX_SEQ_LENGTH}")
        check("seed", isinstance(self.seed, int) and 0 <= self.seed < 2**31, "an integer in [0, 2^31)")
        check("data_fraction", finite(self.data_fraction) and 0 < self.data_fraction <= 1, "in (0, 1]")
        check("time_budget_s", finite(self.time_budget_s) and self.time_budget_s >= 0, ">= 0 (0: unlimited)")
        check("early_stopping_patience", 0 <= self.early_stopping_patience <= 1000, "0..1000")
        check("evals_per_epoch", 1 <= self.evals_per_epoch <= 100, "1..100")
        check("head_dropout", finite(self.head_dropout) and 0 <= self.head_dropout < 1, "in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["method_config"] = dict(self.method_config)
        return values
