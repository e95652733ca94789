"""Domain error -> gRPC status code, in one table, plus the decorator that applies it and records RPC metrics."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from server import errors
from server.metrics import Metrics
from tasks.errors import DataError

log = logging.getLogger(__name__)

# Most specific first: BackboneMismatch is a FailedPrecondition.
STATUS_BY_ERROR: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (DataError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.BackboneMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PatchCorrupt, grpc.StatusCode.DATA_LOSS),
    (errors.Cancelled, grpc.StatusCode.CANCELLED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.ShuttingDown, grpc.StatusCode.UNAVAILABLE),
)


# Messages travel in trailing metadata (8 KiB by default) and may quote client input: keep them well inside it.
MAX_MESSAGE_CHARS = 1000


def _bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "… (truncated)"


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return code
    return None


F = TypeVar("F", bound=Callable[..., Any])


def rpc_method(name: str, streaming_response: bool = False) -> Callable[[F], F]:
    """Map domain errors to status codes and count every call by rpc + code with its latency.

    The decorated method's ``self`` must have a ``metrics`` attribute (:class:`Metrics`)."""

    def finish(metrics: Metrics, context: grpc.ServicerContext, started: float, exc: BaseException | None) -> None:
        message = ""
        if not context.is_active() or isinstance(exc, grpc.RpcError):
            # The client went away (cancelled, deadline, dropped stream): nothing to answer, nothing to log.
            code, exc = grpc.StatusCode.CANCELLED, None
        elif exc is None:
            code = grpc.StatusCode.OK
        else:
            mapped = status_for(exc)
            if mapped is None:
                log.error("%s failed", name, exc_info=exc)
                code, message = grpc.StatusCode.INTERNAL, "internal error (see server log)"
            else:
                code, message = mapped, _bounded(str(exc))
        metrics.rpc_requests.labels(rpc=name, code=code.name).inc()
        metrics.rpc_latency.labels(rpc=name).observe(time.perf_counter() - started)
        if exc is not None:
            context.abort(code, message)

    def decorate(handler: F) -> F:
        if streaming_response:

            @functools.wraps(handler)
            def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                started = time.perf_counter()
                try:
                    yield from handler(self, request, context)
                except GeneratorExit:
                    finish(self.metrics, context, started, None)
                    raise
                except Exception as exc:
                    finish(self.metrics, context, started, exc)
                    return
                finish(self.metrics, context, started, None)

            return stream_wrapper  # type: ignore[return-value]

        @functools.wraps(handler)
        def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                response = handler(self, request, context)
            except Exception as exc:
                finish(self.metrics, context, started, exc)
                return None  # only reached when the client is gone: there is nobody to answer
            finish(self.metrics, context, started, None)
            return response

        return unary_wrapper  # type: ignore[return-value]

    return decorate
