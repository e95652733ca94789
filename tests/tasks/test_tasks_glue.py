"""GLUE loading against the real shared files: row counts, label mapping, and the source resolution order."""

from __future__ import annotations

import os
import shutil
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from tasks import DataError, TaskData, get_glue_task, list_glue_tasks, load_glue, read_glue_split

# task -> (train rows, dev rows, {label: train count}) from /work/shared/data/glue/README.md
EXPECTED = {
    "cola": (8551, 1043, {"acceptable": 6023, "unacceptable": 2528}),
    "mrpc": (3668, 408, {"paraphrase": 2474, "not_paraphrase": 1194}),
    "stsb": (5749, 1500, None),
    "rte": (2490, 277, {"entailment": 1249, "not_entailment": 1241}),
    "wnli": (635, 71, {"entailment": 312, "not_entailment": 323}),
    "sst2": (67349, 872, {"positive": 37569, "negative": 29780}),
}


@pytest.fixture(scope="module")
def glue_dir() -> Path:
    """The GLUE data: $GLUE_DIR, else the shared copy next to the repository."""
    env = os.environ.get("GLUE_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared/data/glue"
    if not (path / "CoLA" / "train.tsv").is_file():
        pytest.skip(f"GLUE data not found at {path} (set GLUE_DIR to a glue_data folder)")
    return path


@pytest.fixture(scope="module")
def loaded(glue_dir: Path) -> dict[str, TaskData]:
    """Every locally complete task, loaded once for the module (SST-2 train alone is 67k rows)."""
    return {name: load_glue(name, glue_dir, allow_hub=False) for name in EXPECTED}


def test_catalogue_lists_the_study_tasks() -> None:
    assert list_glue_tasks() == ["cola", "mrpc", "qnli", "rte", "sst2", "stsb", "wnli"]
    assert get_glue_task("SST-2").name == "sst2"
    assert get_glue_task("STS-B").name == "stsb"
    with pytest.raises(DataError, match=r"unknown GLUE task 'mnli'.*cola"):
        get_glue_task("mnli")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_row_counts_and_label_counts(loaded: dict[str, TaskData], name: str) -> None:
    train_rows, dev_rows, label_counts = EXPECTED[name]
    data = loaded[name]
    assert (len(data.train), len(data.dev)) == (train_rows, dev_rows)
    if label_counts is not None:
        assert dict(Counter(example.label for example in data.train)) == label_counts


def test_label_names_and_metrics(loaded: dict[str, TaskData]) -> None:
    assert loaded["cola"].labels == ("unacceptable", "acceptable")
    assert loaded["mrpc"].labels == ("not_paraphrase", "paraphrase")
    assert loaded["sst2"].labels == ("negative", "positive")
    assert loaded["wnli"].labels == ("not_entailment", "entailment")
    assert loaded["rte"].labels == ("entailment", "not_entailment")
    assert loaded["stsb"].labels == ()
    assert loaded["cola"].metrics == ("matthews",)
    assert loaded["mrpc"].metrics == ("f1", "accuracy")
    assert loaded["stsb"].metrics == ("spearman", "pearson")
    assert {loaded[name].metrics for name in ("rte", "wnli", "sst2")} == {("accuracy",)}
    assert loaded["stsb"].problem_type == "regression"
    assert loaded["cola"].problem_type == "classification"


def test_spot_values(loaded: dict[str, TaskData]) -> None:
    first = loaded["cola"].train[0]
    assert first.text == "Our friends won't buy this analysis, let alone the next one we propose."
    assert (first.text_pair, first.label) == (None, "acceptable")
    mrpc = loaded["mrpc"].train[0]
    assert mrpc.text.startswith('Amrozi accused his brother, whom he called "the witness"')  # quotes kept verbatim
    assert mrpc.text_pair is not None and mrpc.label == "paraphrase"
    stsb = loaded["stsb"].train[0]
    assert (stsb.text, stsb.text_pair, stsb.label) == ("A plane is taking off.", "An air plane is taking off.", 5.0)
    assert all(isinstance(e.label, float) and 0.0 <= e.label <= 5.0 for e in loaded["stsb"].dev)
    assert loaded["rte"].train[2164].text.startswith('"')  # the row that default CSV quoting would swallow
    assert loaded["sst2"].train[0].text_pair is None


def test_qnli_is_dev_only(glue_dir: Path) -> None:
    dev = read_glue_split("qnli", "dev", glue_dir)
    assert len(dev) == 5463
    assert Counter(e.label for e in dev) == {"entailment": 2702, "not_entailment": 2761}
    assert dev[0].text == "What came into force after the new constitution was herald?"
    with pytest.raises(DataError, match=r"QNLI/train\.tsv is missing \(the shared GLUE copy has QNLI dev only\)"):
        load_glue("qnli", glue_dir, allow_hub=False)


def test_explicit_dir_wins_over_env(glue_dir: Path, tmp_path: Path) -> None:
    # A corrupt copy under GLUE_DIR must not be read when data_dir already has the task.
    broken = tmp_path / "broken"
    (broken / "WNLI").mkdir(parents=True)
    (broken / "WNLI" / "train.tsv").write_text("garbage\n")
    (broken / "WNLI" / "dev.tsv").write_text("garbage\n")
    assert len(load_glue("wnli", glue_dir, glue_dir_env=str(broken), allow_hub=False).train) == 635


def test_falls_through_to_env_dir(glue_dir: Path, tmp_path: Path) -> None:
    data = load_glue("wnli", tmp_path / "nowhere", glue_dir_env=str(glue_dir), allow_hub=False)
    assert len(data.dev) == 71


def test_combined_error_lists_every_source(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        load_glue("mrpc", tmp_path / "nowhere", glue_dir_env=str(empty), allow_hub=False)
    message = str(info.value)
    assert "cannot load GLUE task 'mrpc'" in message
    assert f"data_dir: {tmp_path / 'nowhere'} is not a directory" in message
    assert f"GLUE_DIR: {empty / 'MRPC' / 'train.tsv'} is missing" in message
    assert "hub nyu-mll/glue/mrpc: disabled (allow_hub=False)" in message
    # ...in resolution order.
    assert message.index("data_dir:") < message.index("GLUE_DIR:") < message.index("hub ")


def test_unset_sources_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError) as info:
        load_glue("cola")
    message = str(info.value)
    assert "data_dir: not set" in message and "GLUE_DIR: not set" in message
    assert "the 'datasets' package is not installed" in message


def test_corrupt_local_file_is_an_error_not_a_fallthrough(glue_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(glue_dir / "WNLI", tmp_path / "WNLI")
    with (tmp_path / "WNLI" / "dev.tsv").open("a") as handle:
        handle.write("71\tOnly three fields\t2\n")
    with pytest.raises(DataError, match=r"WNLI/dev\.tsv: row 72 \(line 73\): has 3 fields but the header has 4"):
        load_glue("wnli", tmp_path, glue_dir_env=str(glue_dir), allow_hub=False)


def test_unknown_raw_label_names_the_row(glue_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(glue_dir / "CoLA", tmp_path / "CoLA")
    with (tmp_path / "CoLA" / "dev.tsv").open("a") as handle:
        handle.write("xx01\t2\t\tA sentence.\n")
    with pytest.raises(DataError, match=r"CoLA/dev\.tsv: row 1044 \(line 1044\): label '2' is not one of '0', '1'"):
        load_glue("cola", tmp_path, allow_hub=False)


def _fake_datasets(splits: dict[str, dict[str, list[object]]] | Exception) -> types.ModuleType:
    module = types.ModuleType("datasets")

    def load_dataset(path: str, name: str) -> dict[str, dict[str, list[object]]]:
        assert (path, name) == ("nyu-mll/glue", "rte")
        if isinstance(splits, Exception):
            raise splits
        return splits

    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    return module


def test_hub_fallback_converts_label_indices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    split: dict[str, list[object]] = {
        "sentence1": ["A man sleeps.", "A dog runs."],
        "sentence2": ["Someone sleeps.", "A cat."],
        "label": [0, 1],
    }
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets({"train": split, "validation": split}))
    data = load_glue("rte", tmp_path / "nowhere")
    assert data.labels == ("entailment", "not_entailment")
    assert [e.label for e in data.train] == ["entailment", "not_entailment"]
    assert data.dev[0].text_pair == "Someone sleeps."


def test_hub_failure_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(ConnectionError("offline")))
    with pytest.raises(DataError, match=r"hub nyu-mll/glue/rte: ConnectionError: offline"):
        load_glue("rte")
