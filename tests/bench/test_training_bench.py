"""bench/training.py end to end on the tiny backbone: a handful of MRPC examples, one step per round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import training

REQUIRED = (
    "bitfit_vs_full_throughput",
    "bitfit_vs_full_peak_mem",
    "adapter_vs_full_throughput",
    "bitfit_patch_bytes",
    "adapter_patch_bytes",
)


def test_training_bench_tiny(glue_data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--backbone", "tiny", "--device", "cpu", "--data-dir", str(glue_data_dir), "--examples", "12"]
    args += ["--batch-size", "4", "--rounds", "2", "--steps-per-round", "1", "--warmup-steps", "1", "--threads", "1"]
    returned = training.main(args)

    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])  # the JSON line comes last
    assert result == returned
    for key in REQUIRED:
        assert key in result, key
    for key in ("bitfit_vs_full_throughput", "bitfit_vs_full_peak_mem", "adapter_vs_full_throughput"):
        assert isinstance(result[key], float) and result[key] > 0, (key, result[key])
    assert 0 < result["bitfit_patch_bytes"] < result["full_patch_bytes"]
    assert 0 < result["adapter_patch_bytes"] < result["full_patch_bytes"]

    methods = result["methods"]
    assert set(methods) == {"full", "bitfit", "adapter"}
    for row in methods.values():
        assert len(row["examples_per_s_rounds"]) == 2
        assert row["peak_mem_bytes"] > 0 and row["peak_mem_total_bytes"] >= row["peak_mem_bytes"]
    # Full fine-tuning trains (and stores) every backbone weight; the patches are tiny next to it.
    assert methods["bitfit"]["trainable_parameters"] < methods["full"]["trainable_parameters"]
    assert methods["adapter"]["trainable_parameters"] < methods["full"]["trainable_parameters"]
    assert result["examples"] == 12 and result["batches"] == 3
    table = "\n".join(out[:-1])
    assert "vs full" in table and "machine:" in table
