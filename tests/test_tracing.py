"""Traces: our span continues the caller's trace, says what happened, and holds no secret.

A real grpc.aio server on 127.0.0.1 serves a stand-in AvatarSigner (the generated stubs,
a servicer returning a presigned-looking URL) behind a small interceptor that calls the
tracing API as the service's interceptor will. The caller's span comes from a provider of
its own; both providers export to in-memory exporters. One test exports over OTLP/gRPC to
a real collector endpoint (the trace service from opentelemetry-proto) configured only
through OTEL_* variables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from typing import Any, TypeVar

import grpc
import leaks
import pytest
import uvloop
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.telemetry.tracing import (
    ATTRIBUTES,
    Tracing,
    TracingSettingsError,
    current_trace_id,
    wanted,
)
from opentelemetry import propagate
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from servers import free_port

T = TypeVar("T")
SERVICE = pb.DESCRIPTOR.services_by_name["AvatarSigner"].full_name
TOKEN = "caller-token-7c1d0e9b4a5f"
SECRET = "uploader-secret-1f2e3d4c5b6a"
KEY_ID = "AKIAEXAMPLEKEYID0001"
URL = (
    "https://avatars.s3.eu-west-1.amazonaws.com/profiles/alice/avatar?X-Amz-Algorithm="
    f"AWS4-HMAC-SHA256&X-Amz-Credential={KEY_ID}%2F20300101&X-Amz-Signature={'ab' * 32}"
)
leaks.remember(TOKEN, SECRET, KEY_ID)


def run(coro: Awaitable[T]) -> T:
    return uvloop.run(coro)  # type: ignore[arg-type]


class Refused(Exception):
    """A refusal with a fixed reason word, as the service's errors carry."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"refused: {reason}")
        self.reason = reason


class StandInSigner(pb_grpc.AvatarSignerServicer):  # type: ignore[misc]
    """CreateUploadUrl with two upload-check steps; user ids choose a refusal or a crash."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self.trace_ids: list[str | None] = []

    async def CreateUploadUrl(self, request: Any, context: Any) -> Any:
        self.trace_ids.append(current_trace_id())  # what a log line would carry
        with self.tracing.step("upload_check.end_user"):
            pass
        with self.tracing.step("upload_check.rate_limit"):
            if request.user_id == "over-limit":
                raise Refused("rate_limited_user")
            if request.user_id == "crash":
                raise RuntimeError(f"signing failed with {SECRET} for {URL}")
        return pb.CreateUploadUrlResponse(url=URL, method="PUT", key="profiles/alice/avatar")


class TracedCalls(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The tracing calls the service's interceptor makes, around a bare authentication."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        prefix = f"/{SERVICE}/"
        if handler is None or not details.method.startswith(prefix):
            return handler
        rpc, inner = details.method[len(prefix) :], handler.unary_unary

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metadata = {
                key.lower(): value
                for key, value in (context.invocation_metadata() or ())
                if isinstance(value, str)
            }
            with self.tracing.rpc(SERVICE, rpc, metadata, metadata.get("x-request-id")) as span:
                known = metadata.get("authorization") == f"Bearer {TOKEN}"
                span.caller("profile-service" if known else "anonymous", "token")
                span.count(1)
                try:
                    response = await inner(request, context)
                except Refused as refusal:
                    span.outcome("RESOURCE_EXHAUSTED", refusal.reason)
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many uploads")
                except Exception:  # noqa: BLE001 - answered INTERNAL, as the service does
                    span.outcome("INTERNAL")
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error")
                span.outcome("OK", "signed")
                return response

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class Caller:
    """The calling service: its own tracer provider, injecting `traceparent` into metadata."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("caller")


async def serve_and_call(
    tracing: Tracing, calls: Callable[[pb_grpc.AvatarSignerStub], Awaitable[T]]
) -> tuple[T, StandInSigner]:
    servicer = StandInSigner(tracing)
    server = grpc.aio.server(interceptors=[TracedCalls(tracing)])
    pb_grpc.add_AvatarSignerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await calls(pb_grpc.AvatarSignerStub(channel)), servicer
    finally:
        await server.stop(None)


def upload(user_id: str = "alice") -> Any:
    return pb.CreateUploadUrlRequest(user_id=user_id, content_type="image/png", content_length=9)


def auth(**extra: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKEN}"), ("x-request-id", "req-42"), *extra.items())


@pytest.fixture
def ours() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = Tracing.exporting_to(exporter)
    yield tracing, exporter
    tracing.shutdown()


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.kind == kind]


# -- propagation ----------------------------------------------------------------------------


def test_our_span_continues_the_callers_trace(ours: tuple[Tracing, InMemorySpanExporter]) -> None:
    tracing, exporter = ours
    caller = Caller()

    async def call(stub: pb_grpc.AvatarSignerStub) -> None:
        with caller.tracer.start_as_current_span("profile-service upload", kind=SpanKind.CLIENT):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            await stub.CreateUploadUrl(upload(), metadata=auth(**carrier))

    _, servicer = run(serve_and_call(tracing, call))
    (theirs,) = caller.exporter.get_finished_spans()
    spans = exporter.get_finished_spans()
    (server,) = by_kind(spans, SpanKind.SERVER)
    steps = by_kind(spans, SpanKind.INTERNAL)
    assert server.context is not None and theirs.context is not None
    assert server.context.trace_id == theirs.context.trace_id
    assert server.parent is not None and server.parent.is_remote
    assert server.parent.span_id == theirs.context.span_id
    assert server.name == f"{SERVICE}/CreateUploadUrl"
    assert dict(server.attributes or {}) == {
        "rpc.system.name": "grpc",
        "rpc.method": f"{SERVICE}/CreateUploadUrl",
        "rpc.response.status_code": "OK",
        "avatarsigner.caller": "profile-service",
        "avatarsigner.auth": "token",
        "avatarsigner.count": 1,
        "avatarsigner.outcome": "signed",
        "avatarsigner.request_id": "req-42",
    }
    assert server.status.status_code == StatusCode.UNSET
    assert [step.name for step in steps] == ["upload_check.end_user", "upload_check.rate_limit"]
    for step in steps:
        assert step.parent is not None and step.parent.span_id == server.context.span_id
    # Log lines written while serving carry the caller's trace id.
    assert servicer.trace_ids == [format(theirs.context.trace_id, "032x")]


@pytest.mark.parametrize(
    "traceparent",
    [None, "00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-00f067aa0ba902b7-01", "garbage"],
    ids=["absent", "malformed-ids", "garbage"],
)
def test_without_a_valid_traceparent_our_span_starts_a_trace(
    ours: tuple[Tracing, InMemorySpanExporter], traceparent: str | None
) -> None:
    tracing, exporter = ours
    extra = {} if traceparent is None else {"traceparent": traceparent}

    async def call(stub: pb_grpc.AvatarSignerStub) -> None:
        await stub.CreateUploadUrl(upload(), metadata=auth(**extra))

    _, servicer = run(serve_and_call(tracing, call))
    (server,) = by_kind(exporter.get_finished_spans(), SpanKind.SERVER)
    assert server.parent is None
    assert server.context is not None
    assert servicer.trace_ids == [format(server.context.trace_id, "032x")]


# -- outcomes -------------------------------------------------------------------------------


def test_a_refusal_is_an_outcome_and_a_crash_is_an_error_of_the_server(
    ours: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = ours

    async def calls(stub: pb_grpc.AvatarSignerStub) -> list[grpc.StatusCode]:
        codes = []
        for user_id in ("over-limit", "crash"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateUploadUrl(upload(user_id), metadata=auth())
            codes.append(caught.value.code())
        return codes

    codes, _ = run(serve_and_call(tracing, calls))
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL]
    refused, crashed = by_kind(exporter.get_finished_spans(), SpanKind.SERVER)
    assert refused.attributes is not None and crashed.attributes is not None
    assert dict(refused.attributes) == {
        "rpc.system.name": "grpc",
        "rpc.method": f"{SERVICE}/CreateUploadUrl",
        "rpc.response.status_code": "RESOURCE_EXHAUSTED",
        "avatarsigner.caller": "profile-service",
        "avatarsigner.auth": "token",
        "avatarsigner.count": 1,
        "avatarsigner.outcome": "rate_limited_user",
        "avatarsigner.request_id": "req-42",
    }
    assert refused.status.status_code == StatusCode.UNSET  # the caller's doing
    assert crashed.attributes["rpc.response.status_code"] == "INTERNAL"
    assert crashed.attributes["error.type"] == "INTERNAL"
    assert crashed.status.status_code == StatusCode.ERROR
    checks = [
        dict(span.attributes or {})
        for span in by_kind(exporter.get_finished_spans(), SpanKind.INTERNAL)
        if span.name == "upload_check.rate_limit"
    ]
    # The step that refused says why by its fixed word; the one that crashed, by a type name.
    assert checks == [
        {"error.type": "Refused", "avatarsigner.outcome": "rate_limited_user"},
        {"error.type": "RuntimeError"},
    ]


def test_no_url_signature_token_key_id_or_secret_in_any_span(
    ours: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = ours
    caller = Caller()

    async def calls(stub: pb_grpc.AvatarSignerStub) -> None:
        with caller.tracer.start_as_current_span("caller"):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            for user_id in ("alice", "over-limit", "crash"):
                for metadata in (auth(**carrier), (("authorization", f"Bearer {SECRET}"),)):
                    try:
                        await stub.CreateUploadUrl(upload(user_id), metadata=metadata)
                    except grpc.aio.AioRpcError:
                        pass

    run(serve_and_call(tracing, calls))
    spans = exporter.get_finished_spans()
    assert len(by_kind(spans, SpanKind.SERVER)) == 6
    text = "\n".join(span.to_json() for span in spans)
    for forbidden in (TOKEN, SECRET, KEY_ID, URL, "X-Amz-", "https://", "Bearer", "signing failed"):
        assert forbidden not in text, forbidden
    assert not [event for span in spans for event in span.events]  # no exception events
    assert leaks.find(text.splitlines()) == []
    keys = {key for span in spans for key in (span.attributes or {})}
    assert keys <= ATTRIBUTES


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "avatars", "OTEL_TRACES_SAMPLER": "always_on"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_TRACES_EXPORTER": "otlp"}, True),
    ],
    ids=[
        "nothing",
        "no-exporter-or-endpoint",
        "endpoint",
        "traces-endpoint",
        "otlp",
        "console",
        "exporter-none",
        "sdk-disabled",
        "sdk-not-disabled",
        "grpc-protocol",
    ],
)
def test_tracing_is_off_unless_configured(environ: dict[str, str], on: bool) -> None:
    assert wanted(environ) is on


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
    ],
    ids=["zipkin", "two-exporters", "http", "traces-http-json"],
)
def test_settings_it_cannot_honour_fail_in_one_line(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(TracingSettingsError) as caught:
        wanted(environ)
    assert str(caught.value).startswith(f"{variable}: ") and "\n" not in str(caught.value)


PROPAGATORS_CHECK = """
import os, sys
from avatarsigner_server.telemetry.tracing import Tracing, TracingSettingsError
assert not Tracing.from_environ({}).enabled  # off: OTEL_PROPAGATORS is not even read
try:
    Tracing.from_environ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
except TracingSettingsError as error:
    print(error)
"""


def test_a_propagator_that_is_not_installed_stops_only_a_traced_service() -> None:
    env = {**os.environ, "OTEL_PROPAGATORS": "tracecontext,b3"}
    done = subprocess.run(
        [sys.executable, "-c", PROPAGATORS_CHECK], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "OTEL_PROPAGATORS: names a propagator that is not installed (tracecontext is)"
    ]


def test_off_is_one_shared_do_nothing_span() -> None:
    tracing = Tracing.off()

    async def call(stub: pb_grpc.AvatarSignerStub) -> None:
        await stub.CreateUploadUrl(upload(), metadata=auth(traceparent=TRACEPARENT))

    _, servicer = run(serve_and_call(tracing, call))
    assert not tracing.enabled
    assert tracing.rpc(SERVICE, "CreateUploadUrl", {}) is tracing.rpc(SERVICE, "X", {})
    assert servicer.trace_ids == [None]


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP/gRPC trace endpoint that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def Export(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_otel_variables_alone_send_spans_to_an_otlp_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    try:
        tracing = Tracing.from_environ(os.environ)
        assert tracing.enabled
        with tracing.rpc(SERVICE, "CreateDownloadUrl", {"traceparent": TRACEPARENT}) as span:
            span.outcome("OK", "signed")
        tracing.shutdown()
    finally:
        server.stop(None)
    spans = [
        (resource_spans.resource, span)
        for request in collector.requests
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    assert len(spans) == 1
    resource, span = spans[0]
    assert span.trace_id.hex() == TRACEPARENT.split("-")[1]
    assert span.name == f"{SERVICE}/CreateDownloadUrl"
    resource_attributes = {a.key: a.value.string_value for a in resource.attributes}
    assert resource_attributes["service.name"] == "avatar-signer"
    assert resource_attributes["deployment.environment.name"] == "test"
