"""Turn request bytes that do not parse into INVALID_ARGUMENT instead of grpc's own INTERNAL.

grpc deserializes a request before any servicer code runs and answers "Exception deserializing request!" with
INTERNAL when that fails (invalid UTF-8 in a string field, a truncated varint, random bytes). This interceptor wraps
each handler's deserializer so a parse failure becomes a marker object, then answers it as a client error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from server.errors import InvalidArgument


class _Undecodable:
    def __init__(self, error: Exception) -> None:
        self.error = error


def _message(error: Exception) -> str:
    return f"the request could not be parsed as its protobuf message: {str(error)[:200] or type(error).__name__}"


class DecodeErrorInterceptor(grpc.ServerInterceptor):
    def __init__(self, on_invalid: Callable[[str], None] | None = None) -> None:
        self._on_invalid = on_invalid

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        rpc = handler_call_details.method.rsplit("/", 1)[-1]
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except (DecodeError, UnicodeDecodeError, ValueError) as exc:
                return _Undecodable(exc)

        def refuse(context: grpc.ServicerContext, marker: _Undecodable) -> None:
            if self._on_invalid is not None:
                self._on_invalid(rpc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(marker.error))

        def checked_stream(requests: Iterator[Any]) -> Iterator[Any]:
            # Inside a stream the servicer is already running: raise a domain error it maps and counts itself.
            for request in requests:
                if isinstance(request, _Undecodable):
                    raise InvalidArgument(_message(request.error))
                yield request

        serializer = handler.response_serializer
        if handler.request_streaming:
            behavior = handler.stream_stream if handler.response_streaming else handler.stream_unary

            def stream_behavior(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return behavior(checked_stream(requests), context)

            factory = (
                grpc.stream_stream_rpc_method_handler
                if handler.response_streaming
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(stream_behavior, request_deserializer=deserialize, response_serializer=serializer)

        behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary

        def unary_behavior(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                refuse(context, request)
            return behavior(request, context)

        factory = (
            grpc.unary_stream_rpc_method_handler if handler.response_streaming else grpc.unary_unary_rpc_method_handler
        )
        return factory(unary_behavior, request_deserializer=deserialize, response_serializer=serializer)
