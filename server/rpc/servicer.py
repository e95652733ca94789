"""TaskPatch servicer: each RPC converts its request, makes one core call, converts the result."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc

from protos import taskpatch_pb2 as pb
from protos import taskpatch_pb2_grpc as pb_grpc
from server.engine import ServingEngine
from server.errors import InvalidArgument, ResourceExhausted
from server.metrics import Metrics
from server.names import validate_task_name
from server.patch_check import import_patch
from server.rpc import convert
from server.rpc.status import rpc_method
from server.scheduler import TrainingScheduler
from server.store import PatchStore

EXPORT_CHUNK_BYTES = 1024 * 1024


class TaskPatchServicer(pb_grpc.TaskPatchServicer):
    def __init__(
        self,
        store: PatchStore,
        engine: ServingEngine,
        scheduler: TrainingScheduler,
        metrics: Metrics,
        upload_limits: convert.UploadLimits,
        max_inputs_per_request: int,
        max_text_chars: int,
        max_import_bytes: int,
    ) -> None:
        self.store = store
        self.engine = engine
        self.scheduler = scheduler
        self.metrics = metrics
        self.upload_limits = upload_limits
        self.max_inputs_per_request = max_inputs_per_request
        self.max_text_chars = max_text_chars
        self.max_import_bytes = max_import_bytes

    # ---- training ------------------------------------------------------------------------------------------------
    @rpc_method("AddTask", streaming_response=True)
    def AddTask(
        self, request_iterator: Iterator[pb.AddTaskRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.JobEvent]:
        upload = convert.read_upload(request_iterator, self.upload_limits)
        job = self.scheduler.submit(upload.name, upload.config, upload.data, replace=upload.replace)
        for event in self.scheduler.events(job.id, alive=context.is_active):
            yield convert.job_event_to_pb(event)
            if upload.detach and event.kind == "queued":
                return

    @rpc_method("ListJobs")
    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        jobs = self.scheduler.list()
        return pb.ListJobsResponse(jobs=[convert.job_to_pb(j, self.scheduler.queue_position(j)) for j in jobs])

    @rpc_method("GetJob")
    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        job = self.scheduler.get(request.job_id)
        return convert.job_to_pb(job, self.scheduler.queue_position(job))

    @rpc_method("WatchJob", streaming_response=True)
    def WatchJob(self, request: pb.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        for event in self.scheduler.events(request.job_id, alive=context.is_active):
            yield convert.job_event_to_pb(event)

    @rpc_method("CancelJob")
    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        job = self.scheduler.cancel(request.job_id)
        return convert.job_to_pb(job, self.scheduler.queue_position(job))

    # ---- serving -------------------------------------------------------------------------------------------------
    @rpc_method("Predict")
    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        inputs = convert.inputs_from_request(request, self.max_inputs_per_request, self.max_text_chars)
        output = self.engine.predict(request.task, inputs)
        return convert.predict_output_to_pb(output)

    # ---- task registry -------------------------------------------------------------------------------------------
    def _info(self, name: str) -> pb.TaskInfo:
        record = self.store.get(name)
        return convert.task_info_to_pb(
            record, pinned=self.engine.is_pinned(name), resident=self.engine.is_resident(name)
        )

    @rpc_method("ListTasks")
    def ListTasks(self, request: pb.ListTasksRequest, context: grpc.ServicerContext) -> pb.ListTasksResponse:
        return pb.ListTasksResponse(
            tasks=[
                convert.task_info_to_pb(
                    r, pinned=self.engine.is_pinned(r.name), resident=self.engine.is_resident(r.name)
                )
                for r in self.store.list()
            ]
        )

    @rpc_method("GetTask")
    def GetTask(self, request: pb.GetTaskRequest, context: grpc.ServicerContext) -> pb.TaskInfo:
        return self._info(validate_task_name(request.name))

    @rpc_method("DeleteTask")
    def DeleteTask(self, request: pb.DeleteTaskRequest, context: grpc.ServicerContext) -> pb.DeleteTaskResponse:
        self.store.delete(validate_task_name(request.name))
        return pb.DeleteTaskResponse()

    @rpc_method("RollbackTask")
    def RollbackTask(self, request: pb.RollbackTaskRequest, context: grpc.ServicerContext) -> pb.TaskInfo:
        if request.version < 0:
            raise InvalidArgument("version must be positive (0: the previous version)")
        self.store.rollback(validate_task_name(request.name), request.version or None)
        return self._info(request.name)

    @rpc_method("PinTask")
    def PinTask(self, request: pb.PinTaskRequest, context: grpc.ServicerContext) -> pb.TaskInfo:
        self.engine.pin(validate_task_name(request.name), request.pinned)
        return self._info(request.name)

    # ---- portability ---------------------------------------------------------------------------------------------
    @rpc_method("ExportTask", streaming_response=True)
    def ExportTask(self, request: pb.ExportTaskRequest, context: grpc.ServicerContext) -> Iterator[pb.PatchFileChunk]:
        if request.version < 0:
            raise InvalidArgument("version must be positive (0: the current version)")
        # load() verifies the content hash first: a damaged patch is never exported.
        _, version = self.store.load(validate_task_name(request.name), request.version or None)
        path = version.path
        with path.open("rb") as f:
            while chunk := f.read(EXPORT_CHUNK_BYTES):
                yield pb.PatchFileChunk(data=chunk)

    @rpc_method("ImportTask")
    def ImportTask(
        self, request_iterator: Iterator[pb.ImportTaskRequest], context: grpc.ServicerContext
    ) -> pb.TaskInfo:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "name":
            raise InvalidArgument("the first ImportTask message must carry the task name ('' for the stored one)")
        name = validate_task_name(first.name) if first.name else None
        # Staged where the store removes ".tmp-" leftovers at open, so a crash mid-upload leaves nothing behind.
        fd, temp = tempfile.mkstemp(prefix=".tmp-import-", suffix=".safetensors", dir=self.store.root / "tasks")
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                for request in request_iterator:
                    if request.WhichOneof("item") != "data":
                        raise InvalidArgument("after the name, ImportTask messages must carry file data")
                    size += len(request.data)
                    if size > self.max_import_bytes:
                        raise ResourceExhausted(f"patch file exceeds {self.max_import_bytes} bytes")
                    f.write(request.data)
            if size == 0:
                raise InvalidArgument("no patch data was sent")
            version = import_patch(self.store, self.engine.model.backbone, Path(temp), name)
        finally:
            Path(temp).unlink(missing_ok=True)
        return self._info(version.name)
