"""The client's one error type: a gRPC status, reduced to what a user (or a script) can act on.

Callers of :class:`client.api.TaskPatchClient` never see ``grpc.RpcError``: the status is translated once, in
:mod:`client.api`, into :class:`TaskPatchError` with the status code's *name* (``"NOT_FOUND"``) and the server's
message, so user code can branch on ``err.code`` without importing grpc. A few common codes get a subclass so
``except NotFoundError:`` reads naturally; every other code is a plain :class:`TaskPatchError`.
"""

from __future__ import annotations

from typing import Any

import grpc


class TaskPatchError(Exception):
    """A failed call: ``code`` is the gRPC status code name, ``message`` the server's details (safe to show)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickling re-calls __init__ with self.args (one string); keep both fields across processes.
        return (type(self), (self.code, self.message))


class NotFoundError(TaskPatchError):
    """No task, job or version with that name/id."""


class AlreadyExistsError(TaskPatchError):
    """A task with that name exists; pass ``replace=True`` to train a new version."""


class InvalidArgumentError(TaskPatchError):
    """The server rejected the request's content (bad option, bad data, unknown method)."""


class ResourceExhaustedError(TaskPatchError):
    """The server is full (job queue, patch capacity) or a message is too large; retry later or send less."""


class UnauthenticatedError(TaskPatchError):
    """Missing or wrong bearer token."""


class UnavailableError(TaskPatchError):
    """No server reachable at the target (not started, wrong address, or shutting down)."""


class DeadlineExceededError(TaskPatchError):
    """The call took longer than ``timeout_s``."""


_BY_CODE: dict[str, type[TaskPatchError]] = {
    "NOT_FOUND": NotFoundError,
    "ALREADY_EXISTS": AlreadyExistsError,
    "INVALID_ARGUMENT": InvalidArgumentError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "UNAUTHENTICATED": UnauthenticatedError,
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
}


def make_error(code: str, message: str) -> TaskPatchError:
    """The most specific error class for ``code``."""
    return _BY_CODE.get(code, TaskPatchError)(code, message)


def error_from_rpc(err: grpc.RpcError | grpc.FutureCancelledError) -> TaskPatchError:
    """Translate a failed gRPC call; an RpcError without a status (rare, internal to grpc) becomes UNKNOWN."""
    if isinstance(err, grpc.FutureCancelledError):  # a cancelled future is not an RpcError and carries no status
        return make_error("CANCELLED", "the call was cancelled")
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    status = code_fn() if callable(code_fn) else None
    code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
    details = details_fn() if callable(details_fn) else None
    return make_error(code, details or str(err) or code.lower().replace("_", " "))
