"""The frozen backbone with patch routing: one forward pass, any mix of patches per row.

``PatchedModel`` installs one forward hook per patch point (once). Each hook asks the routing context which
appliers the current forward pass carries and lets them modify the module's output. With no appliers the hooks
return the output unchanged, so the bare backbone is always one call away.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from server.backbone import Backbone
from server.errors import InvalidArgument
from server.patches import registered_methods
from server.patches.base import MethodConfig
from server.patches.heads import HeadSpec, apply_head
from server.patches.registry import get_method
from server.patches.routing import PointApplier, current_appliers, routed
from server.store.format import PatchMeta

_HOOKS_ATTRIBUTE = "_taskpatch_hooks"


@dataclass
class Patch:
    """One task's patch in memory: method tensors plus head tensors (fp32 on CPU unless moved)."""

    method: str
    config: MethodConfig
    head: HeadSpec
    tensors: dict[str, torch.Tensor]

    def meta(self, backbone: Backbone, training: Mapping[str, Any], metrics: Mapping[str, float]) -> PatchMeta:
        """The store metadata that makes this patch's file self-describing."""
        return PatchMeta(
            method=self.method,
            method_config=self.config.to_dict(),
            head=self.head.to_dict(),
            backbone_id=backbone.backbone_id,
            backbone_fingerprint=backbone.fingerprint,
            training=dict(training),
            metrics=dict(metrics),
        )


@dataclass(frozen=True)
class Features:
    """One tokenized example (no padding)."""

    input_ids: list[int]
    token_type_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


class PatchedModel:
    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.model = backbone.model
        if getattr(self.model, _HOOKS_ATTRIBUTE, None) is not None:
            raise RuntimeError("this backbone already has patch hooks; create one PatchedModel per backbone")
        methods_by_point: dict[str, list[str]] = {}
        for name, method in registered_methods().items():
            for point in method.patch_points(self.model, backbone.pooling):
                methods_by_point.setdefault(point, []).append(name)
        modules = dict(self.model.named_modules())
        handles = [
            modules[point].register_forward_hook(_make_hook(point, tuple(names)))
            for point, names in methods_by_point.items()
        ]
        setattr(self.model, _HOOKS_ATTRIBUTE, handles)
        self.pad_id = int(backbone.tokenizer.pad_token_id or 0)

    # ---- tokenization -------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], pairs: Sequence[str | None] | None, max_length: int) -> list[Features]:
        """Tokenize without padding; singles and pairs may be mixed."""
        tokenizer = self.backbone.tokenizer
        pairs = list(pairs) if pairs is not None else [None] * len(texts)
        results: list[Features | None] = [None] * len(texts)
        single_idx = [i for i, p in enumerate(pairs) if p is None]
        pair_idx = [i for i, p in enumerate(pairs) if p is not None]
        for indices, with_pairs in ((single_idx, False), (pair_idx, True)):
            if not indices:
                continue
            encoded = tokenizer(
                [texts[i] for i in indices],
                [pairs[i] for i in indices] if with_pairs else None,
                truncation=True,
                max_length=max_length,
                return_token_type_ids=True,
                return_attention_mask=False,
            )
            for position, i in enumerate(indices):
                results[i] = Features(encoded["input_ids"][position], encoded["token_type_ids"][position])
        return [r for r in results if r is not None]

    def collate(self, features: Sequence[Features]) -> dict[str, torch.Tensor]:
        """Pad to the longest example of the batch (dynamic padding), without a per-row Python loop."""
        lengths = torch.tensor([len(f) for f in features])  # [batch]
        length = int(lengths.max())
        attention_mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)  # [batch, seq] bool
        input_ids = torch.full((len(features), length), self.pad_id, dtype=torch.long)  # [batch, seq]
        token_type_ids = torch.zeros((len(features), length), dtype=torch.long)  # [batch, seq]
        input_ids[attention_mask] = torch.tensor(list(chain.from_iterable(f.input_ids for f in features)))
        token_type_ids[attention_mask] = torch.tensor(list(chain.from_iterable(f.token_type_ids for f in features)))
        device = self.backbone.device
        return {
            "input_ids": input_ids.to(device),
            "token_type_ids": token_type_ids.to(device),
            "attention_mask": attention_mask.long().to(device),
        }

    # ---- forward -------------------------------------------------------------------------------------------------
    def encode(
        self,
        batch: Mapping[str, torch.Tensor],
        appliers: Mapping[str, PointApplier],
        parameter_overrides: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Backbone forward with ``appliers`` routed in, then pooling: -> [batch, hidden]."""
        inputs: dict[str, Any] = dict(batch)
        if self.backbone.model_type in ("distilbert",):
            inputs.pop("token_type_ids", None)
        with routed(appliers):
            if parameter_overrides:
                output = functional_call(self.model, dict(parameter_overrides), args=(), kwargs=inputs, strict=False)
            else:
                output = self.model(**inputs)
        return pool(output, batch["attention_mask"], self.backbone.pooling)

    def logits(self, batch: Mapping[str, torch.Tensor], patch: Patch, head_dropout: float = 0.0) -> torch.Tensor:
        """One patch for every row (training, evaluation, per-task reference): -> [batch, outputs].

        ``head_dropout`` > 0 applies dropout to the pooled vector (training only; the backbone stays in eval mode
        because it is shared with serving)."""
        if patch.head.pooling != self.backbone.pooling:
            raise InvalidArgument(
                f"patch pools with {patch.head.pooling!r} but the backbone uses {self.backbone.pooling!r}"
            )
        method = get_method(patch.method)
        device_tensors = {k: v.to(self.backbone.device) for k, v in patch.tensors.items()}
        appliers = {patch.method: method.bind_single(device_tensors, patch.config)}
        pooled = self.encode(batch, appliers, method.parameter_overrides(device_tensors))
        if head_dropout > 0:
            pooled = torch.nn.functional.dropout(pooled, head_dropout, training=True)
        return apply_head(pooled, device_tensors)


def pool(output: Any, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]  # [batch, seq, hidden]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [batch, seq, 1]
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if pooling == "cls":
        return hidden[:, 0]
    return output.pooler_output


def _make_hook(point: str, method_names: tuple[str, ...]) -> Any:
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        appliers = current_appliers()
        if not appliers:
            return None
        for name in method_names:
            applier = appliers.get(name)
            if applier is not None:
                output = applier.apply(point, inputs, output)
        return output

    return hook
