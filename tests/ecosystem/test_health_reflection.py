"""Standard gRPC services, checked with their official Python clients (grpcio-health-checking, grpcio-reflection)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from server.app import SERVICE_NAME, TaskPatchServer, create_server
from server.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[TaskPatchServer]:
    started, _ = create_server(Settings(backbone="tiny", port=0, metrics_port=-1, store_dir=tmp_path / "store"))
    yield started
    started.stop(grace_s=2)


def test_health_is_serving_for_the_server_and_the_service(server: TaskPatchServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "taskpatch.v1.TaskPatch"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_turns_not_serving_on_shutdown(tmp_path: Path) -> None:
    server, _ = create_server(Settings(backbone="tiny", port=0, metrics_port=-1, store_dir=tmp_path / "store"))
    server.stop(grace_s=1)

    class _Context:
        def set_code(self, code: object) -> None:
            raise AssertionError(code)

    for service in ("", SERVICE_NAME):
        response = server.health.Check(health_pb2.HealthCheckRequest(service=service), _Context())
        assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_and_describes_the_services(server: TaskPatchServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {
            "taskpatch.v1.TaskPatch",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= services
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("taskpatch.v1.TaskPatch")
        methods = {m.name for m in service.methods}
        assert {"AddTask", "Predict", "ListTasks", "ExportTask", "ImportTask"} <= methods
        predict = service.FindMethodByName("Predict")
        assert predict.input_type.full_name == "taskpatch.v1.PredictRequest"
        assert [f.name for f in predict.output_type.fields][:3] == ["task", "version", "problem_type"]
