"""The gate every AvatarSigner call passes first: no work for callers who gave up, and a
clean refusal while the server shuts down.

    shed      a call whose deadline has passed, or has less than CALL_MIN_TIME_LEFT_MS
              left when its handler would start, is refused at once with
              DEADLINE_EXCEEDED (counted: calls_shed{reason="expired"}). The time left
              is observed for every call with a deadline (call_time_left_seconds): under
              overload calls wait inside gRPC before any handler runs, and this histogram
              is where that wait shows.
    count     calls in a handler (calls_in_flight), so a shutdown knows when none is left.
    refuse    once `refuse()` is called (the end of the drain), every new call is answered
              UNAVAILABLE "the server is shutting down" with `grpc-retry-pushback-ms`
              (counted: calls_shed{reason="draining"}). UNAVAILABLE is the status every
              gRPC client may retry; the pushback makes a retrying client come back only
              after this server has closed its port, so the retry goes to another replica
              rather than here again.

Health and reflection calls pass untouched: health must keep answering NOT_SERVING through
the drain. Why refusing beats stopping: gRPC's `server.stop()` cancels every call that has
reached gRPC but not yet a handler (CANCELLED, which clients do not retry), and under load
that is most of them. Refusing for a moment first hands each queued call to a handler that
answers it UNAVAILABLE; then nothing is queued when stop() runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from avatarsigner.contract import METHOD_PREFIX

from ..api.status import abort_with, to_status
from ..errors import DeadlineExceeded, Unavailable
from ..telemetry.metrics import Metrics

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

PUSHBACK_METADATA = "grpc-retry-pushback-ms"


def _shutting_down(pushback_ms: int) -> grpc.Status:
    """UNAVAILABLE, reason SHUTTING_DOWN, with a RetryInfo and the pushback for gRPC's retry."""
    status = to_status(
        Unavailable(
            "SHUTTING_DOWN",
            "the server is shutting down: retry on another replica",
            retry_after_seconds=pushback_ms / 1000,
        )
    )
    # grpc.Status from grpc_status is a named tuple: add the pushback to its trailers.
    trailers = (*status.trailing_metadata, (PUSHBACK_METADATA, str(pushback_ms)))
    replaced: grpc.Status = status._replace(trailing_metadata=trailers)
    return replaced


class CallGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """First interceptor of the chain (see the module doc)."""

    def __init__(self, min_time_left_seconds: float, metrics: Metrics | None = None) -> None:
        self._min_time_left = min_time_left_seconds
        self._metrics = metrics
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._refusal: grpc.Status | None = None
        # method -> (the handler the chain gave us, our wrapper of it)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        if metrics is not None:
            metrics.watch_in_flight(lambda: self._in_flight)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def refuse(self, pushback_seconds: float) -> None:
        """From now on answer every new call UNAVAILABLE, retry in `pushback_seconds`."""
        self._refusal = _shutting_down(max(1, round(pushback_seconds * 1000)))

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in a handler, at most `timeout` seconds; True if none is."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or handler.unary_unary is None or not method.startswith(METHOD_PREFIX):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._gated(method[len(METHOD_PREFIX) :], handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _gated(self, rpc: str, inner: Behavior) -> Behavior:
        metrics = self._metrics

        async def gated(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self._refusal is not None:
                if metrics is not None:
                    metrics.shed(rpc, "draining")
                await context.abort_with_status(self._refusal)
            left: float | None = context.time_remaining()
            if left is not None:
                if metrics is not None:
                    metrics.time_left(rpc, max(left, 0.0))
                if left < self._min_time_left:
                    if metrics is not None:
                        metrics.shed(rpc, "expired")
                    await abort_with(
                        context,
                        DeadlineExceeded(
                            "the call's deadline passed (or was about to) before it was worked on",
                            "expired",
                        ),
                    )
            self._in_flight += 1
            self._idle.clear()
            try:
                return await inner(request, context)
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()
                if left is not None and metrics is not None:
                    after = context.time_remaining()
                    if after is not None and after < 0:
                        metrics.answered_late(rpc)

        return gated
