"""Every domain error has a specific status code; nothing a user causes maps to UNKNOWN or INTERNAL."""

from __future__ import annotations

import grpc
import pytest

from server import errors
from server.rpc.status import status_for
from tasks.errors import DataError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (DataError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.BackboneMismatch("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.PatchCorrupt("x"), grpc.StatusCode.DATA_LOSS),
        (errors.Cancelled("x"), grpc.StatusCode.CANCELLED),
        (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_status_table(error: Exception, code: grpc.StatusCode) -> None:
    assert status_for(error) == code


def test_every_domain_error_is_mapped() -> None:
    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    for cls in subclasses(errors.TaskPatchError):
        if cls is errors.TaskPatchError:
            continue
        assert status_for(cls("x")) is not None, cls


def test_unexpected_errors_are_unmapped() -> None:
    assert status_for(RuntimeError("boom")) is None
