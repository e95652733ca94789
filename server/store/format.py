"""The patch file: one self-describing safetensors file per task version.

A patch file must be usable on its own (copied to another machine, inspected with plain ``safetensors``), so all
that is needed to serve it travels in the safetensors ``__metadata__`` header: method, head, backbone fingerprint,
training record and a content hash over the tensors. See ``docs/patch-format.md`` for the full specification.

Errors raised here carry the *reason* only (no path): the caller knows which file it read and adds that context
(the store reports ``"v3: content hash mismatch ..."``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from server.errors import BackboneMismatch, InvalidArgument, PatchCorrupt
from server.store.atomic import atomic_write_bytes

FORMAT_VERSION = 1

# Keys of ``__metadata__``: dict-valued fields are JSON-encoded (safetensors only allows string values).
_JSON_FIELDS = ("method_config", "head", "training", "metrics")
_STR_FIELDS = ("method", "backbone_id", "backbone_fingerprint", "created", "content_sha256")
#: Every key the writer puts into ``__metadata__``; a reader requires all of them.
HEADER_KEYS = ("format_version", *_STR_FIELDS, *_JSON_FIELDS)


@dataclass(frozen=True)
class PatchMeta:
    """Everything about a patch except its tensors; stored in the file header so the file describes itself."""

    method: str  # "bitfit" | "adapter" | "full" | any registered plug-in name
    method_config: dict[str, Any]
    head: dict[str, Any]  # {"problem_type": "classification", "labels": [...], "pooling": "mean", "num_outputs": 2}
    backbone_id: str
    backbone_fingerprint: str
    training: dict[str, Any]  # hyper-parameters, seed, data fraction, steps, wall time, task_name...
    metrics: dict[str, float]  # dev metrics
    created: str = ""  # ISO-8601 UTC; filled by the writer when empty
    content_sha256: str = ""  # filled by the writer
    format_version: int = FORMAT_VERSION

    def to_header(self) -> dict[str, str]:
        """Encode as safetensors ``__metadata__`` (string values only): dict fields as JSON, the rest as text."""
        header = {"format_version": str(self.format_version)}
        for key in _STR_FIELDS:
            header[key] = str(getattr(self, key))
        for key in _JSON_FIELDS:
            try:
                # sort_keys: the same meta always gives the same header bytes (reproducible files, stable diffs).
                # allow_nan=False: NaN/Infinity are not JSON, and other readers of the file would choke on them.
                header[key] = json.dumps(getattr(self, key), sort_keys=True, ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(f"patch metadata field {key!r} is not JSON-serialisable: {exc}") from exc
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, str] | None) -> PatchMeta:
        """Decode a header written by :meth:`to_header`; raise :class:`PatchCorrupt` saying what is wrong.

        The format version is checked first, so a file from a newer writer is reported as such rather than as a
        file with some odd key.
        """
        if not header:
            raise PatchCorrupt("no taskpatch metadata in the safetensors header (not a taskpatch file?)")
        if "format_version" not in header:
            raise PatchCorrupt("metadata key 'format_version' missing (not a taskpatch file?)")
        raw_version = header["format_version"]
        if not raw_version.isascii() or not raw_version.isdigit():
            raise PatchCorrupt(f"metadata key 'format_version' is not an integer: {raw_version[:40]!r}")
        version = int(raw_version)
        if version != FORMAT_VERSION:
            raise PatchCorrupt(f"unknown format version {version} (this server reads version {FORMAT_VERSION})")
        missing = [key for key in HEADER_KEYS if key not in header]
        if missing:
            raise PatchCorrupt(f"metadata key(s) missing: {', '.join(missing)}")
        decoded: dict[str, Any] = {}
        for key in _JSON_FIELDS:
            try:
                value = json.loads(header[key], parse_constant=_reject_constant)
            except ValueError as exc:
                raise PatchCorrupt(f"metadata key {key!r} is not valid JSON: {exc}") from exc
            if not isinstance(value, dict):
                raise PatchCorrupt(f"metadata key {key!r} must be a JSON object, got {type(value).__name__}")
            decoded[key] = value
        metrics: dict[str, float] = {}
        for name, value in decoded["metrics"].items():
            # bool is an int subclass; a metric of `true` is a writer bug, not a number.
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PatchCorrupt(f"metric {name!r} is not a number: {value!r}")
            metrics[name] = float(value)
        decoded["metrics"] = metrics
        if not header["method"]:
            raise PatchCorrupt("metadata key 'method' is empty")
        if not header["backbone_fingerprint"]:
            raise PatchCorrupt("metadata key 'backbone_fingerprint' is empty")
        return cls(
            method=header["method"],
            method_config=decoded["method_config"],
            head=decoded["head"],
            backbone_id=header["backbone_id"],
            backbone_fingerprint=header["backbone_fingerprint"],
            training=decoded["training"],
            metrics=decoded["metrics"],
            created=header["created"],
            content_sha256=header["content_sha256"],
            format_version=version,
        )


def _reject_constant(name: str) -> Any:
    """json.loads hook: refuse ``NaN``/``Infinity``, which the writer never produces (they are not JSON)."""
    raise ValueError(f"{name} is not allowed in patch metadata")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def content_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over the tensors themselves, independent of file layout and header.

    For each name in sorted (code-point) order the hash takes one JSON line
    ``{"dtype":"float32","name":"x","nbytes":48,"shape":[3,4]}\\n`` (sorted keys, no spaces, ASCII) followed by the
    tensor's raw bytes (contiguous, CPU, little-endian). The explicit byte count makes the stream unambiguous;
    hashing tensors rather than the file means re-saving (other header, other layout) keeps the same hash, which
    is what serving caches key on.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        raw = tensor.reshape(-1).view(torch.uint8)  # [nbytes]; reshape first so 0-dim tensors can be viewed
        record = {"dtype": _dtype_name(tensor.dtype), "name": name, "nbytes": raw.numel(), "shape": list(tensor.shape)}
        digest.update(json.dumps(record, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n")
        digest.update(raw.numpy().data)
    return digest.hexdigest()


def _short(fingerprint: str) -> str:
    return fingerprint if len(fingerprint) <= 12 else fingerprint[:12] + "…"


def fingerprint_mismatch_message(patch_fingerprint: str, server_fingerprint: str, backbone_id: str = "") -> str:
    """The one wording for 'wrong backbone', shared by reader and store, with both fingerprints shortened."""
    ours, theirs = _short(patch_fingerprint), _short(server_fingerprint)
    if ours == theirs:  # shortened forms collide: show them in full so the user can see the difference
        ours, theirs = patch_fingerprint, server_fingerprint
    named = f" ({backbone_id})" if backbone_id else ""
    return f"patch made for backbone {ours}{named} but server runs {theirs}"


def _prepare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, CPU, contiguous, unshared copies: safetensors refuses views that share storage."""
    prepared: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"patch tensor names must be non-empty strings, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise InvalidArgument(f"patch entry {name!r} is a {type(tensor).__name__}, not a tensor")
        prepared[name] = tensor.detach().to("cpu").contiguous().clone()
    return prepared


def write_patch_file(path: Path, tensors: Mapping[str, torch.Tensor], meta: PatchMeta) -> PatchMeta:
    """Write ``tensors`` + ``meta`` to ``path`` atomically; return ``meta`` with ``created`` and the hash filled in.

    The content hash is always recomputed (a caller-supplied one could be stale). ``created`` is kept when set,
    so importing a patch keeps the time it was trained.
    """
    prepared = _prepare(tensors)
    created = meta.created or datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    final = dataclasses.replace(meta, created=created, content_sha256=content_hash(prepared))
    data = safetensors.torch.save(prepared, metadata=final.to_header())
    atomic_write_bytes(Path(path), data)
    return final


def _check_fingerprint(meta: PatchMeta, expected_fingerprint: str | None) -> None:
    if expected_fingerprint is not None and meta.backbone_fingerprint != expected_fingerprint:
        raise BackboneMismatch(
            fingerprint_mismatch_message(meta.backbone_fingerprint, expected_fingerprint, meta.backbone_id)
        )


def read_patch_meta(path: Path) -> PatchMeta:
    """Read only the header (cheap: no tensor data is touched); raise :class:`PatchCorrupt` with the reason.

    safetensors checks at open that the header's offsets cover the file exactly, so a truncated file is caught
    here too; flipped bytes inside tensor data are only caught by :func:`read_patch_file`.
    """
    path = Path(path)
    if path.is_dir():  # safe_open reports a directory as "No such device", which would mislead
        raise PatchCorrupt("unreadable: is a directory, not a file")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata()
    except FileNotFoundError as exc:
        raise PatchCorrupt("file missing") from exc
    except OSError as exc:
        raise PatchCorrupt(f"unreadable: {exc.strerror or exc}") from exc
    except Exception as exc:  # SafetensorError and friends: truncated, garbage, bad header JSON
        raise PatchCorrupt(f"truncated or not a safetensors file ({exc})") from exc
    return PatchMeta.from_header(header)


def read_patch_file(path: Path, expected_fingerprint: str | None = None) -> tuple[dict[str, torch.Tensor], PatchMeta]:
    """Load and fully verify a patch: parse, recompute the content hash, then check the backbone fingerprint.

    Integrity is checked before the fingerprint because a damaged header's fingerprint means nothing. The tensor
    data is read into memory rather than memory-mapped, so the caller owns the tensors and a file truncated later
    cannot crash the process. Patch files are never rewritten in place (new versions get new names), and the hash
    check ties the tensors read here to the header read first.
    """
    path = Path(path)
    meta = read_patch_meta(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PatchCorrupt(f"unreadable: {exc.strerror or exc}") from exc
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # SafetensorError: truncated, offsets inconsistent, unknown dtype
        raise PatchCorrupt(f"truncated or not a safetensors file ({exc})") from exc
    if not meta.content_sha256:
        raise PatchCorrupt("no content hash recorded in the header")
    actual = content_hash(tensors)
    if actual != meta.content_sha256:
        raise PatchCorrupt(
            f"content hash mismatch (header says {meta.content_sha256[:12]}…, tensors hash to {actual[:12]}…)"
        )
    _check_fingerprint(meta, expected_fingerprint)
    return tensors, meta


__all__ = [
    "FORMAT_VERSION",
    "HEADER_KEYS",
    "PatchMeta",
    "content_hash",
    "fingerprint_mismatch_message",
    "read_patch_file",
    "read_patch_meta",
    "write_patch_file",
]
