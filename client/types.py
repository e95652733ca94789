"""Plain, frozen result types of the Python client.

The client returns these instead of protobuf messages so that user code depends on neither grpc nor the generated
modules, and so that proto3's "zero means unset" is resolved once: a field that the server did not send is
``None`` here, not ``0`` or ``""``. Conversion lives in :mod:`client.convert`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal["queued", "started", "progress", "evaluation", "done", "failed", "cancelled", "unknown"]
JobStateName = Literal["unspecified", "queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
TERMINAL_EVENTS: frozenset[str] = frozenset({"done", "failed", "cancelled"})
FINISHED_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


@dataclass(frozen=True)
class Progress:
    """Training progress as the scheduler last reported it; ``eta_s`` is the server's estimate."""

    epoch: int
    step: int
    total_steps: int
    loss: float
    examples_per_s: float
    eta_s: float

    @property
    def fraction(self) -> float:
        """Share of steps done, in [0, 1] (0 while the total is unknown)."""
        return min(1.0, self.step / self.total_steps) if self.total_steps > 0 else 0.0


@dataclass(frozen=True)
class JobEvent:
    """One event of a training job's stream.

    ``kind`` says which optional fields are set: ``queued`` -> ``queued_position``; ``progress`` -> ``progress``;
    ``evaluation`` -> ``epoch``, ``step``, ``metrics``; ``done`` -> ``version``, ``patch_bytes``, ``metrics``,
    ``wall_time_s``, ``trainable_parameters``, ``stop_reason``, ``train_examples``; ``failed``/``cancelled`` ->
    ``reason``. ``unknown`` is an event kind newer than this client, kept rather than dropped.
    """

    kind: EventKind
    job_id: str
    task: str
    state: JobStateName | str
    queued_position: int | None = None
    progress: Progress | None = None
    epoch: int | None = None
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    version: int | None = None
    patch_bytes: int | None = None
    wall_time_s: float | None = None
    trainable_parameters: int | None = None
    stop_reason: str | None = None
    train_examples: int | None = None
    reason: str | None = None

    @property
    def terminal(self) -> bool:
        """True for the last event of a job (done, failed or cancelled)."""
        return self.kind in TERMINAL_EVENTS


@dataclass(frozen=True)
class Job:
    """A training job as the scheduler sees it; times are Unix seconds, ``None`` until they happen."""

    id: str
    task: str
    method: str
    state: JobStateName | str
    created_unix: float | None
    started_unix: float | None
    finished_unix: float | None
    queue_position: int | None  # only while queued: jobs ahead of this one
    progress: Progress | None
    metrics: dict[str, float]
    version: int | None  # the published patch version, once succeeded
    error: str | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


@dataclass(frozen=True)
class Prediction:
    """One input's prediction: ``label`` + ``probabilities`` (class name -> p) for classification, ``value`` for
    regression; the fields of the other problem type are ``None``."""

    label: str | None
    probabilities: dict[str, float] | None
    value: float | None


@dataclass(frozen=True)
class PredictResult:
    """Predictions for one request, in input order, made with patch ``version`` of ``task``."""

    task: str
    version: int
    problem_type: str  # "classification" | "regression"
    labels: tuple[str, ...]
    predictions: list[Prediction]


@dataclass(frozen=True)
class TaskInfo:
    """A registered task and its current patch version."""

    name: str
    method: str
    version: int
    versions: tuple[int, ...]
    metrics: dict[str, float]
    patch_bytes: int
    backbone_id: str
    backbone_fingerprint: str
    created: str
    problem_type: str  # "classification" | "regression"
    labels: tuple[str, ...]
    healthy: bool
    problem: str | None  # why the task is unhealthy
    pinned: bool
    resident: bool
    method_config_json: str
    training_json: str
    content_sha256: str

    @property
    def method_config(self) -> dict[str, Any]:
        """The method options as a dict (``{}`` when absent or unreadable: a listing must not fail on one field)."""
        return _json_object(self.method_config_json)

    @property
    def training(self) -> dict[str, Any]:
        """The training configuration the patch was trained with, as a dict (``{}`` when absent or unreadable)."""
        return _json_object(self.training_json)


def _json_object(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
