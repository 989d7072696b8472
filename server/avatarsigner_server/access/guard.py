"""Who is calling, and may it call this? The guard in front of every AvatarSigner RPC.

For each AvatarSigner call (health and reflection pass straight through, so probes and
grpcurl work), in this order:

    1. request id   the caller's `x-request-id` if it is a plain token, else a new one
    2. authenticate `authorization: Bearer <token>` (its SHA-256 is looked up in the callers
                    file) and/or the client certificate's URI / DNS SANs (`tls_identity`);
                    none, or an unknown one -> UNAUTHENTICATED; a token and a certificate
                    naming two different callers -> UNAUTHENTICATED
    3. authorize    the RPC must be in the caller's `allow` -> else PERMISSION_DENIED
    4. rate limit   the caller's bucket for uploads or downloads -> RESOURCE_EXHAUSTED
                    (with a shared store: one round trip, a `rate_limit.caller` step;
                    closed mode and the store unreachable -> UNAVAILABLE)
    5. the handler runs with the `Call` current (call_context.current()); it adds the
       per-user gates (end-user token, per-user upload limit) and audits what it signs

Refusals are audited (one line, a fixed reason) and answered through api.status.abort_with;
every call is counted by method and final status code, with its latency. Without a callers
file every caller is allowed as "anonymous" (local development; start-up warns).

Each call is one SERVER span (telemetry.tracing; a shared do-nothing span when tracing is
off) continuing the caller's `traceparent`: its caller and how it proved itself once known,
the URLs it asks for, and its final status code with the refusal's reason word.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from avatarsigner.contract import AUTHORIZATION_METADATA, METHOD_PREFIX, SERVICE_NAME

from ..api.status import abort_with
from ..api.validation import MAX_BATCH
from ..errors import PermissionDenied, ServiceError, Unauthenticated
from ..telemetry import call_context
from ..telemetry.audit import Audit
from ..telemetry.call_context import ANONYMOUS, Call
from ..telemetry.metrics import Metrics
from ..telemetry.tracing import RpcSpan, Tracing
from .callers import Caller, CallersFile, CallerTable
from .rate_limits import Admission, Limiter

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's text metadata (binary `-bin` entries left out), keys lowercase."""
    return {
        key.lower(): value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str)
    }


def _peer_identities(context: grpc.aio.ServicerContext) -> list[str]:
    """URI and DNS SANs of the verified client certificate (none without mutual TLS)."""
    auth = context.auth_context()
    return [
        raw.decode("utf-8", "replace")
        for prop in ("peer_uri", "peer_dns")
        for raw in auth.get(prop, ())
    ]


def _cost(rpc: str, request: Any) -> int:
    """Rate-limit tokens a call takes: one per URL it asks for, at most a valid batch's worth.

    Charged before validation: an oversized batch (refused later) must not leave the
    caller's bucket in debt for hours.
    """
    if rpc == "BatchCreateDownloadUrls":
        return min(max(1, len(request.user_ids)), MAX_BATCH)
    return 1


class CallGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Authentication, authorization, per-caller rate limits, call metrics (see module doc)."""

    def __init__(
        self,
        callers: CallersFile | None,
        limiter: Limiter,
        audit: Audit,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._callers = callers
        self._limiter = limiter
        self._audit = audit
        self._metrics = metrics
        self._tracing = tracing or Tracing.off()
        # method -> (the handler gRPC gave us, our wrapper of it)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(METHOD_PREFIX) or handler.unary_unary is None:
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._guard(method[len(METHOD_PREFIX) :], handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _guard(self, rpc: str, inner: Behavior) -> Behavior:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code: grpc.StatusCode | None = None
            metadata = _metadata(context)
            request_id = call_context.request_id(metadata)
            with self._tracing.rpc(SERVICE_NAME, rpc, metadata, request_id) as span:
                try:
                    call = await self._admitted(rpc, request_id, metadata, request, context, span)
                    token = call_context.enter(call)
                    try:
                        return await inner(request, context)
                    finally:
                        call_context.leave(token)
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                finally:
                    code = code or context.code() or grpc.StatusCode.OK
                    span.outcome(code.name)
                    if self._metrics is not None:
                        self._metrics.call(rpc, code, time.perf_counter() - started)

        return guarded

    async def _admitted(
        self,
        rpc: str,
        request_id: str,
        metadata: Mapping[str, str],
        request: Any,
        context: grpc.aio.ServicerContext,
        span: RpcSpan,
    ) -> Call:
        """The call once its caller is known, allowed this RPC and within its rate limit;
        otherwise the refusal is audited, said on the span, and the call aborted (raises)."""
        call = Call(request_id, rpc, metadata=metadata)
        try:
            caller, how = self._identify(metadata, context)
            name = ANONYMOUS if caller is None else caller.name
            call = Call(
                request_id,
                rpc,
                name,
                how,
                metadata,
                account_deletion=caller is not None and caller.account_deletion,
            )
            span.caller(name, how)
            self._authorize(call, caller)
            pending = self._caller_limit(call, request, span)
            if pending is not None:  # the shared store decides: one round trip
                with self._tracing.step("rate_limit.caller"):
                    await pending
        except ServiceError as error:
            span.outcome(error.code, error.reason)
            self._audit.denied(call, error, getattr(request, "user_id", None))
            await abort_with(context, error)
        return call

    def _identify(
        self, metadata: Mapping[str, str], context: grpc.aio.ServicerContext
    ) -> tuple[Caller | None, str]:
        """(the caller, how it proved itself); (None, "open") without a callers file."""
        if self._callers is None:
            return None, "open"
        return self._authenticate(self._callers.table, metadata, context)

    @staticmethod
    def _authorize(call: Call, caller: Caller | None) -> None:
        """PermissionDenied unless the RPC is in the caller's allow."""
        if caller is not None and call.rpc not in caller.allow:
            raise PermissionDenied(
                f"caller {caller.name} may not call {call.rpc}", "rpc_not_allowed"
            )

    def _caller_limit(self, call: Call, request: Any, span: RpcSpan) -> Admission:
        """The caller's rate limit for this kind of call: RateLimited when over, None when
        decided at once, or the shared store's check to await."""
        cost = _cost(call.rpc, request)
        span.count(cost)
        return self._limiter.admit_caller(call.caller or ANONYMOUS, call.rpc, cost)

    @staticmethod
    def _authenticate(
        table: CallerTable, metadata: Mapping[str, str], context: grpc.aio.ServicerContext
    ) -> tuple[Caller, str]:
        by_token = None
        authorization = metadata.get(AUTHORIZATION_METADATA)
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated(
                    "authorization metadata must be 'Bearer <token>'", "malformed_authorization"
                )
            by_token = table.by_token(token)
            if by_token is None:
                raise Unauthenticated("unknown bearer token", "unknown_token")
        by_certificate = None
        identities: list[str] = []
        if table.by_tls_identity:
            identities = _peer_identities(context)
            by_certificate = table.by_certificate(identities)
        if by_token is not None and by_certificate is not None:
            if by_token is not by_certificate:
                raise Unauthenticated(
                    "the bearer token and the client certificate belong to different callers",
                    "credentials_mismatch",
                )
            return by_token, "token+certificate"
        if by_token is not None:
            return by_token, "token"
        if by_certificate is not None:
            return by_certificate, "certificate"
        if identities:
            raise Unauthenticated(
                "client certificate not in the callers file, and no bearer token",
                "unknown_certificate",
            )
        raise Unauthenticated(
            "no credentials: send 'authorization: Bearer <token>' or a client certificate",
            "missing_credentials",
        )
