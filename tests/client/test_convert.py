"""pb <-> client types: requests built from examples and options, responses read into frozen dataclasses."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest

from client import convert
from client.types import JobEvent
from protos import taskpatch_pb2 as pb
from tasks.types import Example


def examples(n: int, problem: str = "classification") -> list[Example]:
    if problem == "regression":
        return [Example(f"t{i}", None, i / 2) for i in range(n)]
    return [Example(f"t{i}", f"p{i}" if i % 2 else None, "pos" if i % 3 else "neg") for i in range(n)]


# --- requests -----------------------------------------------------------------------------------------------------


def test_example_to_pb_classification_uses_the_label_arm() -> None:
    message = convert.example_to_pb(Example("a", "b", "pos"), "classification")
    assert (message.text, message.text_pair, message.WhichOneof("target"), message.label) == ("a", "b", "label", "pos")


def test_example_to_pb_regression_uses_the_value_arm_and_leaves_pair_unset() -> None:
    message = convert.example_to_pb(Example("a", None, 3), "regression")
    assert message.WhichOneof("target") == "value"
    assert message.value == 3.0
    assert not message.HasField("text_pair")


@pytest.mark.parametrize(
    ("label", "problem"),
    [(1.0, "classification"), ("2.5", "regression"), (True, "regression"), (math.nan, "regression")],
)
def test_example_to_pb_rejects_label_of_the_wrong_type(label: object, problem: str) -> None:
    with pytest.raises(ValueError, match="labels are"):
        convert.example_to_pb(Example("a", None, label), problem)  # type: ignore[arg-type]


def test_add_task_requests_order_counts_and_splits() -> None:
    spec = convert.task_spec_to_pb("t", problem_type="classification", labels=["neg", "pos"])
    requests = list(convert.add_task_requests(spec, examples(1200), examples(10), chunk_size=512))
    kinds = [request.WhichOneof("item") for request in requests]
    assert kinds == ["spec", "chunk", "chunk", "chunk", "chunk", "end"]
    assert requests[0].spec == spec
    chunks = [request.chunk for request in requests[1:-1]]
    assert [len(chunk.examples) for chunk in chunks] == [512, 512, 176, 10]
    assert [chunk.split for chunk in chunks] == [pb.TRAIN, pb.TRAIN, pb.TRAIN, pb.DEV]
    sent = [example for chunk in chunks[:3] for example in chunk.examples]
    assert [example.text for example in sent] == [f"t{i}" for i in range(1200)]  # order kept across chunks
    assert sent[1].text_pair == "p1" and not sent[0].HasField("text_pair")
    assert {example.WhichOneof("target") for example in sent} == {"label"}


def test_add_task_requests_regression_and_exact_chunk_boundary() -> None:
    spec = convert.task_spec_to_pb("r", problem_type="regression")
    requests = list(
        convert.add_task_requests(spec, examples(4, "regression"), examples(2, "regression"), chunk_size=2)
    )
    chunks = [request.chunk for request in requests if request.WhichOneof("item") == "chunk"]
    assert [len(chunk.examples) for chunk in chunks] == [2, 2, 2]  # no empty trailing chunk
    assert [example.value for example in chunks[1].examples] == [1.0, 1.5]
    assert {example.WhichOneof("target") for chunk in chunks for example in chunk.examples} == {"value"}


def test_chunk_requests_streams_lazily_from_a_generator() -> None:
    consumed = []

    def source():
        for example in examples(5):
            consumed.append(example)
            yield example

    requests = convert.chunk_requests(source(), pb.TRAIN, "classification", chunk_size=2)
    first = next(requests)
    assert len(first.chunk.examples) == 2 and len(consumed) == 2


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        list(convert.chunk_requests(examples(1), pb.TRAIN, "classification", chunk_size=0))


def test_task_spec_sets_only_given_training_options() -> None:
    spec = convert.task_spec_to_pb(
        "t",
        problem_type="classification",
        labels=("a", "b"),
        metrics=("f1", "accuracy"),
        method="adapter",
        method_config={"variant": "pfeiffer"},
        training={"epochs": 3, "learning_rate": 1e-3, "seed": None},
        replace=True,
        detach=True,
    )
    assert spec.problem_type == pb.CLASSIFICATION
    assert list(spec.labels) == ["a", "b"] and list(spec.metrics) == ["f1", "accuracy"]
    assert spec.method == "adapter" and spec.method_config_json == '{"variant": "pfeiffer"}'
    assert spec.training.epochs == 3 and spec.training.learning_rate == 1e-3
    assert not spec.training.HasField("seed") and not spec.training.HasField("batch_size")
    assert spec.replace and spec.detach


def test_task_spec_rejects_bad_problem_type_unknown_option_and_string_labels() -> None:
    with pytest.raises(ValueError, match="problem_type"):
        convert.task_spec_to_pb("t", problem_type="ranking")
    with pytest.raises(TypeError, match="unknown training option"):
        convert.task_spec_to_pb("t", problem_type="regression", training={"epoch": 1})
    with pytest.raises(TypeError, match="sequences"):
        convert.task_spec_to_pb("t", problem_type="classification", labels="ab")


def test_input_to_pb_accepts_text_pair_and_none_pair() -> None:
    assert convert.input_to_pb("x") == pb.Input(text="x")
    assert convert.input_to_pb(("x", "y")) == pb.Input(text="x", text_pair="y")
    assert not convert.input_to_pb(("x", None)).HasField("text_pair")
    assert convert.input_to_pb(["x", "y"]).text_pair == "y"  # JSON arrays work too
    for bad in [("x", 1), (1,), ("a", "b", "c"), 5]:
        with pytest.raises(TypeError):
            convert.input_to_pb(bad)  # type: ignore[arg-type]


def test_import_requests_name_first_then_chunks() -> None:
    requests = list(convert.import_requests(None, io.BytesIO(b"abcdefg"), chunk_bytes=3))
    assert requests[0].WhichOneof("item") == "name" and requests[0].name == ""
    assert [request.data for request in requests[1:]] == [b"abc", b"def", b"g"]
    assert next(convert.import_requests("new", io.BytesIO(b""))).name == "new"


# --- responses ----------------------------------------------------------------------------------------------------


def event(**fields: Any) -> JobEvent:
    return convert.job_event_from_pb(pb.JobEvent(job_id="j", task="t", **fields))


def test_job_events_of_every_kind() -> None:
    assert event(state=pb.QUEUED, queued_position=0) == JobEvent("queued", "j", "t", "queued", queued_position=0)
    assert event(state=pb.RUNNING, started=True).kind == "started"
    progress = event(state=pb.RUNNING, progress=pb.Progress(epoch=1, step=5, total_steps=10, loss=0.5, eta_s=3))
    assert progress.kind == "progress" and progress.progress is not None
    assert (progress.progress.step, progress.progress.total_steps, progress.progress.fraction) == (5, 10, 0.5)
    evaluation = event(evaluation=pb.Evaluation(epoch=2, step=7, metrics={"f1": 0.5}))
    assert (evaluation.kind, evaluation.epoch, evaluation.step, evaluation.metrics) == (
        "evaluation",
        2,
        7,
        {"f1": 0.5},
    )
    done = event(
        state=pb.SUCCEEDED,
        done=pb.Done(version=2, patch_bytes=10, metrics={"accuracy": 1.0}, wall_time_s=1.5,
                     trainable_parameters=7, stop_reason="time_budget", train_examples=9),
    )  # fmt: skip
    assert (done.kind, done.state, done.version, done.patch_bytes, done.stop_reason) == (
        "done", "succeeded", 2, 10, "time_budget"
    )  # fmt: skip
    assert (done.wall_time_s, done.trainable_parameters, done.train_examples, done.terminal) == (1.5, 7, 9, True)
    failed = event(state=pb.FAILED, failed="boom")
    assert (failed.kind, failed.reason, failed.terminal) == ("failed", "boom", True)
    assert event(state=pb.CANCELLED, cancelled="by user").reason == "by user"
    assert event().kind == "unknown" and event().state == "unspecified"


def test_unknown_job_state_number_does_not_crash() -> None:
    assert convert.job_state_from_pb(42) == "state_42"
    assert convert.job_state_from_pb(pb.INTERRUPTED) == "interrupted"


def test_job_from_pb_maps_proto_zeros_to_none() -> None:
    queued = convert.job_from_pb(pb.Job(id="j", task="t", method="bitfit", state=pb.QUEUED, created_unix=5.0))
    assert queued.queue_position == 0 and queued.progress is None
    assert (queued.started_unix, queued.finished_unix, queued.version, queued.error) == (None, None, None, None)
    failed = convert.job_from_pb(
        pb.Job(id="j", state=pb.FAILED, queue_position=3, progress=pb.Progress(step=2), error="x", version=0)
    )
    assert failed.queue_position is None and failed.progress is not None and failed.progress.step == 2
    assert failed.error == "x" and failed.finished


def test_predict_result_classification_keys_probabilities_by_label() -> None:
    response = pb.PredictResponse(
        task="t", version=3, problem_type=pb.CLASSIFICATION, labels=["neg", "pos"],
        predictions=[pb.Prediction(label="pos", probabilities=[0.1, 0.9])],
    )  # fmt: skip
    result = convert.predict_result_from_pb(response)
    assert (result.task, result.version, result.problem_type, result.labels) == (
        "t",
        3,
        "classification",
        ("neg", "pos"),
    )
    prediction = result.predictions[0]
    assert prediction.label == "pos" and prediction.value is None
    assert prediction.probabilities == pytest.approx({"neg": 0.1, "pos": 0.9})
    assert prediction.probabilities is not None
    assert all(type(p) is float for p in prediction.probabilities.values())


def test_predict_result_regression() -> None:
    response = pb.PredictResponse(task="s", problem_type=pb.REGRESSION, predictions=[pb.Prediction(value=2.5)])
    prediction = convert.predict_result_from_pb(response).predictions[0]
    assert (prediction.label, prediction.probabilities, prediction.value) == (None, None, 2.5)


def test_task_info_from_pb_and_json_properties() -> None:
    message = pb.TaskInfo(
        name="t", method="adapter", version=2, versions=[1, 2], metrics={"f1": 0.5}, problem_type=pb.REGRESSION,
        healthy=False, problem="fingerprint mismatch", method_config_json='{"variant": "houlsby"}',
        training_json="not json",
    )  # fmt: skip
    info = convert.task_info_from_pb(message)
    assert (info.name, info.version, info.versions, info.problem_type) == ("t", 2, (1, 2), "regression")
    assert (info.healthy, info.problem, info.labels) == (False, "fingerprint mismatch", ())
    assert info.method_config == {"variant": "houlsby"}
    assert info.training == {}  # unreadable JSON must not break a listing
    assert convert.task_info_from_pb(pb.TaskInfo(name="x", healthy=True)).problem is None
