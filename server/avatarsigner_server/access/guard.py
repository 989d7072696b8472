"""Who is calling, and may it call this? The guard in front of every AvatarSigner RPC.

For each AvatarSigner call (health and reflection pass straight through, so probes and
grpcurl work), in this order:

    0. metadata     `authorization`, `x-end-user-token` or `x-request-id` sent more than
                    once -> UNAUTHENTICATED (which one counts would decide who is calling,
                    for whom, or which request it is; so neither does)
    1. request id   the caller's `x-request-id` if it is a plain token, else a new one
    2. authenticate `authorization: Bearer <token>` (its SHA-256 is looked up in the callers
                    file) and/or the client certificate's URI / DNS SANs (`tls_identity`,
                    URI SANs against URI identities, DNS against DNS); none, or an unknown
                    one -> UNAUTHENTICATED; a certificate naming two callers, or a token
                    and a certificate naming two different ones -> UNAUTHENTICATED
       then parse   the request message is parsed only now, once the caller is known: an
                    unauthenticated caller never costs a parse (gRPC has already read the
                    bytes, up to its receive limit, before any handler runs); bytes that
                    are not the RPC's message -> INVALID_ARGUMENT
    3. authorize    the RPC must be in the caller's `allow` -> else PERMISSION_DENIED
    4. rate limit   the caller's bucket for uploads or downloads -> RESOURCE_EXHAUSTED
                    (with a shared store: one round trip, a `rate_limit.caller` step;
                    closed mode and the store unreachable -> UNAVAILABLE)
    5. the handler runs with the `Call` current (call_context.current()); it adds the
       per-user gates (end-user token, per-user upload limit) and audits what it signs

Only unary RPCs are guarded, and the service has no other kind: a streaming handler under
the service's prefix (one added later) is refused with UNIMPLEMENTED rather than served
unguarded.

Refusals are audited (one line, a fixed reason) and answered through api.status.abort_with.
Refusals of unidentified callers are sampled per peer address (`RefusalSampler`): every one
is counted in the metrics, but past a small burst only about one a second per address is
written, and that line says how many were left out;
every call is counted by method and final status code, with its latency. Without a callers
file every caller is allowed as "anonymous" (local development; start-up warns).

Each call is one SERVER span (telemetry.tracing; a shared do-nothing span when tracing is
off) continuing the caller's `traceparent` once the caller is known (an unidentified caller
does not choose the trace, nor whether it is sampled): its caller and how it proved itself,
the URLs it asks for, and its final status code with the refusal's reason word.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from avatarsigner.contract import (
    AUTHORIZATION_METADATA,
    END_USER_TOKEN_METADATA,
    METHOD_PREFIX,
    REQUEST_ID_METADATA,
    SERVICE_NAME,
)

from ..api.status import abort_with
from ..api.validation import MAX_BATCH
from ..errors import (
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
)
from ..settings.access import RateLimit
from ..telemetry import call_context
from ..telemetry.audit import Audit
from ..telemetry.call_context import ANONYMOUS, Call
from ..telemetry.metrics import Metrics
from ..telemetry.tracing import RpcSpan, Tracing
from .callers import DNS, URI, Caller, CallersFile, CallerTable, TlsIdentity
from .rate_limits import Admission, Buckets, Limiter, Monotonic

log = logging.getLogger("avatarsigner.guard")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Deserializer = Callable[[bytes], Any]

# Audit lines of refusals before authentication, per peer address: a burst, then this rate.
UNIDENTIFIED_LINES = RateLimit(rate=1.0, burst=10)
MAX_PEERS = 10_000


class RefusalSampler:
    """Which refusals of unidentified callers get an audit line, per peer address.

    A token bucket per address (UNIDENTIFIED_LINES) decides; `admit()` returns None for a
    refusal left out, else how many from that address were left out since its last line.
    Addresses are kept in bounded LRUs, like rate-limit buckets.
    """

    def __init__(self, limit: RateLimit = UNIDENTIFIED_LINES, clock: Monotonic = time.monotonic):
        self._buckets = Buckets(limit, clock, MAX_PEERS)
        self._left_out: OrderedDict[str, int] = OrderedDict()

    def admit(self, peer: str) -> int | None:
        if self._buckets.take(peer):
            self._left_out[peer] = self._left_out.pop(peer, 0) + 1
            if len(self._left_out) > MAX_PEERS:
                self._left_out.popitem(last=False)
            return None
        return self._left_out.pop(peer, 0)


def peer_address(context: grpc.aio.ServicerContext) -> str:
    """The caller's address without its port ("ipv4:10.0.0.7"), or "unknown"."""
    peer = context.peer() or "unknown"
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


# Metadata a call may carry once: a second value would let "which one counts" decide who is
# calling (a bad token before a good one), for whom (two end users' tokens), or which request.
SINGLE_VALUED = frozenset({AUTHORIZATION_METADATA, END_USER_TOKEN_METADATA, REQUEST_ID_METADATA})


def _metadata(context: grpc.aio.ServicerContext) -> tuple[dict[str, str], str | None]:
    """(the call's text metadata, keys lowercase, `-bin` entries left out; the first
    SINGLE_VALUED key it carries more than once, or None)."""
    metadata: dict[str, str] = {}
    repeated = None
    for key, value in context.invocation_metadata() or ():
        if not isinstance(value, str):
            continue
        key = key.lower()
        if key in metadata and key in SINGLE_VALUED and repeated is None:
            repeated = key
        metadata[key] = value
    return metadata, repeated


def _refuse_repeated(key: str | None) -> None:
    if key is not None:
        raise Unauthenticated(f"metadata {key!r} sent more than once", "repeated_metadata")


def _peer_identities(context: grpc.aio.ServicerContext) -> list[TlsIdentity]:
    """The verified client certificate's URI and DNS SANs, each with its type (none without
    mutual TLS): a DNS SAN is only ever compared with DNS identities, a URI with URIs."""
    auth = context.auth_context()
    return [
        (kind, raw.decode("utf-8", "replace"))
        for prop, kind in (("peer_uri", URI), ("peer_dns", DNS))
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


def _parsed(rpc: str, parse: Deserializer | None, raw: bytes) -> Any:
    """The request message from its bytes; INVALID_ARGUMENT when they are not one."""
    if parse is None:
        return raw
    try:
        return parse(raw)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError, or anything a parser raises
        raise InvalidArgument(
            [FieldViolation("request", f"is not a valid {rpc} request message")]
        ) from None


def _refused_streaming(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind that answers UNIMPLEMENTED: the guard checks unary calls
    only, so a streaming RPC under the service's prefix would otherwise run unguarded."""
    log.error("streaming handler under the service's prefix refused", extra={"method": method})

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "only unary RPCs are served under " + METHOD_PREFIX
        )

    kinds = {
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


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
        self._unidentified = RefusalSampler()
        # method -> (the handler gRPC gave us, our wrapper of it)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(METHOD_PREFIX):
            return handler
        if handler.unary_unary is None:
            return _refused_streaming(method, handler)
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        # No deserializer: the guard gets the raw bytes and parses them once the caller is
        # known (authentication first), with the handler's own deserializer.
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._guard(
                method[len(METHOD_PREFIX) :], handler.unary_unary, handler.request_deserializer
            ),
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _guard(self, rpc: str, inner: Behavior, parse: Deserializer | None) -> Behavior:
        async def guarded(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code: grpc.StatusCode | None = None
            metadata, repeated = _metadata(context)
            request_id = call_context.request_id({} if repeated else metadata)
            who = self._who(repeated, metadata, context)
            # Only a known caller's trace context is continued: an unknown one would choose
            # the trace its refusals' spans join, and whether they are sampled at all.
            propagated = {} if isinstance(who, ServiceError) else metadata
            with self._tracing.rpc(SERVICE_NAME, rpc, propagated, request_id) as span:
                try:
                    unknown = Call(request_id, rpc, metadata=metadata)
                    call, request = await self._admitted(unknown, who, raw, parse, context, span)
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

    def _who(
        self, repeated: str | None, metadata: Mapping[str, str], context: grpc.aio.ServicerContext
    ) -> tuple[Caller | None, str] | ServiceError:
        """(the caller, how it proved itself), or why it is refused as unauthenticated."""
        try:
            _refuse_repeated(repeated)
            return self._identify(metadata, context)
        except ServiceError as error:
            return error

    async def _admitted(
        self,
        call: Call,
        who: tuple[Caller | None, str] | ServiceError,
        raw: bytes,
        parse: Deserializer | None,
        context: grpc.aio.ServicerContext,
        span: RpcSpan,
    ) -> tuple[Call, Any]:
        """The call and its request once the caller is known, allowed this RPC and within
        its rate limit (the request parsed only once the caller is known); otherwise the
        refusal is audited, said on the span, and the call aborted (raises)."""
        request: Any = None
        try:
            if isinstance(who, ServiceError):
                raise who
            caller, how = who
            name = ANONYMOUS if caller is None else caller.name
            call = Call(
                call.request_id,
                call.rpc,
                name,
                how,
                call.metadata,
                account_deletion=caller is not None and caller.account_deletion,
            )
            span.caller(name, how)
            request = _parsed(call.rpc, parse, raw)
            self._authorize(call, caller)
            pending = self._caller_limit(call, request, span)
            if pending is not None:  # the shared store decides: one round trip
                with self._tracing.step("rate_limit.caller"):
                    await pending
        except ServiceError as error:
            span.outcome(error.code, error.reason)
            self._refused(call, error, request, context)
            await abort_with(context, error)
        return call, request

    def _refused(
        self, call: Call, error: ServiceError, request: Any, context: grpc.aio.ServicerContext
    ) -> None:
        """Audit a refusal; one of an unidentified caller is sampled per peer address."""
        user_id = getattr(request, "user_id", None)
        if call.caller is not None:
            self._audit.denied(call, error, user_id)
            return
        left_out = self._unidentified.admit(peer_address(context))
        if left_out is None:
            self._audit.counted(call, error)
        else:
            self._audit.denied(call, error, user_id, left_out=left_out)

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
        identities: list[TlsIdentity] = []
        if table.by_tls_identity:
            identities = _peer_identities(context)
            matches = table.by_certificate(identities)
            if len(matches) > 1:
                raise Unauthenticated(
                    "the client certificate names more than one caller", "ambiguous_certificate"
                )
            by_certificate = matches[0] if matches else None
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
