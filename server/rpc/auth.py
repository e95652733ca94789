"""Bearer-token check for mutating RPCs (or all RPCs), as a server interceptor.

The token is compared in constant time and never logged. Health and reflection stay open so probes keep working.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc

SERVICE = "/taskpatch.v1.TaskPatch/"
MUTATING = frozenset(
    SERVICE + name for name in ("AddTask", "DeleteTask", "RollbackTask", "CancelJob", "PinTask", "ImportTask")
)


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str, protect_all: bool, on_denied: Callable[[str], None] | None = None) -> None:
        self._expected = f"Bearer {token}".encode()
        self._protect_all = protect_all
        self._on_denied = on_denied

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        protected = method in MUTATING or (self._protect_all and method.startswith(SERVICE))
        handler = continuation(handler_call_details)
        if not protected or handler is None:
            return handler
        supplied = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        supplied_bytes = supplied.encode() if isinstance(supplied, str) else bytes(supplied)
        if hmac.compare_digest(supplied_bytes, self._expected):
            return handler
        if self._on_denied is not None:
            self._on_denied(method.rsplit("/", 1)[-1])
        reason = "missing bearer token" if not supplied else "invalid bearer token"
        return _deny(handler, f"{reason}: this RPC needs 'authorization: Bearer <token>'")
