"""End to end with the real embedded backbone (all-MiniLM-L6-v2) on a small MRPC subset. Slow-ish: ~1 minute."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client.cli import main as client_main
from server.app import create_server
from server.backbone import load_backbone
from server.patches import get_method
from server.patches.heads import HeadSpec, init_head
from server.settings import Settings
from server.store import PatchMeta
from server.store.format import write_patch_file

pytestmark = pytest.mark.backbone


def test_embedded_backbone_loads_offline_with_mean_pooling() -> None:
    backbone = load_backbone("default")
    assert backbone.backbone_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert backbone.pooling == "mean"
    assert backbone.hidden_size == 384
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert len(backbone.fingerprint) == 64


def test_bitfit_patch_for_minilm_is_small(tmp_path: Path) -> None:
    backbone = load_backbone("default")
    method = get_method("bitfit")
    config = method.parse_config({})
    generator = torch.Generator().manual_seed(0)
    head = HeadSpec("classification", ("not_paraphrase", "paraphrase"), backbone.pooling)
    tensors = method.init_tensors(backbone.model, backbone.pooling, config, generator)
    tensors.update(init_head(backbone.hidden_size, head, generator))
    parameters = sum(t.numel() for t in tensors.values())
    assert 26_000 <= parameters <= 28_000  # ~0.12% of the backbone's 22.7M
    meta = PatchMeta("bitfit", config.to_dict(), head.to_dict(), backbone.backbone_id, backbone.fingerprint, {}, {})
    path = tmp_path / "mrpc.safetensors"
    write_patch_file(path, tensors, meta)
    assert path.stat().st_size < 150_000


def test_client_add_task_mrpc_then_predict(
    tmp_path: Path, glue_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, port = create_server(Settings(backbone="default", port=0, metrics_port=-1, store_dir=tmp_path / "store"))
    try:
        address = f"127.0.0.1:{port}"
        code = client_main(
            ["--server", address, "add-task", "mrpc", "--data-dir", str(glue_data_dir), "--train-limit", "240",
             "--dev-limit", "60", "--epochs", "1"]
        )  # fmt: skip
        assert code == 0
        capsys.readouterr()
        assert (
            client_main(["--server", address, "predict", "mrpc", "The cat sat.", "A cat was sitting.", "--json"]) == 0
        )
        out = capsys.readouterr().out
        assert '"label"' in out and ("paraphrase" in out)
    finally:
        server.stop(grace_s=5)
