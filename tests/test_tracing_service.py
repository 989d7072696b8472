"""Traces of the real server: the caller's trace continues in ours, and no span holds a secret.

The server is the production `AvatarSignerServer` with its tracing exporting to an
in-memory exporter; the caller is a service with a tracer provider of its own, calling
through the Python client, which propagates its context. One test runs `avatar-signer
serve` with only OTEL_* variables set (the console exporter) and reads its log lines and
spans after the drain.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import leaks
import pytest
from avatarsigner import AvatarSignerClient, AvatarSignerError, upload_bytes
from avatarsigner._propagation import trace_metadata
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.telemetry.tracing import ATTRIBUTES, Tracing
from conftest import verified_env
from cryptography.hazmat.primitives.asymmetric import rsa
from guarded import caller, new_token, write_callers
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from PIL import Image
from redis_server import RedisServer
from servers import FAKE_ENV, ServerThread, free_port, settings_from, wait_serving
from test_cloudfront_service import ORIGIN, cloudfront_env
from test_tracing import Caller

SERVICE = "avatarsigner.v1.AvatarSigner"
PROFILE = caller("profile-service", ["CreateUploadUrl", "CreateDownloadUrl"])
FEED = caller("feed-service", ["CreateDownloadUrl", "BatchCreateDownloadUrls"])
VIEWER = caller("web-app", ["CreateViewerCookies"])
JWT_SECRET = "end-user-hs256-secret-7d2c9f41e8b3a6d5c0f1"
ISSUER, AUDIENCE = "https://id.example.test/", "avatar-signer"
USER = "user-5be2a1"  # no span may name a user either
leaks.remember(JWT_SECRET)


def end_user_token(sub: str) -> str:
    now = int(time.time())
    token = jwt.encode(
        {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300},
        JWT_SECRET,
        algorithm="HS256",
    )
    leaks.remember(token)
    return token


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(
    tmp_path: Path, exporter: InMemorySpanExporter, redis_server: RedisServer
) -> Iterator[ServerThread]:
    """The server with callers, end-user tokens and limits shared through a real store."""
    settings = settings_from(
        CALLERS_FILE=str(write_callers(tmp_path / "callers.toml", [PROFILE, FEED])),
        END_USER_JWT_SECRET=JWT_SECRET,
        END_USER_JWT_ISSUER=ISSUER,
        END_USER_JWT_AUDIENCE=AUDIENCE,
        RATE_LIMIT_REDIS_URL=redis_server.url,
        UPLOADS_PER_USER_PER_SECOND="0.001",
        UPLOADS_PER_USER_BURST="2",
    )
    tracing = Tracing.exporting_to(exporter)
    running = ServerThread(settings, tracing=tracing)
    yield running
    running.stop()


def server_spans(exporter: InMemorySpanExporter, count: int | None = None) -> list[ReadableSpan]:
    """The SERVER spans; with `count`, once that many have ended (a refusal's status can
    reach the client a moment before the server's span ends)."""
    deadline = time.monotonic() + 10
    while True:
        spans = [span for span in exporter.get_finished_spans() if span.kind == SpanKind.SERVER]
        if count is None or len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.01)


def children_of(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[str]:
    assert parent.context is not None
    return [
        span.name
        for span in exporter.get_finished_spans()
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    ]


def test_the_callers_trace_reaches_our_span_through_the_client(
    traced: ServerThread, exporter: InMemorySpanExporter
) -> None:
    theirs = Caller()
    with AvatarSignerClient(traced.target, metadata=PROFILE.metadata()) as client:
        with theirs.tracer.start_as_current_span("save profile picture", kind=SpanKind.CLIENT):
            client.create_upload_url(USER, "image/png", 9, end_user_token=end_user_token(USER))
    (their_span,) = theirs.exporter.get_finished_spans()
    (ours,) = server_spans(exporter, 1)
    assert ours.context is not None and their_span.context is not None
    assert ours.context.trace_id == their_span.context.trace_id
    assert ours.parent is not None and ours.parent.is_remote
    assert ours.parent.span_id == their_span.context.span_id
    assert ours.name == f"{SERVICE}/CreateUploadUrl"
    attributes = dict(ours.attributes or {})
    request_id = attributes.pop("avatarsigner.request_id")
    assert isinstance(request_id, str) and len(request_id) == 32
    assert attributes == {
        "rpc.system.name": "grpc",
        "rpc.method": f"{SERVICE}/CreateUploadUrl",
        "rpc.response.status_code": "OK",
        "avatarsigner.caller": "profile-service",
        "avatarsigner.auth": "token",
        "avatarsigner.count": 1,
    }
    # The caller limit on the store, then each upload check, as child steps.
    assert children_of(exporter, ours) == [
        "rate_limit.caller",
        "upload_check.end_user_token",
        "upload_check.rate_limit_user",
    ]


def test_a_refusal_says_its_code_and_reason_on_our_span(
    traced: ServerThread, exporter: InMemorySpanExporter
) -> None:
    with AvatarSignerClient(traced.target, metadata=PROFILE.metadata()) as client:
        token = end_user_token(USER)
        for _ in range(2):
            client.create_upload_url(USER, "image/png", 9, end_user_token=token)
        with pytest.raises(AvatarSignerError):  # the user's 2 uploads are used up
            client.create_upload_url(USER, "image/png", 9, end_user_token=token)
        with pytest.raises(AvatarSignerError):  # another user's token
            client.create_upload_url(USER, "image/png", 9, end_user_token=end_user_token("eve"))
    with AvatarSignerClient(traced.target, metadata=FEED.metadata()) as client:
        with pytest.raises(AvatarSignerError):  # feed-service may not upload
            client.create_upload_url(USER, "image/png", 9)
        with pytest.raises(AvatarSignerError):  # refused by validation, in the handler
            client.batch_create_download_urls([USER, "../etc"])
    outcomes = [
        (
            span.attributes.get("rpc.response.status_code"),
            span.attributes.get("avatarsigner.outcome"),
            span.status.status_code.name,
        )
        for span in server_spans(exporter, 6)
        if span.attributes is not None
    ]
    assert outcomes[2:] == [
        ("RESOURCE_EXHAUSTED", "rate_limited_user", "UNSET"),
        ("PERMISSION_DENIED", "end_user_mismatch", "UNSET"),
        ("PERMISSION_DENIED", "rpc_not_allowed", "UNSET"),
        ("INVALID_ARGUMENT", "invalid_argument", "UNSET"),
    ]


def test_the_store_down_in_closed_mode_is_an_error_of_the_server_on_the_span(
    tmp_path: Path, exporter: InMemorySpanExporter, redis_server: RedisServer
) -> None:
    settings = settings_from(
        CALLERS_FILE=str(write_callers(tmp_path / "callers.toml", [PROFILE])),
        RATE_LIMIT_REDIS_URL=redis_server.url,
        RATE_LIMIT_REDIS_FAILURE="closed",
    )
    running = ServerThread(settings, tracing=Tracing.exporting_to(exporter))
    try:
        redis_server.stop()
        # One attempt, one span: without the default service config nothing retries.
        with AvatarSignerClient(
            running.target, metadata=PROFILE.metadata(), service_config=None
        ) as client:
            with pytest.raises(AvatarSignerError) as caught:
                client.create_upload_url(USER, "image/png", 9)
    finally:
        running.stop()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    (span,) = server_spans(exporter, 1)
    assert span.attributes is not None
    assert span.attributes["avatarsigner.outcome"] == "rate_limit_store_unavailable"
    assert span.attributes["error.type"] == "UNAVAILABLE"
    assert span.status.status_code.name == "ERROR"
    (step,) = [s for s in exporter.get_finished_spans() if s.name == "rate_limit.caller"]
    assert dict(step.attributes or {}) == {
        "error.type": "Unavailable",
        "avatarsigner.outcome": "rate_limit_store_unavailable",
    }


def test_no_url_signature_token_key_id_user_or_secret_in_any_span_of_a_whole_run(
    traced: ServerThread, exporter: InMemorySpanExporter, redis_server: RedisServer
) -> None:
    theirs = Caller()
    answers: list[str] = []  # every URL handed out
    unknown = new_token()
    stranger = (("authorization", f"Bearer {unknown}"),)
    with theirs.tracer.start_as_current_span("caller"):
        for metadata in (PROFILE.metadata(), FEED.metadata(), stranger):
            with AvatarSignerClient(traced.target, metadata=metadata) as client:
                calls: list[Any] = [
                    lambda: answers.append(client.create_upload_url(
                        USER, "image/png", 9, end_user_token=end_user_token(USER)).url),
                    lambda: answers.append(client.create_upload_url(
                        USER, "image/png", 9, end_user_token=end_user_token("eve")).url),
                    lambda: answers.append(client.create_upload_url(USER, "image/png", 9).url),
                    lambda: answers.append(client.create_download_url(USER).url),
                    lambda: answers.extend(u.url for u in client.batch_create_download_urls(
                        [USER, "user-9c1d"])),
                    lambda: client.create_download_url("not a user id"),
                ]  # fmt: skip
                for call in calls * 2:
                    try:
                        call()
                    except AvatarSignerError:
                        pass
        redis_server.stop()  # and the store gone (open mode): the fallback, traced too
        with AvatarSignerClient(traced.target, metadata=PROFILE.metadata()) as client:
            answers.append(
                client.create_upload_url("user-3e8f", "image/png", 9,
                                         end_user_token=end_user_token("user-3e8f")).url
            )  # fmt: skip
    assert len(server_spans(exporter, 37)) == 37
    spans = exporter.get_finished_spans()
    assert len(answers) >= 6
    text = "\n".join(span.to_json() for span in spans)
    forbidden = [
        *answers,
        *(answer.split("?", 1)[1] for answer in answers),
        PROFILE.token or "",
        FEED.token or "",
        unknown,
        JWT_SECRET,
        *(FAKE_ENV[name] for name in ("S3_UPLOAD_KEY", "S3_UPLOAD_SECRET", "S3_READ_KEY",
                                      "S3_READ_SECRET")),
        USER,
        "user-9c1d",
        "profiles/",
        "X-Amz-",
        "https://",
        "Bearer",
        "eyJ",
        redis_server.url,
    ]  # fmt: skip
    for value in forbidden:
        assert value and value not in text, value
    assert leaks.find(text.splitlines()) == []
    assert not [event for span in spans for event in span.events]  # no exception events
    assert {key for span in spans for key in (span.attributes or {})} <= ATTRIBUTES


def test_viewer_cookies_are_traced_through_the_shared_limit_and_no_span_holds_a_cookie(
    tmp_path: Path, exporter: InMemorySpanExporter, redis_server: RedisServer
) -> None:
    env = cloudfront_env(
        tmp_path,
        rsa.generate_private_key(65537, 2048),
        CALLERS_FILE=str(write_callers(tmp_path / "callers.toml", [VIEWER])),
        RATE_LIMIT_REDIS_URL=redis_server.url,
        DOWNLOADS_PER_CALLER_PER_SECOND="0.001",
        DOWNLOADS_PER_CALLER_BURST="2",
    )
    running = ServerThread(settings_from(env), tracing=Tracing.exporting_to(exporter))
    theirs = Caller()
    try:
        with AvatarSignerClient(running.target, metadata=VIEWER.metadata()) as client:
            with theirs.tracer.start_as_current_span("feed page", kind=SpanKind.CLIENT):
                grants = [client.create_viewer_cookies()]
            grants.append(client.create_viewer_cookies(ttl=600))
            with pytest.raises(AvatarSignerError) as caught:  # the caller's 2 are used up
                client.create_viewer_cookies()
    finally:
        running.stop()
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    (their_span,) = theirs.exporter.get_finished_spans()
    first, second, refused = server_spans(exporter, 3)
    assert first.context is not None and their_span.context is not None
    assert first.context.trace_id == their_span.context.trace_id
    attributes = dict(first.attributes or {})
    attributes.pop("avatarsigner.request_id")
    assert attributes == {
        "rpc.system.name": "grpc",
        "rpc.method": f"{SERVICE}/CreateViewerCookies",
        "rpc.response.status_code": "OK",
        "avatarsigner.caller": "web-app",
        "avatarsigner.auth": "token",
        "avatarsigner.count": 1,
    }
    for span in (first, second, refused):  # the caller's limit, checked in the store
        assert children_of(exporter, span) == ["rate_limit.caller"]
    assert refused.attributes is not None
    assert refused.attributes["rpc.response.status_code"] == "RESOURCE_EXHAUSTED"
    assert refused.attributes["avatarsigner.outcome"] == "rate_limited_caller"
    assert refused.status.status_code.name == "UNSET"
    spans = exporter.get_finished_spans()
    text = "\n".join(span.to_json() for span in spans)
    forbidden = [
        *(value for grant in grants for value in grant.cookies.values()),
        *(header for grant in grants for header in grant.set_cookie),
        "CloudFront-",
        env["CLOUDFRONT_KEY_PAIR_ID"],
        ORIGIN,
        "https://",
        VIEWER.token or "",
        redis_server.url,
    ]
    for value in forbidden:
        assert value and value not in text, value
    assert leaks.find(text.splitlines()) == []
    assert {key for span in spans for key in (span.attributes or {})} <= ATTRIBUTES


def test_viewer_cookies_without_cloudfront_say_why_on_the_span(
    exporter: InMemorySpanExporter,
) -> None:
    running = ServerThread(settings_from(), tracing=Tracing.exporting_to(exporter))
    try:
        with AvatarSignerClient(running.target) as client:
            with pytest.raises(AvatarSignerError) as caught:
                client.create_viewer_cookies()
    finally:
        running.stop()
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    (span,) = server_spans(exporter, 1)
    assert span.name == f"{SERVICE}/CreateViewerCookies"
    assert span.attributes is not None
    assert span.attributes["rpc.response.status_code"] == "FAILED_PRECONDITION"
    assert span.attributes["avatarsigner.outcome"] == "cloudfront_not_configured"
    assert "error.type" not in span.attributes  # the server's configuration, not a fault
    assert span.status.status_code.name == "UNSET"


def test_confirm_uploads_s3_calls_are_steps_of_its_span(
    verified_s3: Any, exporter: InMemorySpanExporter
) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 40, 90)).save(picture, "PNG")
    data = picture.getvalue()
    running = ServerThread(
        settings_from(verified_env(*verified_s3)), tracing=Tracing.exporting_to(exporter)
    )
    try:
        with AvatarSignerClient(running.target) as client:
            upload = client.create_upload_url(USER, "image/png", len(data))
            upload_bytes(upload, data)
            first_answer = client.confirm_upload(USER, upload.upload_id)
            again = client.confirm_upload(USER, upload.upload_id)  # answered from its marker
    finally:
        running.stop()
    assert again.version == first_answer.version
    first, second = (
        span for span in server_spans(exporter, 3) if span.name.endswith("/ConfirmUpload")
    )
    assert children_of(exporter, first) == [
        "confirm.read_tombstone",
        "confirm.read_marker",
        "confirm.read_staged",
        "confirm.verify_image",
        "confirm.write_avatar",
        "confirm.recheck_tombstone",
        "confirm.write_marker",
    ]
    assert children_of(exporter, second) == ["confirm.read_tombstone", "confirm.read_marker"]
    text = "\n".join(span.to_json() for span in exporter.get_finished_spans())
    for forbidden in (USER, upload.upload_id, "X-Amz-", "https://", "http://"):
        assert forbidden not in text, forbidden
    assert leaks.find(text.splitlines()) == []


def test_the_client_sends_the_trace_context_only_inside_a_trace() -> None:
    theirs = Caller()
    assert trace_metadata() == ()  # no current span: nothing to send
    with theirs.tracer.start_as_current_span("caller") as span:
        pairs = dict(trace_metadata())
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert pairs["traceparent"].split("-")[1] == trace_id


WITHOUT_OPENTELEMETRY = """
import sys
sys.modules["opentelemetry"] = None  # as if not installed
from avatarsigner import AvatarSignerClient
from avatarsigner._propagation import trace_metadata
assert trace_metadata() == ()
with AvatarSignerClient(sys.argv[1]) as client:
    print(client.create_download_url("alice").key)
"""


def test_the_client_works_without_opentelemetry(server: ServerThread) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPENTELEMETRY, server.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "profiles/alice/avatar"


@pytest.mark.slow
def test_serve_with_otel_variables_logs_trace_ids_and_exports_on_drain(tmp_path: Path) -> None:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_", "OTEL_"))}
    env = clean | FAKE_ENV | {
        "GRPC_PORT": str(port),
        "CALLERS_FILE": str(write_callers(tmp_path / "callers.toml", [PROFILE])),
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "avatars-test",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    theirs = Caller()
    try:
        wait_serving(f"127.0.0.1:{port}", time.monotonic() + 30)
        with AvatarSignerClient(f"127.0.0.1:{port}", metadata=PROFILE.metadata()) as client:
            with theirs.tracer.start_as_current_span("caller") as span:
                url = client.create_upload_url(USER, "image/png", 9).url
            client.create_download_url(USER)  # outside the caller's trace: a trace of ours
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    trace_id = format(span.get_span_context().trace_id, "032x")
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    audit = [line for line in lines if line["logger"] == "avatarsigner.audit"]
    assert [line["rpc"] for line in audit] == ["CreateUploadUrl", "CreateDownloadUrl"]
    assert audit[0]["trace_id"] == trace_id
    assert len(audit[1]["trace_id"]) == 32 and audit[1]["trace_id"] != trace_id
    outside = [line for line in lines if line["msg"] in ("serving", "stopped")]
    assert len(outside) == 2 and not [line for line in outside if "trace_id" in line]
    assert next(line for line in lines if line["msg"] == "serving")["tracing"] == "on"
    # The console exporter printed both spans at the drain, with the caller's trace id.
    assert f'"trace_id": "0x{trace_id}"' in stdout
    assert stdout.count('"kind": "SpanKind.SERVER"') == 2
    assert '"service.name": "avatars-test"' in stdout
    assert url not in stdout and url.split("?", 1)[1] not in stdout
    assert leaks.find(stdout.splitlines()) == [] and leaks.find(stderr.splitlines()) == []


def test_an_unknown_caller_chooses_neither_the_trace_nor_whether_it_is_sampled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator samples new traces at a ratio (here 0); a caller's sampled traceparent
    is continued once the caller is known, never before: refusals of unknown callers
    would otherwise all be recorded, in traces of their choosing."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    exporter = InMemorySpanExporter()
    settings = settings_from(CALLERS_FILE=str(write_callers(tmp_path / "callers.toml", [FEED])))
    running = ServerThread(settings, tracing=Tracing.exporting_to(exporter))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")  # sampled
    ask = pb.CreateDownloadUrlRequest(user_id=USER)
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            for unknown in ((parent,), (parent, ("authorization", f"Bearer {new_token()}"))):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.CreateDownloadUrl(ask, metadata=unknown, timeout=15)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            stub.CreateDownloadUrl(ask, metadata=(parent, *FEED.metadata()), timeout=15)
    finally:
        running.stop()  # every span has ended
    spans = server_spans(exporter)
    assert [(span.attributes or {}).get("avatarsigner.caller") for span in spans] == [
        "feed-service"
    ]
    assert spans[0].context is not None and spans[0].context.trace_id == int(trace_id, 16)
