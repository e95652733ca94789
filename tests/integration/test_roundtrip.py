"""Round trips through a real server: upload and train, then predict, via the Python API and via the CLI."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from client.cli import main
from tests.integration.helpers import ServerHandle, toy_examples

pytestmark = pytest.mark.integration

MRPC_LABELS = ("not_paraphrase", "paraphrase")
PAIRS = [
    ("The company said profits rose.", "Profits went up, the company said."),
    ("He left early.", "The weather was cold in Paris."),
    ("a", "b"),
]


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads its configuration from flags only here; wide output so nothing wraps."""
    for name in ("TASKPATCH_SERVER", "TASKPATCH_TOKEN", "GLUE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "200")


def is_subsequence(wanted: Sequence[str], kinds: Sequence[str]) -> bool:
    remaining = iter(kinds)
    return all(kind in remaining for kind in wanted)


def test_classification_round_trip_with_the_python_api(server: ServerHandle, glue_data_dir: Path) -> None:
    client = server.client
    events = list(client.add_glue_task("mrpc", glue_data_dir, train_limit=150, dev_limit=40, epochs=1))

    kinds = [e.kind for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "done"
    assert kinds.count("queued") == 1 and kinds.count("started") == 1 and kinds.count("done") == 1
    assert is_subsequence(["queued", "started", "progress", "evaluation", "done"], kinds), kinds
    assert {e.job_id for e in events} == {events[0].job_id}
    done = events[-1]
    assert done.state == "succeeded"
    assert done.version == 1
    assert done.patch_bytes is not None and done.patch_bytes > 0
    assert set(done.metrics) == {"accuracy", "f1"}
    assert done.train_examples == 150

    result = client.predict("mrpc", PAIRS)
    assert result.task == "mrpc"
    assert result.version == 1
    assert result.problem_type == "classification"
    assert result.labels == MRPC_LABELS
    assert len(result.predictions) == len(PAIRS)
    for prediction in result.predictions:
        assert prediction.label in MRPC_LABELS
        assert prediction.probabilities is not None
        assert set(prediction.probabilities) == set(MRPC_LABELS)
        assert math.isclose(sum(prediction.probabilities.values()), 1.0, abs_tol=1e-5)
        assert prediction.label == max(prediction.probabilities, key=prediction.probabilities.__getitem__)

    task = client.get_task("mrpc")
    assert task.version == 1 and task.labels == MRPC_LABELS and task.healthy


def test_regression_round_trip_with_the_python_api(server: ServerHandle, glue_data_dir: Path) -> None:
    client = server.client
    events = list(client.add_glue_task("stsb", glue_data_dir, train_limit=150, dev_limit=40, epochs=1))
    assert events[-1].kind == "done" and events[-1].version == 1
    assert set(events[-1].metrics) == {"pearson", "spearman"}

    result = client.predict("stsb", PAIRS)
    assert result.problem_type == "regression"
    assert result.version == 1
    assert result.labels == ()
    assert len(result.predictions) == len(PAIRS)
    for prediction in result.predictions:
        assert prediction.value is not None and math.isfinite(prediction.value)
        assert prediction.label is None and prediction.probabilities is None


def test_custom_csv_task_with_the_cli(
    server: ServerHandle, tmp_path: Path, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mytask.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "label"])
        for example in toy_examples(120):
            writer.writerow([example.text, example.label])
    connection = ["--server", server.addr]

    argv = ["add-task", "mytask", "--train", str(path), "--dev", str(path), "--text", "sentence", "--label", "label"]
    assert main([*connection, *argv, "--epochs", "1"]) == 0
    capsys.readouterr()

    assert main([*connection, "predict", "mytask", "some text"]) == 0
    out = capsys.readouterr().out
    assert out.split()[0] in ("neg", "pos"), out
    assert "mytask v1" in out

    assert main([*connection, "predict", "mytask", "some text", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["label"] in ("neg", "pos")
    assert record["version"] == 1
    assert record["value"] is None
    assert set(record["probabilities"]) == {"neg", "pos"}
    assert math.isclose(sum(record["probabilities"].values()), 1.0, abs_tol=1e-5)
    assert server.client.get_task("mytask").labels == ("neg", "pos")


def test_glue_round_trip_with_the_cli(
    server: ServerHandle, glue_data_dir: Path, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    connection = ["--server", server.addr]
    add = ["add-task", "mrpc", "--data-dir", str(glue_data_dir), "--train-limit", "150", "--dev-limit", "40"]
    assert main([*connection, *add, "--epochs", "1"]) == 0
    capsys.readouterr()

    assert main([*connection, "predict", "mrpc", "a", "b"]) == 0
    out = capsys.readouterr().out
    assert out.split()[0] in MRPC_LABELS and "mrpc v1" in out

    assert main([*connection, "tasks"]) == 0
    assert "mrpc" in capsys.readouterr().out

    assert main([*connection, "show", "mrpc"]) == 0
    out = capsys.readouterr().out
    assert "mrpc" in out and "bitfit" in out

    assert main([*connection, "jobs"]) == 0
    out = capsys.readouterr().out
    assert "mrpc" in out and "succeeded" in out

    assert main([*connection, "rm", "mrpc"]) == 0
    assert "deleted task mrpc" in capsys.readouterr().out

    assert main([*connection, "show", "mrpc"]) == 1
    captured = capsys.readouterr()
    assert "NOT_FOUND" in captured.err
    assert captured.out == ""
