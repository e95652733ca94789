"""The CLI end to end against the fake peer: output, exit codes and error messages of every command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protos import taskpatch_pb2 as pb
from tests.client.conftest import CliResult, CliRunner
from tests.client.fake_server import PATCH_BYTES, FakeTaskPatch


@pytest.fixture
def run_cli(cli: CliRunner, fake: FakeTaskPatch) -> CliRunner:
    """The CLI pointed at the fake server through the environment, as a user would configure it."""

    def invoke(*argv: str | Path, env: dict[str, str] | None = None) -> CliResult:
        return cli(*argv, env={"TASKPATCH_SERVER": fake.target, **(env or {})})

    return invoke


@pytest.fixture
def glue_dir(tmp_path: Path) -> Path:
    """A minimal glue_data-style SST-2 folder."""
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    rows = "".join(f"sentence {i}\t{i % 2}\n" for i in range(20))
    (folder / "train.tsv").write_text("sentence\tlabel\n" + rows)
    (folder / "dev.tsv").write_text("sentence\tlabel\nnice\t1\nawful\t0\n")
    return tmp_path / "glue"


def test_not_found_prints_one_error_line_and_exits_1(run_cli: CliRunner) -> None:
    result = run_cli("show", "x")
    assert result.code == 1
    assert result.err == "error: NOT_FOUND: task 'x' not found\n"
    assert result.out == ""


def test_unreachable_server_prints_a_hint(cli: CliRunner) -> None:
    result = cli("--server", "127.0.0.1:1", "--timeout", "5", "tasks")
    assert result.code == 1
    assert result.err.startswith("error: UNAVAILABLE: ")
    assert "hint: no taskpatch server is reachable at 127.0.0.1:1" in result.err


def test_add_glue_task_shows_progress_and_summary(run_cli: CliRunner, fake: FakeTaskPatch, glue_dir: Path) -> None:
    result = run_cli(
        "add-task",
        "sst-2",
        "--train-limit",
        "6",
        "--epochs",
        "2",
        "--method",
        "adapter",
        env={"GLUE_DIR": str(glue_dir)},
    )
    assert result.code == 0, result.err
    assert "uploading sst2: 6 train / 2 dev examples (labels negative, positive)" in result.err
    assert "job job-1 for task sst2 queued (position 0)" in result.out
    assert "eval epoch 1 step 2: accuracy=0.7500" in result.out
    for cell in ("dev accuracy", "0.7500", "patch size", "10.0 KiB", "wall time", "3.5s", "completed", "12,345"):
        assert cell in result.out
    spec = fake.uploads[0][0].spec
    assert (spec.name, spec.method, spec.training.epochs, list(spec.labels), list(spec.metrics)) == (
        "sst2", "adapter", 2, ["negative", "positive"], ["accuracy"]
    )  # fmt: skip
    train = [
        e
        for r in fake.uploads[0]
        if r.WhichOneof("item") == "chunk" and r.chunk.split == pb.TRAIN
        for e in r.chunk.examples
    ]
    assert [(e.text, e.label) for e in train[:2]] == [("sentence 0", "negative"), ("sentence 1", "positive")]
    assert len(train) == 6


def test_data_dir_flag_and_task_name(run_cli: CliRunner, fake: FakeTaskPatch, glue_dir: Path) -> None:
    result = run_cli("add-task", "sst2", "--data-dir", glue_dir, "--task-name", "sst2-b", "--dev-limit", "1")
    assert result.code == 0, result.err
    assert fake.uploads[0][0].spec.name == "sst2-b"
    assert "1 dev examples" in result.err


def test_failed_job_exits_1(run_cli: CliRunner, fake: FakeTaskPatch, glue_dir: Path) -> None:
    fake.fail_jobs = True
    result = run_cli("add-task", "sst2", "--data-dir", glue_dir)
    assert result.code == 1
    assert "job job-1 failed: out of patience" in result.err


def test_detach_prints_the_job_id_and_exits_0(run_cli: CliRunner, fake: FakeTaskPatch, glue_dir: Path) -> None:
    result = run_cli("add-task", "sst2", "--data-dir", glue_dir, "--detach")
    assert result.code == 0, result.err
    assert result.out == "job-1\n"
    assert "client watch job-1" in result.err
    assert fake.uploads[0][0].spec.detach


def test_existing_task_hints_at_replace(run_cli: CliRunner, fake: FakeTaskPatch, glue_dir: Path) -> None:
    fake.add_fake_task("sst2")
    result = run_cli("add-task", "sst2", "--data-dir", glue_dir)
    assert result.code == 1
    assert result.err.splitlines()[-2:] == [
        "error: ALREADY_EXISTS: task 'sst2' already exists",
        "hint: pass --replace to train a new version of the existing task",
    ]
    assert run_cli("add-task", "sst2", "--data-dir", glue_dir, "--replace").code == 0


def test_add_custom_regression_task(run_cli: CliRunner, fake: FakeTaskPatch, tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"q": "a", "a": "b", "score": 1.5}\n{"q": "c", "a": "d", "score": 4}\n')
    (tmp_path / "dev.jsonl").write_text('{"q": "e", "a": "f", "score": 2}\n')
    result = run_cli(
        "add-task", "sim", "--train", tmp_path / "train.jsonl", "--dev", tmp_path / "dev.jsonl",
        "--text", "q", "--text-pair", "a", "--label", "score", "--regression",
    )  # fmt: skip
    assert result.code == 0, result.err
    upload = fake.uploads[0]
    assert upload[0].spec.problem_type == pb.REGRESSION
    assert [(e.text, e.text_pair, e.value) for e in upload[1].chunk.examples] == [("a", "b", 1.5), ("c", "d", 4.0)]


def test_predict_single_text_and_pair(run_cli: CliRunner, fake: FakeTaskPatch) -> None:
    fake.add_fake_task("sst2")
    single = run_cli("predict", "sst2", "what a film")
    assert single.code == 0
    assert single.out.strip() == "pos  (pos 0.7500, neg 0.2500)  (sst2 v1)"
    pair = run_cli("predict", "sst2", "a", "b", "--json")
    assert json.loads(pair.out) == {
        "label": "neg",
        "probabilities": {"neg": 0.75, "pos": 0.25},
        "value": None,
        "version": 1,
    }
    assert fake.predict_requests[-1].inputs[0].text_pair == "b"


def test_predict_file(run_cli: CliRunner, fake: FakeTaskPatch, tmp_path: Path) -> None:
    fake.add_fake_task("rte")
    inputs = tmp_path / "in.jsonl"
    lines = [{"text": f"t{i}"} if i % 2 else {"text": f"t{i}", "text_pair": "h"} for i in range(300)]
    inputs.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    as_json = run_cli("predict", "rte", "--file", inputs, "--json")
    assert as_json.code == 0, as_json.err
    objects = [json.loads(line) for line in as_json.out.splitlines()]
    assert len(objects) == 300 and objects[0]["label"] == "neg" and objects[1]["label"] == "pos"
    assert [len(request.inputs) for request in fake.predict_requests] == [256, 44]  # batched requests
    table = run_cli("predict", "rte", "--file", inputs)
    assert table.code == 0 and "rte v1" in table.out and "t299" in table.out


def test_predict_file_with_a_bad_line_exits_2(run_cli: CliRunner, fake: FakeTaskPatch, tmp_path: Path) -> None:
    fake.add_fake_task("rte")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    result = run_cli("predict", "rte", "--file", inputs)
    assert result.code == 2
    assert result.err == f'error: {inputs}: line 2: expected a string "text", got None\n'
    missing = run_cli("predict", "rte", "--file", tmp_path / "nope.jsonl")
    assert missing.code == 2 and "file not found" in missing.err


def test_predict_regression_value(run_cli: CliRunner, fake: FakeTaskPatch) -> None:
    fake.add_fake_task("stsb", problem_type=pb.REGRESSION)
    result = run_cli("predict", "stsb", "abcd", "x")
    assert result.code == 0 and result.out.startswith("value 4.0000")


def test_registry_commands(run_cli: CliRunner, fake: FakeTaskPatch) -> None:
    assert "no tasks yet" in run_cli("tasks").err
    fake.add_fake_task("alpha")
    fake.add_fake_task("beta").healthy = False
    fake.tasks["beta"].problem = "fingerprint mismatch"
    listing = run_cli("tasks")
    assert listing.code == 0
    for cell in ("alpha", "beta", "bitfit", "accuracy=0.8750", "10.0 KiB", "healthy", "fingerprint mismatch"):
        assert cell in listing.out
    shown = run_cli("show", "alpha")
    assert shown.code == 0
    for cell in ("tiny-bert", "neg, pos", "classification", '"epochs": 1', "dev accuracy", "a" * 64):
        assert cell in shown.out
    assert run_cli("pin", "alpha").out.strip() == "pinned task alpha (resident: yes)"
    assert fake.tasks["alpha"].pinned
    assert run_cli("unpin", "alpha").out.strip() == "unpinned task alpha"
    fake.tasks["alpha"].versions.append(2)
    fake.tasks["alpha"].version = 2
    assert run_cli("rollback", "alpha").out.strip() == "task alpha now serves version 1"
    assert run_cli("rollback", "alpha", "--version", "2").out.strip() == "task alpha now serves version 2"
    bad = run_cli("rollback", "alpha", "--version", "7")
    assert bad.code == 1 and bad.err == "error: NOT_FOUND: task 'alpha' has no version 7\n"
    assert run_cli("rm", "alpha").out.strip() == "deleted task alpha"
    assert "alpha" not in fake.tasks


def test_job_commands(run_cli: CliRunner, fake: FakeTaskPatch) -> None:
    assert "no jobs" in run_cli("jobs").err
    fake.jobs["job-9"] = pb.Job(
        id="job-9", task="t", method="bitfit", state=pb.QUEUED, queue_position=2, created_unix=1.7e9
    )
    listing = run_cli("jobs")
    assert listing.code == 0 and "job-9" in listing.out and "queued, 2 ahead" in listing.out
    shown = run_cli("job", "job-9")
    assert shown.code == 0 and "queue position" in shown.out
    watched = run_cli("watch", "job-9")
    assert watched.code == 0, watched.err
    assert "eval epoch 1 step 2" in watched.out and "stop reason" in watched.out
    cancelled = run_cli("cancel", "job-9")
    assert cancelled.out.strip() == "job job-9 (t): cancelled"
    missing = run_cli("watch", "nope")
    assert missing.code == 1 and missing.err == "error: NOT_FOUND: job 'nope' not found\n"


def test_export_and_import(run_cli: CliRunner, fake: FakeTaskPatch, tmp_path: Path) -> None:
    fake.add_fake_task("t")
    target = tmp_path / "t.safetensors"
    exported = run_cli("export", "t", "-o", target)
    assert exported.code == 0 and target.read_bytes() == PATCH_BYTES
    assert "10.0 KiB" in exported.out
    imported = run_cli("import", target, "--name", "t2")
    assert imported.code == 0 and "imported task t2 version 1" in imported.out
    assert fake.imports[-1][0] == "t2" and b"".join(fake.imports[-1][1]) == PATCH_BYTES
    missing = run_cli("import", tmp_path / "missing")
    assert missing.code == 2 and "no such file" in missing.err
    unwritable = run_cli("export", "t", "-o", tmp_path / "no" / "dir" / "t.safetensors")
    assert unwritable.code == 1 and unwritable.err.startswith("error: ")


def test_token_from_env_and_file(run_cli: CliRunner, fake: FakeTaskPatch, tmp_path: Path) -> None:
    fake.required_token = "s3cret"
    denied = run_cli("tasks")
    assert denied.code == 1
    assert denied.err.splitlines() == [
        "error: UNAUTHENTICATED: missing or invalid bearer token",
        "hint: the server wants a bearer token: pass --token-file PATH or set TASKPATCH_TOKEN",
    ]
    assert run_cli("tasks", env={"TASKPATCH_TOKEN": "s3cret"}).code == 0
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    assert run_cli("--token-file", token_file, "tasks", env={"TASKPATCH_TOKEN": "wrong"}).code == 0
    assert fake.metadata[-1]["authorization"] == "Bearer s3cret"
