"""Structural checks of a patch against the running backbone, before it is served or imported.

The store verifies bytes (content hash) and identity (backbone fingerprint); this module verifies meaning: the method
exists, its config parses, the head is well formed and pools like the backbone, and the tensors are exactly the ones
the method would create for this backbone, with the same shapes. A patch that fails is refused as corrupt instead of
being zero-padded into a table or failing deep inside a forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from server.backbone import Backbone
from server.errors import InvalidArgument, PatchCorrupt
from server.model import Patch
from server.patches.heads import HeadSpec, init_head
from server.patches.registry import get_method
from server.store import PatchMeta, PatchStore, PatchVersion, read_patch_file


def check_patch(backbone: Backbone, tensors: Mapping[str, torch.Tensor], meta: PatchMeta) -> Patch:
    """The patch as the model uses it, or :class:`PatchCorrupt` saying what does not fit."""
    try:
        method = get_method(meta.method)
        config = method.parse_config(meta.method_config)
        head = HeadSpec.from_dict(meta.head)
    except (InvalidArgument, KeyError, TypeError, ValueError) as exc:
        raise PatchCorrupt(f"patch metadata does not describe a usable patch: {exc}") from None
    if head.pooling != backbone.pooling:
        raise PatchCorrupt(f"patch pools with {head.pooling!r} but the backbone uses {backbone.pooling!r}")
    generator = torch.Generator().manual_seed(0)
    expected = method.init_tensors(backbone.model, backbone.pooling, config, generator)
    expected.update(init_head(backbone.hidden_size, head, generator))
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise PatchCorrupt(
            f"patch tensors do not match method {method.name!r}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for name, reference in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(reference.shape) or not tensor.is_floating_point():
            raise PatchCorrupt(
                f"patch tensor {name!r} has shape {tuple(tensor.shape)} ({tensor.dtype}); expected "
                f"{tuple(reference.shape)} (floating point)"
            )
        if not torch.isfinite(tensor).all():
            raise PatchCorrupt(f"patch tensor {name!r} holds NaN or infinite values")
    return Patch(method.name, config, head, dict(tensors))


def import_patch(store: PatchStore, backbone: Backbone, path: Path, name: str | None) -> PatchVersion:
    """Verify a patch file completely (hash, backbone, structure), then publish it under ``name``."""
    tensors, meta = read_patch_file(path, expected_fingerprint=backbone.fingerprint)
    check_patch(backbone, tensors, meta)
    return store.import_file(path, name)
