"""Wiring: build every component from the settings, start and stop them in order.

``create_server(settings)`` returns a started server and its bound port (tests bind port 0); ``serve()`` adds
signal handling and blocks. Components meet only through the patch store: the scheduler publishes, the engine
reads (and hears about changes through the store's subscription).
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from protos import taskpatch_pb2, taskpatch_pb2_grpc
from server.backbone import load_backbone
from server.engine import EngineSettings, ServingEngine
from server.metrics import Metrics
from server.model import PatchedModel
from server.rpc.auth import BearerTokenInterceptor
from server.rpc.convert import UploadLimits
from server.rpc.decode import DecodeErrorInterceptor
from server.rpc.servicer import TaskPatchServicer
from server.scheduler import SchedulerSettings, TrainingScheduler
from server.settings import Settings
from server.store import PatchStore

log = logging.getLogger(__name__)

SERVICE_NAME = taskpatch_pb2.DESCRIPTOR.services_by_name["TaskPatch"].full_name
RPC_THREADS = 32


class TaskPatchServer:
    """Owns every component of one running server."""

    def __init__(self, settings: Settings) -> None:
        settings.validate()
        self.settings = settings
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.metrics = Metrics()
        self.backbone = load_backbone(settings.backbone, device=settings.device, dtype=settings.dtype)
        self.model = PatchedModel(self.backbone)
        self.store = PatchStore(Path(settings.store_dir), self.backbone.fingerprint)
        self.engine = ServingEngine(
            self.model,
            self.store,
            EngineSettings(
                max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_wait_ms,
                max_resident=settings.max_resident,
                max_resident_bytes=settings.max_resident_bytes,
                max_seq_length=settings.max_seq_length,
                pinned=settings.pinned,
            ),
            self.metrics,
        )
        yield_s = settings.train_yield_ms / 1000.0
        self.scheduler = TrainingScheduler(
            self.model,
            self.store,
            Path(settings.store_dir) / "jobs",
            SchedulerSettings(
                queue_size=settings.job_queue_size, allow_full=settings.allow_full, threads=settings.train_threads
            ),
            self.metrics,
            before_step=(lambda: self.engine.wait_idle(yield_s)) if yield_s > 0 else None,
        )
        self.store.subscribe(lambda name: self._update_store_gauges())
        self._update_store_gauges()
        self.metrics.backbone_info.info(
            {
                "backbone_id": self.backbone.backbone_id,
                "fingerprint": self.backbone.fingerprint[:16],
                "device": str(self.backbone.device),
                "dtype": str(self.backbone.dtype).removeprefix("torch."),
                "pooling": self.backbone.pooling,
            }
        )
        self.metrics.backbone_parameters.set(self.backbone.num_parameters)

        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
        token = settings.token()
        requests_counter = self.metrics.rpc_requests
        interceptors: list[grpc.ServerInterceptor] = [
            DecodeErrorInterceptor(
                on_invalid=lambda rpc: requests_counter.labels(rpc=rpc, code="INVALID_ARGUMENT").inc()
            )
        ]
        if token:
            denied = self.metrics.rpc_requests
            interceptors.append(
                BearerTokenInterceptor(
                    token,
                    settings.auth_all,
                    on_denied=lambda rpc: denied.labels(rpc=rpc, code="UNAUTHENTICATED").inc(),
                )
            )
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=RPC_THREADS, thread_name_prefix="taskpatch-rpc"),
            options=options,
            interceptors=interceptors,
        )
        servicer = TaskPatchServicer(
            self.store,
            self.engine,
            self.scheduler,
            self.metrics,
            UploadLimits(settings.max_upload_examples, settings.max_upload_bytes, settings.max_text_chars),
            settings.max_inputs_per_request,
            settings.max_text_chars,
            max_import_bytes=settings.max_message_bytes * 16,
        )
        taskpatch_pb2_grpc.add_TaskPatchServicer_to_server(servicer, self.grpc_server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server
        )
        address = f"{settings.host}:{settings.port}"
        if settings.tls_cert is not None and settings.tls_key is not None:
            credentials = grpc.ssl_server_credentials(
                [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())]
            )
            self.port = self.grpc_server.add_secure_port(address, credentials)
        else:
            self.port = self.grpc_server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        self.metrics_port = -1
        self._metrics_http: Any = None
        self._stopped = threading.Event()

    def _update_store_gauges(self) -> None:
        records = self.store.list()
        self.metrics.tasks_stored.set(len(records))
        self.metrics.tasks_unhealthy.set(sum(1 for r in records if not r.healthy))
        self.metrics.store_bytes.set(self.store.total_bytes())

    def start(self) -> None:
        if self.settings.metrics_port >= 0:
            server, _thread = start_http_server(
                self.settings.metrics_port, addr=self.settings.metrics_host, registry=self.metrics.registry
            )
            self._metrics_http = server
            self.metrics_port = server.server_port
        self.engine.start()
        self.scheduler.start()
        self.grpc_server.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("taskpatch serving on %s:%d (metrics port %d)", self.settings.host, self.port, self.metrics_port)

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful: refuse new RPCs, let in-flight ones finish, interrupt training, release the store."""
        if self._stopped.is_set():
            return
        grace = self.settings.grace_s if grace_s is None else grace_s
        self.health.enter_graceful_shutdown()
        self.scheduler.stop(timeout_s=grace)  # the running job stops at its next step: INTERRUPTED, not published
        self.grpc_server.stop(grace).wait(grace)
        self.engine.stop(timeout_s=grace)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        self.store.close()
        self._stopped.set()
        log.info("taskpatch stopped")

    def wait(self) -> None:
        self._stopped.wait()


def create_server(settings: Settings) -> tuple[TaskPatchServer, int]:
    server = TaskPatchServer(settings)
    server.start()
    return server, server.port


def serve(settings: Settings) -> None:
    server, _ = create_server(settings)
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop_requested.wait()
    server.stop()
