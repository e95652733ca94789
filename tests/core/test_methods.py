"""The plug-in contract, checked the same way for every registered method."""

from __future__ import annotations

import copy

import pytest
import torch

from server.model import PatchedModel
from server.patches import get_method, registered_methods
from server.patches.heads import HeadTable
from tests.helpers import random_patch

SERVABLE = [name for name, m in registered_methods().items() if m.servable]
ALL = list(registered_methods())

TEXTS = ["the cat sat on the mat", "a quick brown fox", "hello", "paraphrase detection is fun", "x y z", "ok then"]
PAIRS = ["the cat is on the mat", None, "hi", "detecting paraphrases is fun", None, "fine"]


def _batch(model: PatchedModel) -> dict[str, torch.Tensor]:
    return model.collate(model.tokenize(TEXTS, PAIRS, 64))


def _state(model: PatchedModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.backbone.model.state_dict().items()}


@pytest.mark.parametrize("method", SERVABLE)
def test_mixed_batch_equals_per_task_forward(model: PatchedModel, method: str) -> None:
    """Rows of one batch routed to three different patches (and the bare backbone) match per-task forwards."""
    patches = [random_patch(model, method, seed) for seed in (1, 2, 3)]
    impl = get_method(method)
    table = impl.new_table(model.backbone.model, model.backbone.pooling, model.backbone.device, torch.float32)
    heads = HeadTable(model.backbone.hidden_size, model.backbone.device, torch.float32)
    for slot, patch in enumerate(patches, start=1):
        table.write(slot, patch.tensors, patch.config)
        heads.write(slot, patch.tensors)
    rows = torch.tensor([1, 2, 3, 1, 3, 2])
    batch = _batch(model)
    with torch.inference_mode():
        mixed = heads.apply(model.encode(batch, {method: table.bind(rows)}), rows)
        for row, slot in enumerate(rows.tolist()):
            single = model.logits({k: v[row : row + 1] for k, v in batch.items()}, patches[slot - 1])
            # The row is padded inside the mixed batch; padding must not change its output.
            assert torch.allclose(mixed[row, : single.shape[1]], single[0], atol=1e-5), (method, row)


@pytest.mark.parametrize("method", SERVABLE)
def test_slot_zero_is_the_bare_backbone(model: PatchedModel, method: str) -> None:
    impl = get_method(method)
    table = impl.new_table(model.backbone.model, model.backbone.pooling, model.backbone.device, torch.float32)
    patch = random_patch(model, method, 5)
    table.write(1, patch.tensors, patch.config)
    batch = _batch(model)
    with torch.inference_mode():
        bare = model.encode(batch, {})
        routed = model.encode(batch, {method: table.bind(torch.zeros(len(TEXTS), dtype=torch.long))})
    assert torch.equal(bare, routed)


@pytest.mark.parametrize("method", ALL)
def test_backbone_bit_identical_after_training_two_tasks(model: PatchedModel, method: str, tiny_task) -> None:
    from server.training.config import TrainConfig
    from server.training.trainer import train

    before = _state(model)
    for seed in (0, 1):
        result = train(model, tiny_task, TrainConfig(method=method, epochs=1, seed=seed, learning_rate=1e-2))
        assert result.steps > 0
        assert any(t.abs().sum() > 0 for n, t in result.patch.tensors.items() if not n.startswith("head."))
    after = _state(model)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert not any(p.requires_grad for p in model.backbone.model.parameters())


@pytest.mark.parametrize("method", ALL)
def test_training_learns_a_separable_toy_task(model: PatchedModel, method: str, toy_task) -> None:
    from server.training.config import TrainConfig
    from server.training.trainer import train

    lr = 1e-3 if method == "full" else 3e-2
    config = TrainConfig(
        method=method, epochs=15, batch_size=8, learning_rate=lr, head_learning_rate=3e-2, head_dropout=0
    )
    result = train(model, toy_task, config)
    assert result.metrics["accuracy"] >= 0.9, result.history


def test_bitfit_equals_model_with_biases_set(model: PatchedModel) -> None:
    """BitFit's hook arithmetic is exactly 'bias := bias + delta' (the paper's definition)."""
    patch = random_patch(model, "bitfit", 7)
    batch = _batch(model)
    with torch.inference_mode():
        patched = model.logits(batch, patch)
    reference = copy.deepcopy(model.backbone.model)
    for name, module in reference.named_modules():
        delta = patch.tensors.get(name + ".bias_delta")
        if delta is not None:
            module.bias.data += delta  # a throw-away copy: the shared backbone is never written
    # The copy carries our hooks too; run it with no routing (hooks are no-ops then).
    from server.model import pool
    from server.patches.heads import apply_head

    with torch.inference_mode():
        output = reference(**batch)
        expected = apply_head(pool(output, batch["attention_mask"], model.backbone.pooling), patch.tensors)
    assert torch.allclose(patched, expected, atol=1e-5)


def test_bitfit_patch_covers_every_bias(model: PatchedModel) -> None:
    patch = random_patch(model, "bitfit", 0)
    biases = [
        n for n, p in model.backbone.model.named_parameters() if n.endswith(".bias") and not n.startswith("pooler.")
    ]
    assert sorted(n[: -len(".bias")] + ".bias_delta" for n in biases) == sorted(
        k for k in patch.tensors if not k.startswith("head.")
    )


def test_adapter_variants(model: PatchedModel) -> None:
    houlsby = random_patch(model, "adapter", 0, config={"variant": "houlsby"})
    pfeiffer = random_patch(model, "adapter", 0, config={"variant": "pfeiffer", "bottleneck": 4})
    n_layers = model.backbone.model.config.num_hidden_layers
    assert len([k for k in houlsby.tensors if k.endswith("down.weight")]) == 2 * n_layers
    assert len([k for k in pfeiffer.tensors if k.endswith("down.weight")]) == n_layers
    assert all(v.shape[0] == 4 for k, v in pfeiffer.tensors.items() if k.endswith("down.weight"))


def test_adapter_table_mixes_variants_and_widths(model: PatchedModel) -> None:
    patches = [
        random_patch(model, "adapter", 1, config={"variant": "houlsby", "bottleneck": 2}),
        random_patch(model, "adapter", 2, config={"variant": "pfeiffer", "bottleneck": 6, "activation": "gelu"}),
        random_patch(model, "adapter", 3, labels=("a", "b", "c"), config={"activation": "silu"}),
    ]
    impl = get_method("adapter")
    table = impl.new_table(model.backbone.model, model.backbone.pooling, model.backbone.device, torch.float32)
    heads = HeadTable(model.backbone.hidden_size, model.backbone.device, torch.float32)
    for slot, patch in enumerate(patches, start=1):
        table.write(slot, patch.tensors, patch.config)
        heads.write(slot, patch.tensors)
    rows = torch.tensor([1, 2, 3, 3, 2, 1])
    batch = _batch(model)
    with torch.inference_mode():
        mixed = heads.apply(model.encode(batch, {"adapter": table.bind(rows)}), rows)
        for row, slot in enumerate(rows.tolist()):
            single = model.logits({k: v[row : row + 1] for k, v in batch.items()}, patches[slot - 1])
            assert torch.allclose(mixed[row, : single.shape[1]], single[0], atol=1e-5)


def test_bitfit_and_adapter_rows_in_one_batch(model: PatchedModel) -> None:
    bitfit = random_patch(model, "bitfit", 1)
    adapter = random_patch(model, "adapter", 2)
    tables = {
        name: get_method(name).new_table(
            model.backbone.model, model.backbone.pooling, model.backbone.device, torch.float32
        )
        for name in ("bitfit", "adapter")
    }
    heads = HeadTable(model.backbone.hidden_size, model.backbone.device, torch.float32)
    tables["bitfit"].write(1, bitfit.tensors, bitfit.config)
    tables["adapter"].write(1, adapter.tensors, adapter.config)
    heads.write(1, bitfit.tensors)
    heads.write(2, adapter.tensors)
    # Rows 0,2,4 use bitfit slot 1; rows 1,3,5 use adapter slot 1; each method's rows elsewhere are 0 (no patch).
    bitfit_rows = torch.tensor([1, 0, 1, 0, 1, 0])
    adapter_rows = torch.tensor([0, 1, 0, 1, 0, 1])
    head_rows = torch.tensor([1, 2, 1, 2, 1, 2])
    batch = _batch(model)
    with torch.inference_mode():
        appliers = {"bitfit": tables["bitfit"].bind(bitfit_rows), "adapter": tables["adapter"].bind(adapter_rows)}
        mixed = heads.apply(model.encode(batch, appliers), head_rows)
        for row in range(len(TEXTS)):
            single = model.logits({k: v[row : row + 1] for k, v in batch.items()}, bitfit if row % 2 == 0 else adapter)
            assert torch.allclose(mixed[row], single[0], atol=1e-5)


def test_bitfit_patch_size_for_minilm_shape() -> None:
    """~27K trainable parameters for a MiniLM-L6-shaped model with a 2-class head (counted, not loaded)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    with torch.device("meta"):
        shaped = BertModel(config)
    impl = get_method("bitfit")
    biases = sum(
        m.bias.shape[0]
        for n, m in shaped.named_modules()
        if n + ".bias" in dict(shaped.named_parameters()) and not n.startswith("pooler") and m.bias is not None
    )
    assert len(impl.patch_points(shaped, "mean")) == 6 * 8 + 1
    assert 25_000 < biases + 384 * 2 + 2 < 28_000


@pytest.mark.parametrize("method", ALL)
def test_save_load_round_trip_is_exact(model: PatchedModel, method: str, tmp_path) -> None:
    from server.store import PatchMeta
    from server.store.format import read_patch_file, write_patch_file

    patch = random_patch(model, method, 11)
    meta = PatchMeta(
        method, patch.config.to_dict(), patch.head.to_dict(), "tiny", model.backbone.fingerprint, {}, {"f1": 0.5}
    )
    path = tmp_path / "patch.safetensors"
    write_patch_file(path, patch.tensors, meta)
    tensors, loaded = read_patch_file(path, expected_fingerprint=model.backbone.fingerprint)
    assert tensors.keys() == patch.tensors.keys()
    assert all(torch.equal(tensors[k], v) for k, v in patch.tensors.items())
    impl = get_method(loaded.method)
    assert impl.parse_config(loaded.method_config) == patch.config
    batch = _batch(model)
    from server.model import Patch
    from server.patches.heads import HeadSpec

    reloaded = Patch(loaded.method, patch.config, HeadSpec.from_dict(loaded.head), tensors)
    with torch.inference_mode():
        assert torch.equal(model.logits(batch, patch), model.logits(batch, reloaded))


def test_local_model_directory_backbone(tmp_path) -> None:
    """Any local HF encoder directory works; without a sentence-transformers pooling config it pools with CLS."""
    from transformers import AutoTokenizer

    from server.backbone import build_tiny_bert, embedded_model_dir, load_backbone

    build_tiny_bert(5).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(str(embedded_model_dir())).save_pretrained(tmp_path)
    backbone = load_backbone(str(tmp_path))
    assert backbone.pooling == "cls"
    assert backbone.backbone_id == str(tmp_path.resolve())
    assert backbone.fingerprint == load_backbone("tiny:5").fingerprint  # same weights, same identity
