"""OpenTelemetry traces: one server span per RPC that continues the caller's trace.

Off unless configured the standard way: tracing is on when `OTEL_TRACES_EXPORTER` names an
exporter (`otlp`, or `console` to debug) or an OTLP endpoint is set
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), and never when
`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Everything else is the SDK's own
`OTEL_*` reading: the exporter's endpoint, headers, certificates and timeout, the sampler
(`OTEL_TRACES_SAMPLER`, parent-based by default), batching (`OTEL_BSP_*`), the resource
(`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`; service.name defaults to avatar-signer)
and the propagators (`OTEL_PROPAGATORS`, W3C `traceparent` by default). Spans go out over
OTLP/gRPC (port 4317), the protocol of the stack the service already runs on.

The interceptor calls, per AvatarSigner RPC:

    with tracing.rpc(service, rpc, metadata) as span:   # continues metadata's traceparent
        span.caller(name, auth)                         # once the caller is known
        span.count(urls)                                # the URLs asked for (viewer cookies: 1)
        ...                                             # handler; child steps:
        with tracing.step("upload_check.rate_limit"): ...
        span.outcome(code, reason)                      # final status code NAME, reason word
    rpc_outcome(code, reason)                           # the same, from a handler deeper down

What a span can hold is fixed here: the RPC, the caller's name, how it proved itself, the
count, the status code and a fixed reason word, the request id. Never a URL, signature,
token, key id, user id or secret; an exception is recorded as its type name only (its
message and traceback are not). With tracing off each call costs a few attribute lookups
on a shared do-nothing span.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from importlib import metadata as distribution
from types import TracebackType
from typing import Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

SERVICE_NAME = "avatar-signer"
TRACER_NAME = "avatarsigner"
EXPORTERS = ("otlp", "console", "none")

# Attribute keys: the RPC semantic conventions of the SDK's semconv package, then ours.
RPC_SYSTEM = "rpc.system.name"
RPC_METHOD = "rpc.method"
RPC_STATUS_CODE = "rpc.response.status_code"
ERROR_TYPE = "error.type"
CALLER = "avatarsigner.caller"
AUTH = "avatarsigner.auth"
COUNT = "avatarsigner.count"
OUTCOME = "avatarsigner.outcome"
REQUEST_ID = "avatarsigner.request_id"
ATTRIBUTES = frozenset(
    {RPC_SYSTEM, RPC_METHOD, RPC_STATUS_CODE, ERROR_TYPE, CALLER, AUTH, COUNT, OUTCOME, REQUEST_ID}
)

# Codes that mean the server failed (the RPC conventions for gRPC servers); the others are
# the caller's doing and leave the span's status unset.
SERVER_FAULTS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
_WORD = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # a name or a fixed reason, never a value


class TracingSettingsError(ValueError):
    """An OTEL_* variable this service cannot honour; str() is one line naming it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether these OTEL_* variables turn tracing on (see the module doc); or the error."""
    exporter = (environ.get("OTEL_TRACES_EXPORTER") or "").strip().lower()
    if exporter and exporter not in EXPORTERS:
        raise TracingSettingsError(
            "OTEL_TRACES_EXPORTER", f"must be one of {', '.join(EXPORTERS)} (one exporter)"
        )
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(name)
        if protocol is not None and protocol.strip().lower() != "grpc":
            raise TracingSettingsError(name, "must be grpc: spans go out over OTLP/gRPC")
        if protocol is not None:
            break  # the signal-specific variable wins
    if _true(environ.get("OTEL_SDK_DISABLED")) or exporter == "none":
        return False
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return bool(exporter) or bool(endpoint)


def check_environ(environ: Mapping[str, str]) -> bool:
    """Whether tracing is on, with every OTEL_* setting it depends on checked, starting
    nothing (a supervisor checks before its workers start); TracingSettingsError if not."""
    if not wanted(environ):
        return False
    _extract_function()  # OTEL_PROPAGATORS: every propagator named is installed
    return True


class RpcSpan(Protocol):
    """What the interceptor may say about the RPC it serves (and nothing else)."""

    def caller(self, name: str, auth: str) -> None: ...

    def count(self, urls: int) -> None: ...

    def outcome(self, code: str, reason: str | None = None) -> None: ...


class _Off:
    """The span of an RPC when tracing is off: does nothing, one instance for all calls."""

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def caller(self, name: str, auth: str) -> None:
        return None

    def count(self, urls: int) -> None:
        return None

    def outcome(self, code: str, reason: str | None = None) -> None:
        return None


_OFF = _Off()
_NO_STEP = nullcontext()


class _Current:
    """A started span made current between enter and exit, then ended.

    Attributes are gathered and set in one call at the end (each SDK call takes a lock);
    an exception leaving the block is recorded as its type name only (no message, no
    traceback), with a refusal's fixed `reason` word when it has one.
    """

    __slots__ = ("_attributes", "_parent", "_span", "_token")

    def __init__(self, span: trace.Span, parent: otel_context.Context | None) -> None:
        self._span = span
        self._parent = parent
        self._attributes: dict[str, str | int] | None = {} if span.is_recording() else None
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> _Current:
        self._token = otel_context.attach(trace.set_span_in_context(self._span, self._parent))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            attributes = self._attributes
            if attributes is not None:
                # An outcome given by the interceptor stands (its abort raises through here).
                if kind is not None and attributes.keys().isdisjoint((ERROR_TYPE, RPC_STATUS_CODE)):
                    attributes[ERROR_TYPE] = kind.__name__
                    reason = getattr(error, "reason", None)
                    if isinstance(reason, str) and OUTCOME not in attributes:
                        attributes[OUTCOME] = _word(reason)
                if attributes:
                    self._span.set_attributes(attributes)
        finally:
            if self._token is not None:
                otel_context.detach(self._token)
            self._span.end()


class _ServerSpan(_Current):
    """The SERVER span of one RPC: what the interceptor may say about it."""

    __slots__ = ("_rpc_token",)

    def __enter__(self) -> _ServerSpan:
        super().__enter__()
        self._rpc_token = _RPC.set(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _RPC.reset(self._rpc_token)
        super().__exit__(kind, error, traceback)

    def caller(self, name: str, auth: str) -> None:
        if self._attributes is not None:
            self._attributes[CALLER] = _word(name)
            self._attributes[AUTH] = _word(auth)

    def count(self, urls: int) -> None:
        if self._attributes is not None:
            self._attributes[COUNT] = int(urls)

    def outcome(self, code: str, reason: str | None = None) -> None:
        attributes = self._attributes
        if attributes is None:
            return
        attributes[RPC_STATUS_CODE] = _word(code)
        if reason is not None:
            attributes[OUTCOME] = _word(reason)
        if code in SERVER_FAULTS:
            attributes[ERROR_TYPE] = code
            self._span.set_status(Status(StatusCode.ERROR))
        else:
            attributes.pop(ERROR_TYPE, None)


# The SERVER span of the RPC being served (tracing on only), for `rpc_outcome`.
_RPC: ContextVar[_ServerSpan | None] = ContextVar("avatarsigner_rpc_span", default=None)


def rpc_outcome(code: str, reason: str | None = None) -> None:
    """Say the current RPC's outcome on its span, from deeper than the interceptor (the
    handler that refuses a call knows its reason word); nothing outside a traced RPC."""
    span = _RPC.get()
    if span is not None:
        span.outcome(code, reason)


def _word(value: str) -> str:
    """`value` when it is a plain word (a name, a code, a reason), else "_OTHER"."""
    return value if _WORD.fullmatch(value) else "_OTHER"


class Tracing:
    """The service's tracer: `rpc()` spans and `step()` children; off without a provider."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self._provider = provider
        self._tracer = None if provider is None else provider.get_tracer(TRACER_NAME, _version())
        self._extract = _extract_function() if provider is not None else None

    @classmethod
    def off(cls) -> Tracing:
        return cls(None)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Tracing:
        """On as `wanted()` says, exporting in batches; TracingSettingsError when misconfigured.

        The SDK reads the details (endpoint, sampler, batching, resource) from the process
        environment itself, so `environ` should be os.environ.
        """
        if not check_environ(environ):
            return cls.off()
        exporter: SpanExporter
        if (environ.get("OTEL_TRACES_EXPORTER") or "").strip().lower() == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        return cls.exporting_to(BatchSpanProcessor(exporter), environ)

    @classmethod
    def exporting_to(
        cls, processor: SpanProcessor | SpanExporter, environ: Mapping[str, str] | None = None
    ) -> Tracing:
        """On, with this processor (or an exporter, sent each span as it ends: tests, bench)."""
        if isinstance(processor, SpanExporter):
            processor = SimpleSpanProcessor(processor)
        provider = TracerProvider(resource=_resource(environ or {}), shutdown_on_exit=False)
        provider.add_span_processor(processor)
        return cls(provider)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def rpc(
        self,
        service: str,
        rpc: str,
        metadata: Mapping[str, str],
        request_id: str | None = None,
    ) -> AbstractContextManager[RpcSpan]:
        """The SERVER span of one RPC, child of the caller's `traceparent` when it sent one.

        `metadata` is the call's text metadata (lowercase keys); only the propagation
        headers are read from it.
        """
        if self._tracer is None or self._extract is None:
            return _OFF
        parent = self._extract(metadata)
        attributes: dict[str, str] = {RPC_SYSTEM: "grpc", RPC_METHOD: f"{service}/{rpc}"}
        if request_id is not None:
            attributes[REQUEST_ID] = _word(request_id)
        span = self._tracer.start_span(
            f"{service}/{rpc}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        return _ServerSpan(span, parent)

    def step(self, name: str) -> AbstractContextManager[object]:
        """A child span of the current one for a named step (an upload check, an S3 call)."""
        if self._tracer is None:
            return _NO_STEP
        span = self._tracer.start_span(
            _word(name), record_exception=False, set_status_on_exception=False
        )
        return _Current(span, None)

    def flush(self, timeout_seconds: float = 5.0) -> None:
        """Export what is buffered, waiting at most `timeout_seconds` (blocks, as shutdown)."""
        if self._provider is not None:
            self._provider.force_flush(int(timeout_seconds * 1000))

    def shutdown(self, timeout_seconds: float = 5.0) -> None:
        """Export what is buffered (at most `timeout_seconds`), then stop. Blocks: call it
        from a thread (asyncio.to_thread) when an event loop is running."""
        if self._provider is not None:
            self.flush(timeout_seconds)
            self._provider.shutdown()


def _extract_function() -> Callable[[Mapping[str, str]], otel_context.Context]:
    """The propagators' extract (OTEL_PROPAGATORS; W3C trace context and baggage by default).

    Imported only when tracing is on: the import reads OTEL_PROPAGATORS and fails on a
    propagator that is not installed, which must not stop a service that does not trace.
    """
    try:
        from opentelemetry import propagate
    except ValueError:
        raise TracingSettingsError(
            "OTEL_PROPAGATORS", "names a propagator that is not installed (tracecontext is)"
        ) from None
    return propagate.extract


def current_trace_id() -> str | None:
    """The current span's trace id (32 hex digits) for log lines; None outside a trace."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def _resource(environ: Mapping[str, str]) -> Resource:
    ours: dict[str, str] = {"service.version": _version()}
    named = "service.name=" in (environ.get("OTEL_RESOURCE_ATTRIBUTES") or "")
    if not environ.get("OTEL_SERVICE_NAME") and not named:
        ours["service.name"] = SERVICE_NAME  # else the environment's name is kept
    return Resource.create(ours)


def _version() -> str:
    try:
        return distribution.version("avatar-signer")
    except distribution.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0+unknown"
