"""The patch file format: header encoding, exact round trips, content hash, and every way a file can be bad."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from server.errors import BackboneMismatch, InvalidArgument, PatchCorrupt
from server.store.format import (
    FORMAT_VERSION,
    HEADER_KEYS,
    PatchMeta,
    content_hash,
    read_patch_file,
    read_patch_meta,
    write_patch_file,
)

from .helpers import FINGERPRINT, OTHER_FINGERPRINT, make_meta, make_tensors


def _rewrite_header(path: Path, **changes: str | None) -> None:
    """Re-save the same tensors with edited metadata (None deletes a key), as a foreign writer would."""
    with safetensors.safe_open(str(path), framework="pt") as handle:
        header = dict(handle.metadata())
        loaded = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is not a dict
    for key, value in changes.items():
        if value is None:
            header.pop(key)
        else:
            header[key] = value
    path.write_bytes(safetensors.torch.save(loaded, metadata=header))


# ------------------------------------------------------------------------------------------------------- header
def test_header_round_trip(meta: PatchMeta) -> None:
    header = meta.to_header()
    assert all(isinstance(value, str) for value in header.values())
    assert set(header) == set(HEADER_KEYS)
    assert json.loads(header["head"])["labels"] == ["neg", "pos"]
    assert PatchMeta.from_header(header) == meta


def test_header_round_trip_after_write(tmp_path: Path, tensors: dict[str, torch.Tensor], meta: PatchMeta) -> None:
    written = write_patch_file(tmp_path / "p.safetensors", tensors, meta)
    assert written.created.endswith("Z") and len(written.content_sha256) == 64
    assert PatchMeta.from_header(written.to_header()) == written


def test_to_header_refuses_unserialisable_field() -> None:
    with pytest.raises(InvalidArgument, match="training"):
        make_meta(training={"when": object()}).to_header()
    with pytest.raises(InvalidArgument, match="metrics"):  # NaN is not JSON; metrics must be finite
        make_meta(metrics={"pearson": float("nan")}).to_header()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"format_version": "2"}, "unknown format version 2"),
        ({"format_version": "one"}, "not an integer"),
        ({"head": "{not json"}, "'head' is not valid JSON"),
        ({"metrics": "[1, 2]"}, "'metrics' must be a JSON object"),
        ({"metrics": '{"acc": "high"}'}, "metric 'acc' is not a number"),
        ({"metrics": '{"acc": NaN}'}, "NaN is not allowed"),
        ({"backbone_fingerprint": ""}, "'backbone_fingerprint' is empty"),
    ],
)
def test_from_header_rejects_bad_values(meta: PatchMeta, change: dict[str, str], reason: str) -> None:
    with pytest.raises(PatchCorrupt, match=reason):
        PatchMeta.from_header({**meta.to_header(), **change})


def test_from_header_names_missing_keys(meta: PatchMeta) -> None:
    header = meta.to_header()
    del header["head"], header["metrics"]
    with pytest.raises(PatchCorrupt, match="missing: head, metrics"):
        PatchMeta.from_header(header)
    with pytest.raises(PatchCorrupt, match="'format_version' missing"):
        PatchMeta.from_header({"method": "bitfit"})
    with pytest.raises(PatchCorrupt, match="no taskpatch metadata"):
        PatchMeta.from_header(None)


# -------------------------------------------------------------------------------------------------- round trip
def test_save_load_round_trip_is_exact(tmp_path: Path, tensors: dict[str, torch.Tensor], meta: PatchMeta) -> None:
    path = tmp_path / "p.safetensors"
    written = write_patch_file(path, tensors, meta)
    loaded, loaded_meta = read_patch_file(path, expected_fingerprint=FINGERPRINT)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert loaded[name].device.type == "cpu"
        assert torch.equal(loaded[name], tensor), name
    assert {t.dtype for t in loaded.values()} >= {torch.float32, torch.bfloat16, torch.int64}
    assert loaded_meta == written
    assert read_patch_meta(path) == written


def test_write_keeps_given_created_and_recomputes_hash(
    tmp_path: Path, tensors: dict[str, torch.Tensor], meta: PatchMeta
) -> None:
    stale = dataclasses.replace(meta, created="2024-01-02T03:04:05Z", content_sha256="0" * 64)
    written = write_patch_file(tmp_path / "p.safetensors", tensors, stale)
    assert written.created == "2024-01-02T03:04:05Z"
    assert written.content_sha256 == content_hash(tensors)


def test_write_accepts_views_and_non_contiguous_tensors(tmp_path: Path, meta: PatchMeta) -> None:
    base = torch.randn(4, 6)
    odd = {"t": base.t(), "row": base[1], "col": base[:, 2]}  # share storage, some non-contiguous
    write_patch_file(tmp_path / "p.safetensors", odd, meta)
    loaded, _ = read_patch_file(tmp_path / "p.safetensors")
    for name, tensor in odd.items():
        assert torch.equal(loaded[name], tensor)


def test_file_is_plain_safetensors_with_metadata(
    tmp_path: Path, tensors: dict[str, torch.Tensor], meta: PatchMeta
) -> None:
    path = tmp_path / "p.safetensors"
    written = write_patch_file(path, tensors, meta)
    with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
        header = handle.metadata()
        assert sorted(handle.keys()) == sorted(tensors)
        assert torch.equal(handle.get_tensor("head.weight"), tensors["head.weight"])
    assert set(header) == set(HEADER_KEYS)
    assert header["format_version"] == str(FORMAT_VERSION)
    assert header["method"] == "bitfit"
    assert header["backbone_fingerprint"] == FINGERPRINT
    assert header["content_sha256"] == written.content_sha256
    assert json.loads(header["training"])["task_name"] == "sst2"


def test_write_is_atomic_and_leaves_no_temp(
    tmp_path: Path, tensors: dict[str, torch.Tensor], meta: PatchMeta, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.safetensors"
    write_patch_file(path, tensors, meta)
    before = path.read_bytes()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        write_patch_file(path, make_tensors(seed=1), meta)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]


# ------------------------------------------------------------------------------------------------ content hash
def test_content_hash_ignores_insertion_order(tensors: dict[str, torch.Tensor]) -> None:
    reordered = dict(reversed(list(tensors.items())))
    assert list(reordered) != list(tensors)
    assert content_hash(reordered) == content_hash(tensors)


def test_content_hash_sensitive_to_one_value_dtype_shape_and_name(tensors: dict[str, torch.Tensor]) -> None:
    base = content_hash(tensors)
    changed = {name: tensor.clone() for name, tensor in tensors.items()}
    changed["head.weight"][1, 3] += 1e-3
    assert content_hash(changed) != base
    assert content_hash({**tensors, "head.weight": tensors["head.weight"].double()}) != base
    assert content_hash({**tensors, "head.weight": tensors["head.weight"].reshape(8, 2)}) != base
    renamed = {("x" + name if name == "head.scale" else name): tensor for name, tensor in tensors.items()}
    assert content_hash(renamed) != base


def test_content_hash_independent_of_layout(tensors: dict[str, torch.Tensor]) -> None:
    non_contiguous = {**tensors, "head.weight": tensors["head.weight"].t().contiguous().t()}
    assert not non_contiguous["head.weight"].is_contiguous()
    assert content_hash(non_contiguous) == content_hash(tensors)


# ------------------------------------------------------------------------------------------------- bad files
@pytest.fixture
def patch_file(tmp_path: Path, tensors: dict[str, torch.Tensor], meta: PatchMeta) -> Path:
    path = tmp_path / "p.safetensors"
    write_patch_file(path, tensors, meta)
    return path


@pytest.mark.parametrize("keep", [0, 5, 100, -1])
def test_truncated_file_is_corrupt(patch_file: Path, keep: int) -> None:
    data = patch_file.read_bytes()
    patch_file.write_bytes(data[:keep])
    with pytest.raises(PatchCorrupt, match="truncated or not a safetensors file"):
        read_patch_file(patch_file)
    with pytest.raises(PatchCorrupt, match="truncated or not a safetensors file"):
        read_patch_meta(patch_file)


def test_flipped_byte_in_tensor_data_is_hash_mismatch(patch_file: Path) -> None:
    data = bytearray(patch_file.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's bytes; the header is untouched
    patch_file.write_bytes(bytes(data))
    read_patch_meta(patch_file)  # header-only read cannot see it ...
    with pytest.raises(PatchCorrupt, match="content hash mismatch"):  # ... the full read must
        read_patch_file(patch_file)


def test_garbage_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(PatchCorrupt, match="not a safetensors file"):
        read_patch_file(path)


def test_plain_safetensors_without_our_metadata_is_corrupt(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    with pytest.raises(PatchCorrupt, match="no taskpatch metadata"):
        read_patch_file(path)


def test_unknown_format_version_is_corrupt(patch_file: Path) -> None:
    _rewrite_header(patch_file, format_version="2")
    with pytest.raises(PatchCorrupt, match="unknown format version 2"):
        read_patch_file(patch_file)


def test_missing_metadata_key_is_corrupt(patch_file: Path) -> None:
    _rewrite_header(patch_file, backbone_fingerprint=None)
    with pytest.raises(PatchCorrupt, match="missing: backbone_fingerprint"):
        read_patch_file(patch_file)


def test_missing_and_directory_paths_are_corrupt(tmp_path: Path) -> None:
    with pytest.raises(PatchCorrupt, match="file missing"):
        read_patch_file(tmp_path / "nope.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(PatchCorrupt, match="is a directory"):
        read_patch_file(tmp_path / "dir.safetensors")
    with pytest.raises(PatchCorrupt, match="is a directory"):
        read_patch_meta(tmp_path / "dir.safetensors")


def test_wrong_fingerprint_is_backbone_mismatch(patch_file: Path) -> None:
    with pytest.raises(BackboneMismatch) as info:
        read_patch_file(patch_file, expected_fingerprint=OTHER_FINGERPRINT)
    message = str(info.value)
    assert f"patch made for backbone {FINGERPRINT[:12]}…" in message
    assert f"server runs {OTHER_FINGERPRINT[:12]}…" in message
    assert FINGERPRINT not in message  # shortened
    read_patch_file(patch_file)  # no expectation: no check


def test_fingerprints_shown_in_full_when_prefixes_collide(patch_file: Path) -> None:
    similar = FINGERPRINT[:-1] + "1"
    with pytest.raises(BackboneMismatch, match=similar):
        read_patch_file(patch_file, expected_fingerprint=similar)


def test_content_hash_matches_documented_definition(tensors: dict[str, torch.Tensor]) -> None:
    """docs/patch-format.md spells the hash out so other tools can recompute it; keep the two in step."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy()
        dtype = str(tensors[name].dtype).removeprefix("torch.")
        shape = ",".join(str(d) for d in tensors[name].shape)
        line = f'{{"dtype":"{dtype}","name":"{name}","nbytes":{array.size},"shape":[{shape}]}}\n'
        digest.update(line.encode("ascii") + array.tobytes())
    assert content_hash(tensors) == digest.hexdigest()


def test_documented_plain_safetensors_example(patch_file: Path) -> None:
    with safetensors.safe_open(str(patch_file), framework="pt", device="cpu") as f:
        meta = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    assert json.loads(meta["head"])["labels"] == ["neg", "pos"]
    assert content_hash(tensors) == meta["content_sha256"]
