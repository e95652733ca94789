"""taskpatch client: a typed Python API (:class:`TaskPatchClient`) and the ``client`` / ``taskpatch`` CLI.

Light on purpose: no torch and no server imports, so it runs on any machine that can reach the server.
"""

from __future__ import annotations

from client.api import TaskPatchClient
from client.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    TaskPatchError,
    UnauthenticatedError,
    UnavailableError,
)
from client.types import Job, JobEvent, Prediction, PredictResult, Progress, TaskInfo

__all__ = [
    "AlreadyExistsError",
    "DeadlineExceededError",
    "InvalidArgumentError",
    "Job",
    "JobEvent",
    "NotFoundError",
    "PredictResult",
    "Prediction",
    "Progress",
    "ResourceExhaustedError",
    "TaskInfo",
    "TaskPatchClient",
    "TaskPatchError",
    "UnauthenticatedError",
    "UnavailableError",
]
