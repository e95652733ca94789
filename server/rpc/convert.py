"""Protobuf <-> domain objects, with request validation at the boundary (limits, types, names)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protos import taskpatch_pb2 as pb
from server.errors import InvalidArgument, ResourceExhausted
from server.names import validate_task_name
from server.scheduler import Job, JobEvent, JobState
from server.store import TaskRecord
from server.training.config import TrainConfig
from server.training.trainer import TrainEvent
from tasks.metrics import default_metrics, validate_metric_names
from tasks.types import Example, TaskData
from tasks.validate import check_label_set, validate_examples

if TYPE_CHECKING:  # the RPC layer never imports torch at run time
    from server.engine import PredictOutput

PROBLEM_TYPE_NAMES = {pb.CLASSIFICATION: "classification", pb.REGRESSION: "regression"}
PROBLEM_TYPE_ENUMS = {v: k for k, v in PROBLEM_TYPE_NAMES.items()}
JOB_STATES = {
    JobState.QUEUED: pb.QUEUED,
    JobState.RUNNING: pb.RUNNING,
    JobState.SUCCEEDED: pb.SUCCEEDED,
    JobState.FAILED: pb.FAILED,
    JobState.CANCELLED: pb.CANCELLED,
    JobState.INTERRUPTED: pb.INTERRUPTED,
}
# Every TrainingOptions field is `optional` in the proto (unset = the method default); read the names from there.
TRAINING_FIELDS: tuple[str, ...] = tuple(f.name for f in pb.TrainingOptions.DESCRIPTOR.fields)


@dataclass(frozen=True)
class UploadLimits:
    max_examples: int
    max_bytes: int
    max_text_chars: int


@dataclass(frozen=True)
class Upload:
    name: str
    config: TrainConfig
    data: TaskData
    replace: bool
    detach: bool


def _json_object(text: str, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def train_config_from_spec(spec: pb.TaskSpec) -> TrainConfig:
    options: dict[str, Any] = {}
    for name in TRAINING_FIELDS:
        if spec.training.HasField(name):
            value = getattr(spec.training, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidArgument(f"training option {name} must be finite, got {value}")
            options[name] = value
    config = TrainConfig(
        method=spec.method or "bitfit",
        method_config=_json_object(spec.method_config_json, "method_config_json"),
        **options,
    )
    config.validate()
    return config


def _check_text(text: str, field: str, where: str, index: int, limit: int) -> None:
    if len(text) > limit:
        raise InvalidArgument(f"{where}: example {index}: {field} has {len(text)} characters; the limit is {limit}")


def read_upload(requests: Iterator[pb.AddTaskRequest], limits: UploadLimits) -> Upload:
    """Consume an AddTask stream: spec first, then chunks, then the end marker. Nothing is queued until the whole
    upload has arrived and validated."""
    first = next(requests, None)
    if first is None or first.WhichOneof("item") != "spec":
        raise InvalidArgument("the first AddTask message must be the task spec")
    spec = first.spec
    name = validate_task_name(spec.name)
    problem_type = PROBLEM_TYPE_NAMES.get(spec.problem_type)
    if problem_type is None:
        raise InvalidArgument("problem_type must be CLASSIFICATION or REGRESSION")
    labels = check_label_set(list(spec.labels), problem_type)  # type: ignore[arg-type]
    metrics = (
        validate_metric_names(list(spec.metrics), problem_type, len(labels))  # type: ignore[arg-type]
        if spec.metrics
        else default_metrics(problem_type, len(labels))  # type: ignore[arg-type]
    )
    config = train_config_from_spec(spec)
    splits: dict[int, list[Example]] = {pb.TRAIN: [], pb.DEV: []}
    total_examples = total_bytes = 0
    ended = False
    for request in requests:
        kind = request.WhichOneof("item")
        if kind == "spec":
            raise InvalidArgument("the task spec was sent twice")
        if kind == "end":
            ended = True
            break
        if kind != "chunk":
            raise InvalidArgument("empty AddTask message")
        chunk = request.chunk
        if chunk.split not in splits:
            raise InvalidArgument("every example chunk needs split TRAIN or DEV")
        where = "train" if chunk.split == pb.TRAIN else "dev"
        target = splits[chunk.split]
        for example in chunk.examples:
            index = len(target)
            total_examples += 1
            total_bytes += len(example.text) + len(example.text_pair)
            if total_examples > limits.max_examples:
                raise ResourceExhausted(f"upload has more than {limits.max_examples} examples")
            if total_bytes > limits.max_bytes:
                raise ResourceExhausted(f"upload text exceeds {limits.max_bytes} bytes")
            _check_text(example.text, "text", where, index, limits.max_text_chars)
            _check_text(example.text_pair, "text_pair", where, index, limits.max_text_chars)
            target.append(_example_from_pb(example, problem_type, where, index))
    if not ended:
        raise InvalidArgument("the upload ended without its end marker; nothing was queued")
    train, dev = splits[pb.TRAIN], splits[pb.DEV]
    validate_examples(train, problem_type, labels, "train")  # type: ignore[arg-type]
    validate_examples(dev, problem_type, labels, "dev")  # type: ignore[arg-type]
    if problem_type == "classification" and len({e.label for e in train}) < 2:
        raise InvalidArgument("train: the training data has a single class; a classifier needs at least two")
    data = TaskData(name, problem_type, labels, metrics, train, dev)  # type: ignore[arg-type]
    return Upload(name, config, data, spec.replace, spec.detach)


def _example_from_pb(example: pb.Example, problem_type: str, where: str, index: int) -> Example:
    target = example.WhichOneof("target")
    pair = example.text_pair if example.HasField("text_pair") and example.text_pair != "" else None
    if problem_type == "classification":
        if target != "label":
            raise InvalidArgument(f"{where}: example {index}: a classification example needs a string label")
        return Example(example.text, pair, example.label)
    if target != "value":
        raise InvalidArgument(f"{where}: example {index}: a regression example needs a numeric value")
    return Example(example.text, pair, example.value)


def inputs_from_request(request: pb.PredictRequest, max_inputs: int, max_chars: int) -> list[tuple[str, str | None]]:
    if not request.inputs:
        raise InvalidArgument("no inputs to predict")
    if len(request.inputs) > max_inputs:
        raise InvalidArgument(
            f"{len(request.inputs)} inputs in one request; the limit is max_inputs_per_request={max_inputs}"
        )
    inputs = []
    for index, item in enumerate(request.inputs):
        if not item.text.strip():
            raise InvalidArgument(f"input {index}: text is empty")
        for field, text in (("text", item.text), ("text_pair", item.text_pair)):
            if len(text) > max_chars:
                raise InvalidArgument(
                    f"input {index}: {field} has {len(text)} characters; the limit is max_text_chars={max_chars}"
                )
        inputs.append((item.text, item.text_pair if item.HasField("text_pair") and item.text_pair else None))
    return inputs


def _progress_to_pb(p: TrainEvent) -> pb.Progress:
    return pb.Progress(
        epoch=p.epoch,
        step=p.step,
        total_steps=p.total_steps,
        loss=p.loss,
        examples_per_s=p.examples_per_s,
        eta_s=p.eta_s,
    )


def job_event_to_pb(event: JobEvent) -> pb.JobEvent:
    message = pb.JobEvent(job_id=event.job_id, task=event.task, state=JOB_STATES[event.state])
    if event.kind == "queued":
        message.queued_position = event.queued_position
    elif event.kind == "started":
        message.started = True
    elif event.kind == "progress" and event.progress is not None:
        message.progress.CopyFrom(_progress_to_pb(event.progress))
    elif event.kind == "evaluation":
        epoch = event.progress.epoch if event.progress else 0
        step = event.progress.step if event.progress else 0
        message.evaluation.CopyFrom(pb.Evaluation(epoch=epoch, step=step, metrics=event.metrics))
    elif event.kind == "done":
        d = event.done
        message.done.CopyFrom(
            pb.Done(
                version=d.get("version", 0),
                patch_bytes=d.get("patch_bytes", 0),
                metrics=d.get("metrics", {}),
                wall_time_s=d.get("wall_time_s", 0.0),
                trainable_parameters=d.get("trainable_parameters", 0),
                stop_reason=d.get("stop_reason", ""),
                train_examples=d.get("train_examples", 0),
            )
        )
    elif event.kind == "cancelled":
        message.cancelled = event.reason or "cancelled"
    else:
        message.failed = event.reason or "failed"
    return message


def job_to_pb(job: Job, queue_position: int) -> pb.Job:
    message = pb.Job(
        id=job.id,
        task=job.task,
        method=job.method,
        state=JOB_STATES[job.state],
        created_unix=job.created,
        started_unix=job.started,
        finished_unix=job.finished,
        queue_position=queue_position,
        metrics=job.metrics,
        version=job.version,
        error=job.error,
    )
    if job.progress is not None:
        message.progress.CopyFrom(_progress_to_pb(job.progress))
    return message


def task_info_to_pb(record: TaskRecord, *, pinned: bool, resident: bool) -> pb.TaskInfo:
    info = pb.TaskInfo(
        name=record.name,
        versions=list(record.versions),
        healthy=record.healthy,
        problem=record.problem,
        pinned=pinned,
        resident=resident,
    )
    if record.current is not None:
        meta = record.current.meta
        info.method = meta.method
        info.version = record.current.version
        info.metrics.update(meta.metrics)
        info.patch_bytes = record.current.bytes
        info.backbone_id = meta.backbone_id
        info.backbone_fingerprint = meta.backbone_fingerprint
        info.created = meta.created
        info.problem_type = PROBLEM_TYPE_ENUMS.get(str(meta.head.get("problem_type")), pb.PROBLEM_TYPE_UNSPECIFIED)
        info.labels.extend(str(x) for x in meta.head.get("labels", []))
        info.method_config_json = json.dumps(meta.method_config, sort_keys=True)
        training = {k: v for k, v in meta.training.items() if k != "history"}
        info.training_json = json.dumps(training, sort_keys=True)
        info.content_sha256 = meta.content_sha256
    return info


def predict_output_to_pb(output: PredictOutput) -> pb.PredictResponse:
    response = pb.PredictResponse(
        task=output.task,
        version=output.version,
        problem_type=PROBLEM_TYPE_ENUMS[output.problem_type],
        labels=list(output.labels),
    )
    for row in output.probabilities:
        best = max(range(len(row)), key=row.__getitem__)
        response.predictions.add(label=output.labels[best], probabilities=row)
    for value in output.values:
        response.predictions.add(value=value)
    return response
