"""Training scheduler: a bounded FIFO of training jobs, one worker, progress events, a journal on disk.

The scheduler trains with the shared ``PatchedModel`` and publishes finished patches to the store; it shares nothing
else with the serving engine (which picks new versions up through the store). Job records are journaled as JSON so
that after a crash or restart a job that was queued or running shows as INTERRUPTED, never as done.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from server.backbone import Backbone
from server.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ShuttingDown,
    TaskPatchError,
)
from server.metrics import Metrics
from server.model import PatchedModel
from server.names import validate_task_name
from server.patches.registry import get_method
from server.store import PatchStore
from server.store.atomic import TMP_PREFIX, atomic_write_bytes
from server.training.config import TrainConfig
from server.training.trainer import TrainEvent, train
from tasks.errors import DataError
from tasks.types import TaskData

log = logging.getLogger(__name__)

MAX_JOURNALED_JOBS = 1000


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


_EVENT_KIND = {JobState.SUCCEEDED: "done", JobState.CANCELLED: "cancelled"}  # every other end state: "failed"


@dataclass(frozen=True)
class JobEvent:
    """One event of a job's life; ``kind``: queued, started, progress, evaluation, done, failed, cancelled."""

    job_id: str
    task: str
    state: JobState
    kind: str
    queued_position: int = 0
    progress: TrainEvent | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    done: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


@dataclass
class Job:
    id: str
    task: str
    method: str
    config: TrainConfig
    replace: bool
    state: JobState = JobState.QUEUED
    created: float = field(default_factory=time.time)
    started: float = 0.0
    finished: float = 0.0
    version: int = 0
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    progress: TrainEvent | None = None
    events: list[JobEvent] = field(default_factory=list)
    done: dict[str, Any] = field(default_factory=dict)  # the "done" payload of a succeeded job
    data: TaskData | None = None  # dropped once the job ends: uploads can be large
    cancel_requested: bool = False

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "method": self.method,
            "state": self.state.value,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "version": self.version,
            "error": self.error,
            "metrics": self.metrics,
            "config": self.config.to_dict(),
            "replace": self.replace,
            "done": self.done,
        }


@dataclass(frozen=True)
class SchedulerSettings:
    queue_size: int = 16
    allow_full: bool = False
    # Intra-op threads of the training thread. With torch's OpenMP backend the count is per calling thread, so
    # training can be held to part of the cores while the serving thread keeps the rest.
    threads: int = 0


class TrainingScheduler:
    def __init__(
        self,
        model: PatchedModel,
        store: PatchStore,
        journal_dir: Path,
        settings: SchedulerSettings,
        metrics: Metrics,
        before_step: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.backbone: Backbone = model.backbone
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.before_step = before_step
        self.journal_dir = journal_dir
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._recover_journal()
        self._update_gauges()

    # ---- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="taskpatch-trainer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking jobs; the running job stops at its next step and, like every queued job, ends INTERRUPTED."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._cond:
            while self._queue:
                self._finish(self._queue.popleft(), JobState.INTERRUPTED, "server shut down before the job started")

    # ---- API -----------------------------------------------------------------------------------------------------
    def submit(self, task: str, config: TrainConfig, data: TaskData, *, replace: bool = False) -> Job:
        validate_task_name(task)
        method = get_method(config.method)
        if method.name == "full" and not self.settings.allow_full:
            raise FailedPrecondition("full fine-tuning is disabled on this server (start it with --allow-full)")
        config = config.resolved()
        if not data.train:
            raise InvalidArgument("no training examples were uploaded")
        if not data.dev:
            raise InvalidArgument("no dev examples were uploaded: they are needed for evaluation and keep-best")
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down; retry on another instance or after restart")
            if not replace and self.store.exists(task):
                raise AlreadyExists(f"task {task!r} already exists; pass replace to train a new version")
            busy = [j for j in self._jobs.values() if j.task == task and not j.state.terminal]
            if busy:
                raise AlreadyExists(f"task {task!r} already has job {busy[0].id} {busy[0].state.value}")
            if len(self._queue) >= self.settings.queue_size:
                raise ResourceExhausted(f"the training queue is full ({self.settings.queue_size} jobs); retry later")
            job = Job(uuid.uuid4().hex[:12], task, method.name, config, replace, data=data)
            self._jobs[job.id] = job
            self._queue.append(job)
            self._emit(job, JobEvent(job.id, task, job.state, "queued", queued_position=len(self._queue) - 1))
            self._journal(job)
            self._update_gauges()
            self._cond.notify_all()
        return job

    def get(self, job_id: str) -> Job:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            return job

    def list(self) -> list[Job]:
        with self._cond:
            return sorted(self._jobs.values(), key=lambda j: j.created)

    def queue_position(self, job: Job) -> int:
        with self._cond:
            return self._queue.index(job) if job in self._queue else 0

    def cancel(self, job_id: str) -> Job:
        with self._cond:
            job = self.get(job_id)
            if job.state.terminal:
                return job
            if job.state == JobState.QUEUED:
                self._queue.remove(job)
                self._finish(job, JobState.CANCELLED, "cancelled before it started")
            else:
                job.cancel_requested = True  # the trainer checks between steps
            return job

    def events(self, job_id: str, alive: Callable[[], bool] = lambda: True) -> Iterator[JobEvent]:
        """Every event of the job so far, then new ones as they happen, until the job ends or ``alive()`` turns
        False (a watcher that went away; the job itself carries on)."""
        job = self.get(job_id)
        seen = 0
        while True:
            with self._cond:
                self._cond.wait_for(_has_news(job, seen), timeout=1.0)
                fresh = job.events[seen:]
                seen = len(job.events)
                ended = job.state.terminal
            yield from fresh
            if ended or not alive():
                return

    # ---- worker --------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        threads = self.settings.threads or max(1, (os.cpu_count() or 2) // 2)
        torch.set_num_threads(threads)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if self._stopping:
                    return
                job = self._queue.popleft()
                job.state, job.started = JobState.RUNNING, time.time()
                self._emit(job, JobEvent(job.id, job.task, job.state, "started"))
                self._journal(job)
                self._update_gauges()
            self._execute(job)

    def _execute(self, job: Job) -> None:
        assert job.data is not None
        try:
            result = train(
                self.model,
                job.data,
                job.config,
                on_event=lambda event: self._on_train_event(job, event),
                should_stop=lambda: job.cancel_requested or self._stopping,
                before_step=self.before_step,
            )
            training = {
                **result.config.to_dict(),
                "task_name": job.task,
                "job_id": job.id,
                "steps": result.steps,
                "examples_seen": result.examples_seen,
                "train_examples": result.train_examples,
                "wall_time_s": round(result.wall_time_s, 3),
                "stop_reason": result.stop_reason,
                "history": result.history,
                "trainable_parameters": result.trainable_parameters,
            }
            meta = result.patch.meta(self.backbone, training, result.metrics)
            if self._stopping:
                raise Cancelled("server shut down before the patch was published")
            version = self.store.publish(job.task, result.patch.tensors, meta)
        except Cancelled as exc:
            state = JobState.INTERRUPTED if self._stopping and not job.cancel_requested else JobState.CANCELLED
            with self._cond:
                self._finish(job, state, str(exc))
            return
        except (TaskPatchError, DataError) as exc:
            with self._cond:
                self._finish(job, JobState.FAILED, str(exc))
            return
        except Exception as exc:
            log.exception("training job %s failed", job.id)
            with self._cond:
                self._finish(job, JobState.FAILED, f"internal error: {exc.__class__.__name__}: {exc}")
            return
        with self._cond:
            job.version = version.version
            job.metrics = dict(result.metrics)
            done = {
                "version": version.version,
                "patch_bytes": version.bytes,
                "metrics": dict(result.metrics),
                "wall_time_s": result.wall_time_s,
                "trainable_parameters": result.trainable_parameters,
                "stop_reason": result.stop_reason,
                "train_examples": result.train_examples,
            }
            self._finish(job, JobState.SUCCEEDED, "", done=done)
            self.metrics.training_examples.labels(method=job.method).inc(result.examples_seen)

    def _on_train_event(self, job: Job, event: TrainEvent) -> None:
        with self._cond:
            if event.kind == "progress":
                job.progress = event
                self.metrics.training_examples_per_second.set(event.examples_per_s)
                self.metrics.training_loss.set(event.loss)
                self._emit(job, JobEvent(job.id, job.task, job.state, "progress", progress=event))
            elif event.kind == "evaluation":
                self._emit(
                    job, JobEvent(job.id, job.task, job.state, "evaluation", progress=event, metrics=event.metrics)
                )

    # ---- helpers (call with the lock held) -----------------------------------------------------------------------
    def _finish(self, job: Job, state: JobState, reason: str, done: dict[str, Any] | None = None) -> None:
        job.state, job.finished, job.error, job.data = state, time.time(), reason, None
        job.done = done or {}
        kind = _EVENT_KIND.get(state, "failed")
        self._emit(job, JobEvent(job.id, job.task, state, kind, done=done or {}, reason=reason, metrics=job.metrics))
        self._journal(job)
        self.metrics.training_jobs_finished.labels(state=state.value).inc()
        self._update_gauges()

    def _emit(self, job: Job, event: JobEvent) -> None:
        job.events.append(event)
        self._cond.notify_all()

    def _journal(self, job: Job) -> None:
        path = self.journal_dir / f"{job.id}.json"
        try:
            atomic_write_bytes(path, json.dumps(job.record(), sort_keys=True).encode())
        except OSError:
            log.exception("could not journal job %s", job.id)

    def _recover_journal(self) -> None:
        for leftover in self.journal_dir.glob(f"{TMP_PREFIX}*"):  # a journal write cut short by a crash
            leftover.unlink(missing_ok=True)
        records = []
        for path in self.journal_dir.glob("*.json"):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                log.warning("ignoring unreadable job record %s", path)
        records.sort(key=lambda r: r.get("created", 0))
        for record in records[-MAX_JOURNALED_JOBS:]:
            try:
                config = TrainConfig(**record["config"])
                job = Job(
                    id=str(record["id"]),
                    task=str(record["task"]),
                    method=str(record["method"]),
                    config=config,
                    replace=bool(record.get("replace")),
                    state=JobState(record["state"]),
                    created=float(record["created"]),
                    started=float(record.get("started", 0)),
                    finished=float(record.get("finished", 0)),
                    version=int(record.get("version", 0)),
                    error=str(record.get("error", "")),
                    metrics=dict(record.get("metrics", {})),
                    done=dict(record.get("done") or {}),
                )
            except (KeyError, TypeError, ValueError):
                log.warning("ignoring malformed job record %s", record.get("id"))
                continue
            if not job.state.terminal:
                job.state, job.finished = JobState.INTERRUPTED, time.time()
                job.error = "the server stopped while this job was queued or running"
                self._journal(job)
            job.events.append(
                JobEvent(
                    job.id,
                    job.task,
                    job.state,
                    _EVENT_KIND.get(job.state, "failed"),
                    done=job.done,
                    reason=job.error,
                    metrics=job.metrics,
                )
            )
            self._jobs[job.id] = job
        for path in sorted(self.journal_dir.glob("*.json"))[: max(0, len(records) - MAX_JOURNALED_JOBS)]:
            path.unlink(missing_ok=True)

    def _update_gauges(self) -> None:
        counts = {state: 0 for state in JobState}
        for job in self._jobs.values():
            counts[job.state] += 1
        for state, count in counts.items():
            self.metrics.training_jobs.labels(state=state.value).set(count)


def _has_news(job: Job, seen: int) -> Callable[[], bool]:
    return lambda: len(job.events) > seen or job.state.terminal
