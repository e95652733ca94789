"""A fake taskpatch peer for client unit tests: the real generated servicer base, a tiny in-memory implementation.

It is a test double of the network peer, not of product code: no model, no training, just the protocol (message
order, status codes, metadata), recorded so tests can check what the client actually sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from protos import taskpatch_pb2 as pb
from protos import taskpatch_pb2_grpc as pb_grpc

PATCH_BYTES = bytes(range(256)) * 40  # 10 KiB, sent in three chunks


class FakeTaskPatch(pb_grpc.TaskPatchServicer):
    def __init__(self) -> None:
        self.target = ""
        self.required_token: str | None = None
        self.fail_jobs = False
        self.metadata: list[dict[str, str]] = []  # per call, in order
        self.uploads: list[list[pb.AddTaskRequest]] = []
        self.predict_requests: list[pb.PredictRequest] = []
        self.imports: list[tuple[str, list[bytes]]] = []  # (name, data chunks)
        self.tasks: dict[str, pb.TaskInfo] = {}
        self.jobs: dict[str, pb.Job] = {}
        self.stream_cancelled = threading.Event()
        self._lock = threading.Lock()

    # --- helpers ---

    def add_fake_task(
        self, name: str, problem_type: pb.ProblemType = pb.CLASSIFICATION, labels: tuple[str, ...] = ("neg", "pos")
    ) -> pb.TaskInfo:
        info = pb.TaskInfo(
            name=name,
            method="bitfit",
            version=1,
            versions=[1],
            metrics={"accuracy": 0.875},
            patch_bytes=len(PATCH_BYTES),
            backbone_id="tiny-bert",
            backbone_fingerprint="f" * 16,
            created="2024-01-01T00:00:00Z",
            problem_type=problem_type,
            labels=list(labels) if problem_type == pb.CLASSIFICATION else [],
            healthy=True,
            method_config_json="{}",
            training_json='{"epochs": 1}',
            content_sha256="a" * 64,
        )
        self.tasks[name] = info
        return info

    def _check(self, context: grpc.ServicerContext) -> None:
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        with self._lock:
            self.metadata.append(metadata)
        if self.required_token is not None and metadata.get("authorization") != f"Bearer {self.required_token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

    def _task(self, name: str, context: grpc.ServicerContext) -> pb.TaskInfo:
        if name not in self.tasks:
            context.abort(grpc.StatusCode.NOT_FOUND, f"task {name!r} not found")
        return self.tasks[name]

    def _job(self, job_id: str, context: grpc.ServicerContext) -> pb.Job:
        if job_id not in self.jobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id!r} not found")
        return self.jobs[job_id]

    # --- training ---

    def AddTask(
        self, request_iterator: Iterator[pb.AddTaskRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.JobEvent]:
        self._check(context)
        requests = list(request_iterator)
        self.uploads.append(requests)
        if not requests or requests[0].WhichOneof("item") != "spec":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be the task spec")
        if requests[-1].WhichOneof("item") != "end":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "upload ended without EndOfUpload")
        spec = requests[0].spec
        if spec.name in self.tasks and not spec.replace:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"task {spec.name!r} already exists")
        train = sum(
            len(r.chunk.examples) for r in requests if r.WhichOneof("item") == "chunk" and r.chunk.split == pb.TRAIN
        )
        job_id = f"job-{len(self.jobs) + 1}"
        job = pb.Job(id=job_id, task=spec.name, method=spec.method, state=pb.QUEUED, created_unix=1.7e9)
        self.jobs[job_id] = job
        yield pb.JobEvent(job_id=job_id, task=spec.name, state=pb.QUEUED, queued_position=0)
        if spec.detach:
            return
        yield from self._run(job, train, context)

    def _run(self, job: pb.Job, train: int, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        base: dict[str, Any] = {"job_id": job.id, "task": job.task}
        job.state = pb.RUNNING
        yield pb.JobEvent(state=pb.RUNNING, started=True, **base)
        for step in (1, 2):
            progress = pb.Progress(
                epoch=1, step=step, total_steps=2, loss=1.0 / step, examples_per_s=100.0, eta_s=2 - step
            )
            yield pb.JobEvent(state=pb.RUNNING, progress=progress, **base)
        yield pb.JobEvent(
            state=pb.RUNNING, evaluation=pb.Evaluation(epoch=1, step=2, metrics={"accuracy": 0.75}), **base
        )
        if self.fail_jobs:
            job.state, job.error = pb.FAILED, "out of patience"
            yield pb.JobEvent(state=pb.FAILED, failed="out of patience", **base)
            return
        job.state, job.version = pb.SUCCEEDED, 1
        self.add_fake_task(job.task)
        done = pb.Done(
            version=1,
            patch_bytes=len(PATCH_BYTES),
            metrics={"accuracy": 0.75},
            wall_time_s=3.5,
            trainable_parameters=12345,
            stop_reason="completed",
            train_examples=train,
        )
        yield pb.JobEvent(state=pb.SUCCEEDED, done=done, **base)

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        self._check(context)
        return pb.ListJobsResponse(jobs=list(self.jobs.values()))

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        self._check(context)
        return self._job(request.job_id, context)

    def WatchJob(self, request: pb.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        self._check(context)
        job = self._job(request.job_id, context)
        if request.job_id == "endless":
            context.add_callback(self.stream_cancelled.set)
            while context.is_active():
                yield pb.JobEvent(job_id=job.id, task=job.task, state=pb.RUNNING, progress=pb.Progress(step=1))
                time.sleep(0.01)
            return
        yield from self._run(job, 10, context)

    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        self._check(context)
        job = self._job(request.job_id, context)
        job.state = pb.CANCELLED
        return job

    # --- serving ---

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        self._check(context)
        task = self._task(request.task, context)
        self.predict_requests.append(request)
        predictions = []
        for item in request.inputs:
            if task.problem_type == pb.REGRESSION:
                predictions.append(pb.Prediction(value=float(len(item.text))))
            else:
                # deterministic: pair inputs -> the first label, single texts -> the second
                best = 0 if item.HasField("text_pair") else 1
                probabilities = [0.25, 0.75] if best == 1 else [0.75, 0.25]
                predictions.append(pb.Prediction(label=task.labels[best], probabilities=probabilities))
        return pb.PredictResponse(
            task=task.name,
            version=task.version,
            problem_type=task.problem_type,
            labels=task.labels,
            predictions=predictions,
        )

    # --- registry ---

    def ListTasks(self, request: pb.ListTasksRequest, context: grpc.ServicerContext) -> pb.ListTasksResponse:
        self._check(context)
        return pb.ListTasksResponse(tasks=list(self.tasks.values()))

    def GetTask(self, request: pb.GetTaskRequest, context: grpc.ServicerContext) -> pb.TaskInfo:
        self._check(context)
        return self._task(request.name, context)

    def DeleteTask(self, request: pb.DeleteTaskRequest, context: grpc.ServicerContext) -> pb.DeleteTaskResponse:
        self._check(context)
        self._task(request.name, context)
        del self.tasks[request.name]
        return pb.DeleteTaskResponse()

    def RollbackTask(self, request: pb.RollbackTaskRequest, context: grpc.ServicerContext) -> pb.TaskInfo:
        self._check(context)
        task = self._task(request.name, context)
        target = request.version or task.version - 1
        if target not in task.versions:
            context.abort(grpc.StatusCode.NOT_FOUND, f"task {request.name!r} has no version {target}")
        task.version = target
        return task

    def PinTask(self, request: pb.PinTaskRequest, context: grpc.ServicerContext) -> pb.TaskInfo:
        self._check(context)
        task = self._task(request.name, context)
        task.pinned = task.resident = request.pinned
        return task

    def ExportTask(self, request: pb.ExportTaskRequest, context: grpc.ServicerContext) -> Iterator[pb.PatchFileChunk]:
        self._check(context)
        self._task(request.name, context)
        third = len(PATCH_BYTES) // 3 + 1
        for start in range(0, len(PATCH_BYTES), third):
            yield pb.PatchFileChunk(data=PATCH_BYTES[start : start + third])
        if request.version == 99:  # a transfer that breaks after data was sent
            context.abort(grpc.StatusCode.INTERNAL, "disk error")

    def ImportTask(
        self, request_iterator: Iterator[pb.ImportTaskRequest], context: grpc.ServicerContext
    ) -> pb.TaskInfo:
        self._check(context)
        first = next(request_iterator)
        if first.WhichOneof("item") != "name":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be the name")
        chunks = [request.data for request in request_iterator]
        self.imports.append((first.name, chunks))
        info = self.add_fake_task(first.name or "stored-name")
        info.patch_bytes = sum(map(len, chunks))
        return info


def start_fake_server() -> tuple[grpc.Server, FakeTaskPatch]:
    """A started server on a free port; ``servicer.target`` is its address."""
    servicer = FakeTaskPatch()
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_TaskPatchServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.target = f"127.0.0.1:{port}"
    return server, servicer
