"""Typed Python client of the taskpatch gRPC service.

Methods take and return plain Python values and the frozen dataclasses of :mod:`client.types`; protobuf and grpc
stay inside this module and :mod:`client.convert`. Every ``grpc.RpcError`` is translated in one place
(:func:`_rpc_errors`) into :class:`client.errors.TaskPatchError`.

Deadlines: ``timeout_s`` bounds unary calls and patch import/export. It does not bound :meth:`add_task` or
:meth:`watch_job`, whose streams last as long as the training job (possibly hours); a caller that wants to stop
following a job simply stops iterating, which cancels the stream but not the job.

The module imports neither torch nor the server, and loads the ``tasks`` package (numpy, scipy, scikit-learn) only
when a GLUE task is added, so ``client tasks`` starts fast on a laptop.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from client import convert
from client.errors import TaskPatchError, error_from_rpc
from client.types import Job, JobEvent, PredictResult, TaskInfo
from protos import taskpatch_pb2 as pb
from protos import taskpatch_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from tasks.types import Example

DEFAULT_TARGET = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # patches and example chunks are far smaller; this only bounds a bad peer
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]

T = TypeVar("T")
M = TypeVar("M")


class _RequestPump:
    """Feeds a client-streaming call and remembers why the request iterator failed.

    grpc consumes request iterators on its own thread; when one raises (a bad example in a user's generator, a
    read error), grpc only logs it and cancels the call, so the caller would see a bare CANCELLED. The pump catches
    the exception, cancels the call itself, and :func:`_rpc_errors` re-raises the original error instead.
    """

    def __init__(self, requests: Iterable[Any]) -> None:
        self._requests = requests
        self._call: grpc.Future | None = None
        self._attached = threading.Event()
        self.error: BaseException | None = None

    def attach(self, call: grpc.Future) -> None:
        self._call = call
        self._attached.set()

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._requests
        except Exception as err:
            self.error = err
            # The stub returns the call object immediately; waiting covers an error on the very first request.
            if self._attached.wait(timeout=10.0) and self._call is not None:
                self._call.cancel()


@contextlib.contextmanager
def _rpc_errors(pump: _RequestPump | None = None) -> Iterator[None]:
    """The one place where grpc errors become TaskPatchError (or the upload's own error, see _RequestPump)."""
    try:
        yield
    except (grpc.RpcError, grpc.FutureCancelledError) as err:
        if pump is not None and pump.error is not None:
            raise pump.error from None
        raise error_from_rpc(err) from None


class TaskPatchClient:
    """Connection to one taskpatch server; use as a context manager, or call :meth:`close`.

    ``token`` is sent as ``authorization: Bearer <token>`` metadata on every call. ``tls_ca`` (a PEM file) switches
    to a TLS channel that trusts that CA; without it the channel is plaintext (local or trusted networks only).
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls_ca: Path | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        if tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
            self._channel = grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._stub = pb_grpc.TaskPatchStub(self._channel)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TaskPatchClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- training -------------------------------------------------------------------------------------------------

    def add_task(
        self,
        name: str,
        train: Iterable[Example],
        dev: Iterable[Example],
        *,
        problem_type: str,
        labels: Sequence[str] = (),
        metrics: Sequence[str] = (),
        method: str = "bitfit",
        method_config: dict[str, Any] | None = None,
        learning_rate: float | None = None,
        head_learning_rate: float | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        data_fraction: float | None = None,
        time_budget_s: float | None = None,
        seed: int | None = None,
        max_seq_length: int | None = None,
        early_stopping_patience: int | None = None,
        warmup_ratio: float | None = None,
        weight_decay: float | None = None,
        evals_per_epoch: int | None = None,
        replace: bool = False,
        detach: bool = False,
        chunk_size: int = convert.DEFAULT_CHUNK_SIZE,
    ) -> Iterator[JobEvent]:
        """Upload a task and train a patch for it; yields the job's events until it ends (or, with ``detach``,
        until it is queued).

        ``train``/``dev`` may be lazy iterables: they are streamed in chunks of ``chunk_size`` while being read.
        Options left as ``None`` take the method's defaults on the server. The spec is validated here, at call
        time; the upload starts when iteration starts. Stopping iteration early drops the stream, not the job.
        """
        training = {
            "learning_rate": learning_rate,
            "head_learning_rate": head_learning_rate,
            "epochs": epochs,
            "batch_size": batch_size,
            "data_fraction": data_fraction,
            "time_budget_s": time_budget_s,
            "seed": seed,
            "max_seq_length": max_seq_length,
            "early_stopping_patience": early_stopping_patience,
            "warmup_ratio": warmup_ratio,
            "weight_decay": weight_decay,
            "evals_per_epoch": evals_per_epoch,
        }
        spec = convert.task_spec_to_pb(
            name,
            problem_type=problem_type,
            labels=labels,
            metrics=metrics,
            method=method,
            method_config=method_config,
            training=training,
            replace=replace,
            detach=detach,
        )
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        pump = _RequestPump(convert.add_task_requests(spec, train, dev, chunk_size))
        return self._stream(
            lambda: self._stub.AddTask(iter(pump), metadata=self._metadata), convert.job_event_from_pb, pump
        )

    def add_glue_task(
        self,
        name: str,
        data_dir: Path | str | None = None,
        *,
        task_name: str | None = None,
        train_limit: int | None = None,
        dev_limit: int | None = None,
        **options: Any,
    ) -> Iterator[JobEvent]:
        """Load GLUE task ``name`` (from ``data_dir``, else the Hugging Face hub) and :meth:`add_task` it.

        The environment is not consulted (pass ``os.environ.get("GLUE_DIR")`` yourself); ``task_name`` registers
        it under another name, e.g. to train the same task with two methods; ``train_limit``/``dev_limit`` keep
        the first N examples, for quick demos. ``options`` are :meth:`add_task`'s keyword options.
        """
        from tasks.glue import load_glue  # lazy: the tasks package pulls in numpy, scipy and scikit-learn

        data = load_glue(name, data_dir, glue_dir_env=None)
        return self.add_task(
            task_name or data.name,
            head(data.train, train_limit),
            head(data.dev, dev_limit),
            problem_type=data.problem_type,
            labels=data.labels,
            metrics=data.metrics,
            **options,
        )

    def list_jobs(self) -> list[Job]:
        response = self._unary(self._stub.ListJobs, pb.ListJobsRequest())
        return [convert.job_from_pb(job) for job in response.jobs]

    def get_job(self, job_id: str) -> Job:
        return convert.job_from_pb(self._unary(self._stub.GetJob, pb.GetJobRequest(job_id=job_id)))

    def watch_job(self, job_id: str) -> Iterator[JobEvent]:
        """Follow a job's events until it ends (a finished job yields its final event)."""
        request = pb.WatchJobRequest(job_id=job_id)
        return self._stream(lambda: self._stub.WatchJob(request, metadata=self._metadata), convert.job_event_from_pb)

    def cancel_job(self, job_id: str) -> Job:
        return convert.job_from_pb(self._unary(self._stub.CancelJob, pb.CancelJobRequest(job_id=job_id)))

    # --- serving --------------------------------------------------------------------------------------------------

    def predict(self, task: str, inputs: Sequence[str | tuple[str, str | None]]) -> PredictResult:
        """Predict ``inputs`` (texts, or ``(text, text_pair)`` pairs) with the task's current patch."""
        if isinstance(inputs, str):
            raise TypeError("inputs is a sequence of inputs; wrap a single text in a list")
        request = pb.PredictRequest(task=task, inputs=[convert.input_to_pb(item) for item in inputs])
        return convert.predict_result_from_pb(self._unary(self._stub.Predict, request))

    # --- registry -------------------------------------------------------------------------------------------------

    def list_tasks(self) -> list[TaskInfo]:
        response = self._unary(self._stub.ListTasks, pb.ListTasksRequest())
        return [convert.task_info_from_pb(task) for task in response.tasks]

    def get_task(self, name: str) -> TaskInfo:
        return convert.task_info_from_pb(self._unary(self._stub.GetTask, pb.GetTaskRequest(name=name)))

    def delete_task(self, name: str) -> None:
        self._unary(self._stub.DeleteTask, pb.DeleteTaskRequest(name=name))

    def rollback_task(self, name: str, version: int = 0) -> TaskInfo:
        """Point the task at ``version`` (0: the previous one); returns the task as it now is."""
        request = pb.RollbackTaskRequest(name=name, version=version)
        return convert.task_info_from_pb(self._unary(self._stub.RollbackTask, request))

    def pin_task(self, name: str, pinned: bool = True) -> TaskInfo:
        """Keep the task's patch resident (never evicted), or release it with ``pinned=False``."""
        request = pb.PinTaskRequest(name=name, pinned=pinned)
        return convert.task_info_from_pb(self._unary(self._stub.PinTask, request))

    def export_task(self, name: str, path: Path | str, version: int = 0) -> int:
        """Download the task's patch file (``version`` 0: current) to ``path``; returns its size in bytes.

        Written to a temporary file beside ``path`` and renamed into place, so a failed or interrupted download
        never leaves a truncated file that looks like a patch.
        """
        path = Path(path)
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        request = pb.ExportTaskRequest(name=name, version=version)
        size = 0
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                with _rpc_errors():
                    for chunk in self._stub.ExportTask(request, timeout=self.timeout_s, metadata=self._metadata):
                        handle.write(chunk.data)
                        size += len(chunk.data)
                if size == 0:
                    raise TaskPatchError("DATA_LOSS", f"the server sent an empty patch file for task {name!r}")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)
        return size

    def import_task(self, path: Path | str, name: str | None = None) -> TaskInfo:
        """Upload a patch file (from :meth:`export_task`) as a task, under ``name`` or the name stored in it."""
        with Path(path).open("rb") as handle:  # opened here so a missing file fails before any call is made
            pump = _RequestPump(convert.import_requests(name, handle))
            with _rpc_errors(pump):
                future = self._stub.ImportTask.future(iter(pump), timeout=self.timeout_s, metadata=self._metadata)
                pump.attach(future)
                return convert.task_info_from_pb(future.result())

    # --- plumbing -------------------------------------------------------------------------------------------------

    def _unary(self, method: Callable[..., M], request: Any) -> M:
        with _rpc_errors():
            return method(request, timeout=self.timeout_s, metadata=self._metadata)

    def _stream(
        self, start: Callable[[], Any], convert_fn: Callable[[Any], T], pump: _RequestPump | None = None
    ) -> Iterator[T]:
        """Iterate a server stream, translating errors; closing the iterator early cancels the call."""
        call = None
        try:
            with _rpc_errors(pump):
                call = start()
                if pump is not None:
                    pump.attach(call)
                for message in call:
                    yield convert_fn(message)
        finally:
            if call is not None:
                call.cancel()  # no-op once the stream has ended; frees the server when the caller stops early


def head(examples: Sequence[T], limit: int | None) -> Sequence[T]:
    """The first ``limit`` items (all when ``limit`` is None)."""
    if limit is not None and limit < 0:
        raise ValueError(f"a limit must be at least 0, got {limit}")
    return examples if limit is None else examples[:limit]


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; best effort, since some platforms and file systems cannot open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
