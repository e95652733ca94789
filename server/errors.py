"""Domain errors shared by the store, trainer, engine and scheduler.

Every error a user can cause is one of these classes; the RPC layer maps each class to one gRPC status code in a
single table (``server/rpc/status.py``), so nothing user-caused ever surfaces as UNKNOWN or INTERNAL.
"""

from __future__ import annotations


class TaskPatchError(Exception):
    """Base class: a failure with a message that is safe to show to the caller."""


class InvalidArgument(TaskPatchError):
    """The request or uploaded data is malformed (bad name, missing column, text too long, ...)."""


class NotFound(TaskPatchError):
    """A task, version or job that does not exist."""


class AlreadyExists(TaskPatchError):
    """A task or job with that name already exists and the caller did not ask to replace it."""


class ResourceExhausted(TaskPatchError):
    """A bounded resource is full (job queue, upload size, resident table)."""


class FailedPrecondition(TaskPatchError):
    """The request is valid but the system is not in a state to serve it (e.g. patch made for another backbone)."""


class BackboneMismatch(FailedPrecondition):
    """A patch was trained on a different backbone than the one this server runs."""


class PatchCorrupt(TaskPatchError):
    """A stored patch cannot be trusted: truncated, bad hash, unreadable metadata, unknown format version."""


class Cancelled(TaskPatchError):
    """A training job was cancelled by a caller or by shutdown."""


class ShuttingDown(TaskPatchError):
    """The server is stopping and takes no new work."""


class Unauthenticated(TaskPatchError):
    """A mutating call without a valid bearer token."""
