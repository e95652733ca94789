"""Error translation and formatting, and the human-readable formatting helpers."""

from __future__ import annotations

import pickle

import grpc
import pytest

from client.cli import format_error
from client.errors import (
    AlreadyExistsError,
    NotFoundError,
    TaskPatchError,
    UnavailableError,
    error_from_rpc,
    make_error,
)
from client.render import format_metrics, human_bytes, human_duration, prediction_json, prediction_text
from client.types import Prediction


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_error_from_rpc_keeps_code_name_and_server_message() -> None:
    error = error_from_rpc(FakeRpcError(grpc.StatusCode.NOT_FOUND, "task 'x' not found"))
    assert isinstance(error, NotFoundError) and isinstance(error, TaskPatchError)
    assert (error.code, error.message, str(error)) == (
        "NOT_FOUND",
        "task 'x' not found",
        "NOT_FOUND: task 'x' not found",
    )


def test_uncommon_code_is_a_plain_taskpatch_error_and_missing_status_is_unknown() -> None:
    error = error_from_rpc(FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "busy"))
    assert type(error) is TaskPatchError and error.code == "FAILED_PRECONDITION"
    assert error_from_rpc(grpc.RpcError()).code == "UNKNOWN"
    assert error_from_rpc(grpc.FutureCancelledError()).code == "CANCELLED"


def test_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(make_error("ALREADY_EXISTS", "task 'x' exists")))
    assert isinstance(error, AlreadyExistsError) and (error.code, error.message) == (
        "ALREADY_EXISTS",
        "task 'x' exists",
    )


def test_format_error_first_line_and_hints() -> None:
    assert format_error(make_error("NOT_FOUND", "task 'x' not found"), "h:1") == "error: NOT_FOUND: task 'x' not found"
    unavailable = format_error(UnavailableError("UNAVAILABLE", "failed to connect"), "10.0.0.1:7")
    assert unavailable.splitlines()[0] == "error: UNAVAILABLE: failed to connect"
    assert "no taskpatch server is reachable at 10.0.0.1:7" in unavailable
    assert "TASKPATCH_TOKEN" in format_error(make_error("UNAUTHENTICATED", "no token"), "h:1")
    exists = make_error("ALREADY_EXISTS", "task 'x' exists")
    assert "--replace" in format_error(exists, "h:1", "add-task")
    assert "--replace" not in format_error(exists, "h:1", "import")


@pytest.mark.parametrize(
    ("size", "text"), [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 1024**2, "5.0 MiB")]
)
def test_human_bytes(size: int | None, text: str) -> None:
    assert human_bytes(size) == text


@pytest.mark.parametrize(("seconds", "text"), [(None, "-"), (3.21, "3.2s"), (83.2, "1m 23s"), (3725, "1h 02m")])
def test_human_duration(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


def test_prediction_formatting() -> None:
    classified = Prediction("pos", {"neg": 0.25, "pos": 0.75}, None)
    assert prediction_text(classified) == "pos  (pos 0.7500, neg 0.2500)"
    assert prediction_text(Prediction(None, None, 2.5)) == "value 2.5000"
    assert prediction_json(classified, 4) == (
        '{"label": "pos", "probabilities": {"neg": 0.25, "pos": 0.75}, "value": null, "version": 4}'
    )
    assert format_metrics({"f1": 0.5, "accuracy": 1}) == "accuracy=1.0000 f1=0.5000"
    assert format_metrics({}) == "-"
