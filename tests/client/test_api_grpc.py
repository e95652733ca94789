"""TaskPatchClient against the fake in-process peer: what goes over the wire, what comes back, how errors look."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import (
    AlreadyExistsError,
    NotFoundError,
    TaskPatchClient,
    TaskPatchError,
    UnauthenticatedError,
    UnavailableError,
)
from protos import taskpatch_pb2 as pb
from tasks.types import Example
from tests.client.fake_server import PATCH_BYTES, FakeTaskPatch

TRAIN = [Example(f"train {i}", None, "pos" if i % 2 else "neg") for i in range(5)]
DEV = [Example("dev 0", None, "neg"), Example("dev 1", None, "pos")]


@pytest.fixture
def client(fake: FakeTaskPatch) -> Iterator[TaskPatchClient]:
    with TaskPatchClient(fake.target, timeout_s=10) as connected:
        yield connected


def test_predict_classification_and_pairs(fake: FakeTaskPatch, client: TaskPatchClient) -> None:
    fake.add_fake_task("sst2")
    result = client.predict("sst2", ["great", ("a", "b"), ("c", None)])
    assert (result.task, result.version, result.problem_type, result.labels) == (
        "sst2",
        1,
        "classification",
        ("neg", "pos"),
    )
    assert [p.label for p in result.predictions] == ["pos", "neg", "pos"]
    assert result.predictions[0].probabilities == {"neg": 0.25, "pos": 0.75}
    sent = fake.predict_requests[0].inputs
    assert [(i.text, i.HasField("text_pair")) for i in sent] == [("great", False), ("a", True), ("c", False)]


def test_predict_regression(fake: FakeTaskPatch, client: TaskPatchClient) -> None:
    fake.add_fake_task("stsb", problem_type=pb.REGRESSION)
    prediction = client.predict("stsb", ["abc"]).predictions[0]
    assert (prediction.label, prediction.probabilities, prediction.value) == (None, None, 3.0)


def test_not_found_becomes_taskpatch_error(client: TaskPatchClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.predict("missing", ["x"])
    assert (caught.value.code, caught.value.message) == ("NOT_FOUND", "task 'missing' not found")
    with pytest.raises(TaskPatchError, match="NOT_FOUND: job 'nope' not found"):
        list(client.watch_job("nope"))  # errors in server streams are translated too


def test_add_task_streams_upload_and_yields_events(fake: FakeTaskPatch, client: TaskPatchClient) -> None:
    events = list(
        client.add_task(
            "mine", iter(TRAIN), iter(DEV), problem_type="classification", labels=["neg", "pos"],
            metrics=["accuracy"], method="adapter", method_config={"variant": "pfeiffer"}, epochs=2,
            learning_rate=1e-3, chunk_size=2,
        )
    )  # fmt: skip
    assert [event.kind for event in events] == ["queued", "started", "progress", "progress", "evaluation", "done"]
    assert events[0].queued_position == 0 and events[0].job_id == "job-1" and events[0].state == "queued"
    assert events[3].progress is not None and events[3].progress.step == 2
    assert events[4].metrics == {"accuracy": 0.75}
    done = events[-1]
    assert (done.version, done.train_examples, done.stop_reason, done.trainable_parameters) == (
        1,
        5,
        "completed",
        12345,
    )
    upload = fake.uploads[0]
    kinds = [request.WhichOneof("item") for request in upload]
    assert kinds == ["spec", "chunk", "chunk", "chunk", "chunk", "end"]  # 5 train in chunks of 2, then 2 dev
    spec = upload[0].spec
    assert (spec.name, spec.method, spec.method_config_json, spec.training.epochs) == (
        "mine",
        "adapter",
        '{"variant": "pfeiffer"}',
        2,
    )
    assert not spec.training.HasField("batch_size")
    assert [request.chunk.split for request in upload[1:5]] == [pb.TRAIN, pb.TRAIN, pb.TRAIN, pb.DEV]


def test_add_task_detach_stops_after_queued(fake: FakeTaskPatch, client: TaskPatchClient) -> None:
    events = list(client.add_task("d", TRAIN, DEV, problem_type="classification", detach=True))
    assert [event.kind for event in events] == ["queued"]
    assert fake.uploads[0][0].spec.detach


def test_add_task_existing_name_is_already_exists(fake: FakeTaskPatch, client: TaskPatchClient) -> None:
    fake.add_fake_task("taken")
    with pytest.raises(AlreadyExistsError, match="already exists"):
        list(client.add_task("taken", TRAIN, DEV, problem_type="classification"))
    events = list(client.add_task("taken", TRAIN, DEV, problem_type="classification", replace=True))
    assert events[-1].kind == "done"


def test_add_task_validates_spec_at_call_time(client: TaskPatchClient) -> None:
    with pytest.raises(ValueError, match="problem_type"):
        client.add_task("x", TRAIN, DEV, problem_type="ranking")
    with pytest.raises(ValueError, match="chunk_size"):
        client.add_task("x", TRAIN, DEV, problem_type="classification", chunk_size=0)


def test_a_bad_example_mid_upload_raises_its_own_error_not_cancelled(
    fake: FakeTaskPatch, client: TaskPatchClient
) -> None:
    def train() -> Iterator[Example]:
        yield from TRAIN
        yield Example("bad", None, 1.0)  # a float label in a classification task

    with pytest.raises(ValueError, match="classification labels are class names"):
        list(client.add_task("x", train(), DEV, problem_type="classification", chunk_size=2))

    # and a generator that raises by itself
    def broken() -> Iterator[Example]:
        raise OSError("disk went away")
        yield  # pragma: no cover

    with pytest.raises(OSError, match="disk went away"):
        list(client.add_task("x", broken(), DEV, problem_type="classification"))


def test_stopping_iteration_cancels_the_stream(fake: FakeTaskPatch, client: TaskPatchClient) -> None:
    fake.jobs["endless"] = pb.Job(id="endless", task="t", state=pb.RUNNING)
    events = client.watch_job("endless")
    assert next(events).kind == "progress"
    events.close()  # type: ignore[attr-defined]
    assert fake.stream_cancelled.wait(5)


def test_registry_calls(fake: FakeTaskPatch, client: TaskPatchClient) -> None:
    fake.add_fake_task("a")
    fake.add_fake_task("b").versions.append(2)
    fake.tasks["b"].version = 2
    assert [task.name for task in client.list_tasks()] == ["a", "b"]
    info = client.get_task("a")
    assert (info.method, info.metrics, info.training, info.healthy) == (
        "bitfit",
        {"accuracy": 0.875},
        {"epochs": 1},
        True,
    )
    assert client.rollback_task("b").version == 1
    assert client.rollback_task("b", version=2).version == 2
    assert client.pin_task("a").pinned
    assert not client.pin_task("a", pinned=False).pinned
    client.delete_task("a")
    with pytest.raises(NotFoundError):
        client.get_task("a")


def test_job_calls(fake: FakeTaskPatch, client: TaskPatchClient) -> None:
    list(client.add_task("t", TRAIN, DEV, problem_type="classification", detach=True))
    jobs = client.list_jobs()
    assert [(job.id, job.state, job.queue_position) for job in jobs] == [("job-1", "queued", 0)]
    assert client.get_job("job-1").created_unix == 1.7e9
    assert [event.kind for event in client.watch_job("job-1")][-1] == "done"
    assert client.get_job("job-1").version == 1
    assert client.cancel_job("job-1").state == "cancelled"


def test_export_writes_atomically(fake: FakeTaskPatch, client: TaskPatchClient, tmp_path: Path) -> None:
    fake.add_fake_task("t")
    target = tmp_path / "t.safetensors"
    assert client.export_task("t", target) == len(PATCH_BYTES)
    assert target.read_bytes() == PATCH_BYTES
    target.write_bytes(b"previous")
    with pytest.raises(TaskPatchError, match="INTERNAL: disk error"):
        client.export_task("t", target, version=99)  # fails after some data arrived
    assert target.read_bytes() == b"previous"  # the old file is untouched
    with pytest.raises(NotFoundError):
        client.export_task("missing", tmp_path / "m.safetensors")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["t.safetensors"]  # no temp files left


def test_import_sends_name_then_megabyte_chunks(fake: FakeTaskPatch, client: TaskPatchClient, tmp_path: Path) -> None:
    source = tmp_path / "p.safetensors"
    source.write_bytes(b"x" * (2 * 1024 * 1024 + 10))
    info = client.import_task(source, name="copy")
    assert info.name == "copy" and info.patch_bytes == source.stat().st_size
    name, chunks = fake.imports[0]
    assert name == "copy" and [len(chunk) for chunk in chunks] == [1 << 20, 1 << 20, 10]
    assert client.import_task(source).name == "stored-name" and fake.imports[1][0] == ""
    with pytest.raises(FileNotFoundError):
        client.import_task(tmp_path / "missing.safetensors")


def test_bearer_token_metadata(fake: FakeTaskPatch) -> None:
    fake.add_fake_task("t")
    fake.required_token = "s3cret"
    with TaskPatchClient(fake.target, token="s3cret") as client:
        client.list_tasks()
        list(client.add_task("new", TRAIN, DEV, problem_type="classification", detach=True))  # streams carry it too
    assert [metadata["authorization"] for metadata in fake.metadata] == ["Bearer s3cret", "Bearer s3cret"]
    with TaskPatchClient(fake.target) as anonymous, pytest.raises(UnauthenticatedError):
        anonymous.list_tasks()
    assert "authorization" not in fake.metadata[-1]
    with TaskPatchClient(fake.target, token="wrong") as wrong, pytest.raises(UnauthenticatedError):
        wrong.get_task("t")


def test_unreachable_server_is_unavailable() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with TaskPatchClient(f"127.0.0.1:{port}", timeout_s=5) as client, pytest.raises(UnavailableError):
        client.list_tasks()
    assert time.monotonic() - started < 5  # fails fast rather than waiting for the deadline
