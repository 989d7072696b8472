"""The shape of the URLs the service returns (judged against S3 itself in test_s3_*)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.signing import upload_ids
from avatarsigner_server.telemetry import logs as observability
from google.protobuf import duration_pb2
from servers import FAKE_ENV, ServerThread, settings_from


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_upload_url_is_sigv4_on_the_regional_virtual_hosted_endpoint(
    stub: pb_grpc.AvatarSignerStub,
) -> None:
    """Verified mode (the default): a staging key, written at most once."""
    response = stub.CreateUploadUrl(
        pb.CreateUploadUrlRequest(user_id="alice", content_type="image/png", content_length=42)
    )
    ticket = upload_ids.parse(response.upload_id)
    assert ticket is not None and ticket.content_length == 42 and ticket.sha256 is None
    parts = urlsplit(response.url)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "avatars.s3.eu-west-1.amazonaws.com",
        f"/uploads/alice/{response.upload_id}",
    )
    query = _query(response.url)
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Credential"].split("/")[2:] == ["eu-west-1", "s3", "aws4_request"]
    assert query["X-Amz-SignedHeaders"] == (
        "cache-control;content-disposition;content-encoding;content-language;content-length;"
        "content-type;expires;host;if-none-match"
    )
    assert response.method == "PUT"
    assert dict(response.headers) == {
        "Content-Type": "image/png",
        "Content-Length": "42",
        "If-None-Match": "*",
        "Cache-Control": "private, max-age=0",
        "Content-Disposition": "inline",
        "Content-Encoding": "identity",
        "Content-Language": "und",
        "Expires": "Thu, 01 Jan 1970 00:00:00 GMT",
    }
    assert response.key == f"uploads/alice/{response.upload_id}"


def test_direct_mode_upload_url_writes_the_avatar_key(
    direct_stub: pb_grpc.AvatarSignerStub,
) -> None:
    response = direct_stub.CreateUploadUrl(
        pb.CreateUploadUrlRequest(user_id="alice", content_type="image/png", content_length=42)
    )
    assert urlsplit(response.url).path == "/profiles/alice/avatar"
    assert _query(response.url)["X-Amz-SignedHeaders"] == (
        "cache-control;content-disposition;content-encoding;content-language;content-length;"
        "content-type;expires;host"
    )
    assert dict(response.headers) == {
        "Content-Type": "image/png",
        "Content-Length": "42",
        "Cache-Control": "private, max-age=0",
        "Content-Disposition": "inline",
        "Content-Encoding": "identity",
        "Content-Language": "und",
        "Expires": "Thu, 01 Jan 1970 00:00:00 GMT",
    }
    assert (response.key, response.upload_id) == ("profiles/alice/avatar", "")


def test_upload_ids_are_unique_and_carry_the_signed_checksum(
    stub: pb_grpc.AvatarSignerStub,
) -> None:
    digest = hashlib.sha256(b"png bytes").digest()
    ids = {
        stub.CreateUploadUrl(
            pb.CreateUploadUrlRequest(
                user_id=f"user{n}",
                content_type="image/png",
                content_length=9,
                checksum_sha256=base64.b64encode(digest).decode(),
            )
        ).upload_id
        for n in range(20)
    }
    assert len(ids) == 20
    for upload_id in ids:
        ticket = upload_ids.parse(upload_id)
        assert ticket is not None and ticket.sha256 == digest and ticket.content_length == 9


def test_no_sdk_default_checksum_parameters(stub: pb_grpc.AvatarSignerStub) -> None:
    response = stub.CreateUploadUrl(
        pb.CreateUploadUrlRequest(user_id="alice", content_type="image/png", content_length=42)
    )
    names = {name.lower() for name in _query(response.url)}
    assert not {n for n in names if "checksum" in n or "sdk" in n}
    assert set(names) == {
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "x-amz-expires",
        "x-amz-signedheaders",
        "x-amz-signature",
    }


def test_checksum_is_signed_and_listed_in_headers(stub: pb_grpc.AvatarSignerStub) -> None:
    checksum = base64.b64encode(hashlib.sha256(b"png bytes").digest()).decode()
    response = stub.CreateUploadUrl(
        pb.CreateUploadUrlRequest(
            user_id="alice", content_type="image/webp", content_length=9, checksum_sha256=checksum
        )
    )
    assert _query(response.url)["X-Amz-SignedHeaders"] == (
        "cache-control;content-disposition;content-encoding;content-language;content-length;"
        "content-type;expires;host;if-none-match;x-amz-checksum-sha256"
    )
    assert response.headers["x-amz-checksum-sha256"] == checksum


def test_upload_and_download_use_their_own_identity(stub: pb_grpc.AvatarSignerStub) -> None:
    upload = stub.CreateUploadUrl(
        pb.CreateUploadUrlRequest(user_id="alice", content_type="image/png", content_length=1)
    )
    download = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice"))
    batch = stub.BatchCreateDownloadUrls(pb.BatchCreateDownloadUrlsRequest(user_ids=["a", "b"]))
    assert _query(upload.url)["X-Amz-Credential"].startswith(FAKE_ENV["S3_UPLOAD_KEY"] + "/")
    for url in [download.url, *(u.url for u in batch.urls)]:
        assert _query(url)["X-Amz-Credential"].startswith(FAKE_ENV["S3_READ_KEY"] + "/")
        assert _query(url)["X-Amz-SignedHeaders"] == "host"


@pytest.mark.parametrize(
    ("ttl", "expected"), [(None, 300), (1, 1), (1200, 1200)], ids=["default", "min", "max"]
)
def test_download_expiry_is_exact(
    stub: pb_grpc.AvatarSignerStub, ttl: int | None, expected: int
) -> None:
    request = pb.CreateDownloadUrlRequest(user_id="alice")
    if ttl is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl))
    before = int(time.time())
    response = stub.CreateDownloadUrl(request)
    after = int(time.time())
    query = _query(response.url)
    assert query["X-Amz-Expires"] == str(expected)
    signed_at = time.mktime(time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")) - time.timezone
    assert response.expires_at.seconds == int(signed_at) + expected
    assert before + expected <= response.expires_at.seconds <= after + expected
    assert response.expires_at.nanos == 0


def test_upload_default_ttl_is_ten_minutes(stub: pb_grpc.AvatarSignerStub) -> None:
    response = stub.CreateUploadUrl(
        pb.CreateUploadUrlRequest(user_id="alice", content_type="image/jpeg", content_length=1)
    )
    assert _query(response.url)["X-Amz-Expires"] == "600"


def test_endpoint_url_gives_path_style_urls() -> None:
    server = ServerThread(
        settings_from(S3_ENDPOINT_URL="http://127.0.0.1:8333", S3_BUCKET="my.bucket")
    )
    try:
        with server.channel() as channel:
            response = pb_grpc.AvatarSignerStub(channel).CreateDownloadUrl(
                pb.CreateDownloadUrlRequest(user_id="bob")
            )
    finally:
        server.stop()
    assert response.url.startswith("http://127.0.0.1:8333/my.bucket/profiles/bob/avatar?")


def test_key_prefix_setting_is_applied() -> None:
    server = ServerThread(settings_from(S3_KEY_PREFIX="tenant-1/avatars/"))
    try:
        with server.channel() as channel:
            response = pb_grpc.AvatarSignerStub(channel).CreateDownloadUrl(
                pb.CreateDownloadUrlRequest(user_id="bob")
            )
    finally:
        server.stop()
    assert response.key == "tenant-1/avatars/bob/avatar"


def _audit_lines(
    stub: pb_grpc.AvatarSignerStub, caplog: pytest.LogCaptureFixture
) -> list[dict[str, object]]:
    """A batch of three downloads (one id twice, ttl 120 s), then an upload: the audit
    lines they gave, as printed and parsed."""
    caplog.set_level(logging.INFO, logger="avatarsigner.audit")
    ttl = duration_pb2.Duration(seconds=120)
    ids = ["zed", "amy", "zed"]
    stub.BatchCreateDownloadUrls(pb.BatchCreateDownloadUrlsRequest(user_ids=ids, ttl=ttl))
    stub.CreateUploadUrl(
        pb.CreateUploadUrlRequest(user_id="bob", content_type="image/png", content_length=5)
    )
    formatter = observability.JsonFormatter()
    text = "\n".join(formatter.format(r) for r in caplog.records if r.name.endswith("audit"))
    assert "X-Amz" not in text and "http" not in text
    return [json.loads(line) for line in text.splitlines()]


def test_one_audit_line_per_download_call_and_per_upload_url_without_the_url(
    stub: pb_grpc.AvatarSignerStub, caplog: pytest.LogCaptureFixture
) -> None:
    batch, upload = _audit_lines(stub, caplog)
    assert (batch["rpc"], batch["reason"], batch["count"], batch["ttl_seconds"]) == (
        "BatchCreateDownloadUrls",
        "signed",
        3,
        120,
    )
    assert "user_id" not in batch and "key" not in batch
    assert str(batch["expires_at"]).endswith("+00:00")
    assert (upload["rpc"], upload["user_id"]) == ("CreateUploadUrl", "bob")
    assert str(upload["key"]).startswith("uploads/bob/")
    assert str(upload["expires_at"]).endswith("+00:00")


def test_audit_download_ids_gives_one_line_per_download_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = ServerThread(settings_from(FAKE_ENV, AUDIT_DOWNLOAD_IDS="true"))
    try:
        with server.channel() as channel:
            lines = _audit_lines(pb_grpc.AvatarSignerStub(channel), caplog)
    finally:
        server.stop()
    assert [(line["rpc"], line["user_id"]) for line in lines] == [
        ("BatchCreateDownloadUrls", "zed"),
        ("BatchCreateDownloadUrls", "amy"),
        ("BatchCreateDownloadUrls", "zed"),
        ("CreateUploadUrl", "bob"),
    ]
    assert all(line["key"] == f"profiles/{line['user_id']}/avatar" for line in lines[:3])
    assert all(str(line["expires_at"]).endswith("+00:00") for line in lines)
