"""Protobuf <-> client types, in one module so the rest of the client never reads a proto field.

Requests: examples, inputs, the task spec and the AddTask / ImportTask request streams are built here.
Responses: every message the server returns is turned into a frozen dataclass of :mod:`client.types`, mapping
proto3's implicit defaults (0, "") to ``None`` where "not set" and "zero" mean different things.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from client.types import Job, JobEvent, Prediction, PredictResult, Progress, TaskInfo
from protos import taskpatch_pb2 as pb

if TYPE_CHECKING:
    from tasks.types import Example

DEFAULT_CHUNK_SIZE = 512  # examples per ExampleChunk: ~100 KB for GLUE sentences, far below the message limit
IMPORT_CHUNK_BYTES = 1 << 20

_PROBLEM_TYPES: dict[str, pb.ProblemType] = {"classification": pb.CLASSIFICATION, "regression": pb.REGRESSION}
_PROBLEM_NAMES: dict[int, str] = {value: name for name, value in _PROBLEM_TYPES.items()}
# The TrainingOptions fields the client sets; every one is `optional` in the proto, so unset = method default.
TRAINING_OPTIONS: tuple[str, ...] = tuple(f.name for f in pb.TrainingOptions.DESCRIPTOR.fields)


# --- requests -----------------------------------------------------------------------------------------------------


def problem_type_to_pb(problem_type: str) -> pb.ProblemType:
    """The proto enum for ``"classification"`` / ``"regression"``; anything else is a caller bug -> ValueError."""
    try:
        return _PROBLEM_TYPES[problem_type]
    except KeyError:
        raise ValueError(f"problem_type must be 'classification' or 'regression', got {problem_type!r}") from None


def example_to_pb(example: Example, problem_type: str) -> pb.Example:
    """One example; the label goes to the ``label`` (class name) or ``value`` (float) arm of the oneof.

    Types are checked rather than coerced: ``str(1.0)`` as a class name, or a class name parsed as a number,
    would train the wrong task without any error.
    """
    message = pb.Example(text=example.text)
    if example.text_pair is not None:
        message.text_pair = example.text_pair
    label = example.label
    if problem_type == "classification":
        if not isinstance(label, str):
            raise ValueError(f"classification labels are class names (str), got {label!r} for {example.text!r}")
        message.label = label
    else:
        if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label):
            raise ValueError(f"regression labels are finite numbers, got {label!r} for {example.text!r}")
        message.value = float(label)
    return message


def training_options_to_pb(options: Mapping[str, Any]) -> pb.TrainingOptions:
    """TrainingOptions with only the given (non-None) fields set, so the server applies its defaults to the rest."""
    unknown = sorted(set(options) - set(TRAINING_OPTIONS))
    if unknown:
        raise TypeError(f"unknown training option(s): {', '.join(unknown)}; known: {', '.join(TRAINING_OPTIONS)}")
    return pb.TrainingOptions(**{key: value for key, value in options.items() if value is not None})


def task_spec_to_pb(
    name: str,
    *,
    problem_type: str,
    labels: Sequence[str] = (),
    metrics: Sequence[str] = (),
    method: str = "bitfit",
    method_config: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    replace: bool = False,
    detach: bool = False,
) -> pb.TaskSpec:
    """The first message of AddTask."""
    if isinstance(labels, str) or isinstance(metrics, str):
        raise TypeError("labels and metrics are sequences of names, not one string")
    return pb.TaskSpec(
        name=name,
        method=method,
        method_config_json=json.dumps(dict(method_config)) if method_config else "",
        problem_type=problem_type_to_pb(problem_type),
        labels=list(labels),
        metrics=list(metrics),
        training=training_options_to_pb(training or {}),
        replace=replace,
        detach=detach,
    )


def chunk_requests(
    examples: Iterable[Example], split: pb.Split, problem_type: str, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[pb.AddTaskRequest]:
    """ExampleChunk requests of at most ``chunk_size`` examples, built lazily so a large file is never held twice."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    chunk = pb.ExampleChunk(split=split)
    for example in examples:
        chunk.examples.append(example_to_pb(example, problem_type))
        if len(chunk.examples) >= chunk_size:
            yield pb.AddTaskRequest(chunk=chunk)
            chunk = pb.ExampleChunk(split=split)
    if chunk.examples:
        yield pb.AddTaskRequest(chunk=chunk)


def add_task_requests(
    spec: pb.TaskSpec,
    train: Iterable[Example],
    dev: Iterable[Example],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[pb.AddTaskRequest]:
    """The whole AddTask upload: spec, TRAIN chunks, DEV chunks, EndOfUpload.

    The explicit end marker lets the server tell a complete upload from a client that died mid-stream.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    problem_type = _PROBLEM_NAMES[spec.problem_type]
    yield pb.AddTaskRequest(spec=spec)
    yield from chunk_requests(train, pb.TRAIN, problem_type, chunk_size)
    yield from chunk_requests(dev, pb.DEV, problem_type, chunk_size)
    yield pb.AddTaskRequest(end=pb.EndOfUpload())


def input_to_pb(item: str | Sequence[str | None]) -> pb.Input:
    """A prediction input: ``"text"`` or ``(text, text_pair)`` (``text_pair`` may be None)."""
    if isinstance(item, str):
        return pb.Input(text=item)
    if not isinstance(item, Sequence) or not 1 <= len(item) <= 2 or not isinstance(item[0], str):
        raise TypeError(f"an input is a string or a (text, text_pair) pair, got {item!r}")
    pair = item[1] if len(item) == 2 else None
    if pair is not None and not isinstance(pair, str):
        raise TypeError(f"text_pair must be a string or None, got {pair!r}")
    return pb.Input(text=item[0]) if pair is None else pb.Input(text=item[0], text_pair=pair)


def import_requests(
    name: str | None, handle: IO[bytes], chunk_bytes: int = IMPORT_CHUNK_BYTES
) -> Iterator[pb.ImportTaskRequest]:
    """ImportTask stream: the name first ("" = keep the stored name), then the file in ``chunk_bytes`` pieces."""
    yield pb.ImportTaskRequest(name=name or "")
    while data := handle.read(chunk_bytes):
        yield pb.ImportTaskRequest(data=data)


# --- responses ----------------------------------------------------------------------------------------------------


def problem_type_from_pb(value: int) -> str:
    return _PROBLEM_NAMES.get(value, "unspecified")


def job_state_from_pb(value: int) -> str:
    """``"queued"``, ``"running"``, ...; a state newer than this client reads ``"state_<n>"`` instead of failing."""
    try:
        return pb.JobState.Name(value).lower().removeprefix("job_state_")
    except ValueError:
        return f"state_{value}"


def progress_from_pb(message: pb.Progress) -> Progress:
    return Progress(
        epoch=message.epoch,
        step=message.step,
        total_steps=message.total_steps,
        loss=message.loss,
        examples_per_s=message.examples_per_s,
        eta_s=message.eta_s,
    )


def job_event_from_pb(message: pb.JobEvent) -> JobEvent:
    which = message.WhichOneof("event")
    base: dict[str, Any] = {"job_id": message.job_id, "task": message.task, "state": job_state_from_pb(message.state)}
    if which == "queued_position":
        return JobEvent(kind="queued", queued_position=message.queued_position, **base)
    if which == "started":
        return JobEvent(kind="started", **base)
    if which == "progress":
        return JobEvent(kind="progress", progress=progress_from_pb(message.progress), **base)
    if which == "evaluation":
        evaluation = message.evaluation
        return JobEvent(
            kind="evaluation", epoch=evaluation.epoch, step=evaluation.step, metrics=dict(evaluation.metrics), **base
        )
    if which == "done":
        done = message.done
        return JobEvent(
            kind="done",
            version=done.version,
            patch_bytes=done.patch_bytes,
            metrics=dict(done.metrics),
            wall_time_s=done.wall_time_s,
            trainable_parameters=done.trainable_parameters,
            stop_reason=done.stop_reason or None,
            train_examples=done.train_examples,
            **base,
        )
    if which == "failed":
        return JobEvent(kind="failed", reason=message.failed, **base)
    if which == "cancelled":
        return JobEvent(kind="cancelled", reason=message.cancelled, **base)
    return JobEvent(kind="unknown", **base)


def job_from_pb(message: pb.Job) -> Job:
    state = job_state_from_pb(message.state)
    return Job(
        id=message.id,
        task=message.task,
        method=message.method,
        state=state,
        created_unix=message.created_unix or None,
        started_unix=message.started_unix or None,
        finished_unix=message.finished_unix or None,
        queue_position=message.queue_position if state == "queued" else None,
        progress=progress_from_pb(message.progress) if message.HasField("progress") else None,
        metrics=dict(message.metrics),
        version=message.version or None,
        error=message.error or None,
    )


def predict_result_from_pb(message: pb.PredictResponse) -> PredictResult:
    labels = tuple(message.labels)
    problem_type = problem_type_from_pb(message.problem_type)
    predictions = []
    for prediction in message.predictions:
        if problem_type == "regression":
            predictions.append(Prediction(label=None, probabilities=None, value=prediction.value))
        else:
            # probabilities travel as float32 in label order; widen to Python floats keyed by class name
            probabilities = dict(zip(labels, map(float, prediction.probabilities), strict=False)) or None
            predictions.append(Prediction(label=prediction.label, probabilities=probabilities, value=None))
    return PredictResult(
        task=message.task,
        version=message.version,
        problem_type=problem_type,
        labels=labels,
        predictions=predictions,
    )


def task_info_from_pb(message: pb.TaskInfo) -> TaskInfo:
    return TaskInfo(
        name=message.name,
        method=message.method,
        version=message.version,
        versions=tuple(message.versions),
        metrics=dict(message.metrics),
        patch_bytes=message.patch_bytes,
        backbone_id=message.backbone_id,
        backbone_fingerprint=message.backbone_fingerprint,
        created=message.created,
        problem_type=problem_type_from_pb(message.problem_type),
        labels=tuple(message.labels),
        healthy=message.healthy,
        problem=message.problem or None,
        pinned=message.pinned,
        resident=message.resident,
        method_config_json=message.method_config_json,
        training_json=message.training_json,
        content_sha256=message.content_sha256,
    )
