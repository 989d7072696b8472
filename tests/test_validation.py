"""Hostile and malformed requests are refused with INVALID_ARGUMENT naming each field.

All through a real gRPC server: the status code, the google.rpc.BadRequest details and the
absence of any URL are what a caller sees.
"""

from __future__ import annotations

import base64
import hashlib

import grpc
import pytest
from avatarsigner import AvatarSignerClient, AvatarSignerError
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from servers import ServerThread

HOSTILE_USER_IDS = {
    "empty": "",
    "dot-dot": "..",
    "traversal": "../alice",
    "traversal-deep": "a/../../b",
    "slash": "alice/bob",
    "leading-slash": "/alice",
    "trailing-slash": "alice/",
    "encoded-slash": "alice%2Fbob",
    "encoded-slash-lower": "alice%2fbob",
    "double-encoded": "alice%252Fbob",
    "encoded-dot-dot": "%2e%2e",
    "backslash": "alice\\bob",
    "backslash-traversal": "..\\alice",
    "fullwidth-solidus": "alice\uff0fbob",
    "division-slash": "alice\u2215bob",
    "cyrillic-a": "\u0430lice",
    "greek-omicron": "b\u03bfb",
    "fullwidth-letters": "\uff41\uff4c\uff49",
    "nul": "alice\x00",
    "nul-middle": "al\x00ice",
    "newline": "alice\n",
    "carriage-return": "alice\r",
    "tab": "ali\tce",
    "escape": "alice\x1b[31m",
    "del": "alice\x7f",
    "space": "alice bob",
    "leading-space": " alice",
    "trailing-space": "alice ",
    "nbsp": "alice\u00a0",
    "zero-width-space": "ali\u200bce",
    "rtl-override": "alice\u202egnp",
    "leading-dot": ".alice",
    "leading-dash": "-alice",
    "leading-underscore": "_alice",
    "dot-only": ".",
    "129-characters": "a" * 129,
    "query": "alice?x=1",
    "fragment": "alice#x",
    "percent": "alice%",
    "plus": "alice+bob",
    "colon": "alice:bob",
    "star": "*",
    "emoji": "alice\U0001f600",
}

GOOD_USER_IDS = ["a", "A", "0", "alice", "u-1", "u_1", "u.1", "a" * 128, "9f23ab3", "a..b"]


def _violations(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.Status details"
    found: dict[str, str] = {}
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if not detail.Is(bad_request.DESCRIPTOR):
            continue  # the ErrorInfo with the count
        assert detail.Unpack(bad_request)
        for violation in bad_request.field_violations:
            found[violation.field] = violation.description
    return found


def _invalid(call: object) -> dict[str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "http" not in (error.details() or "")  # type: ignore[attr-defined]
    return _violations(error)


@pytest.mark.parametrize(
    "user_id", list(HOSTILE_USER_IDS.values()), ids=list(HOSTILE_USER_IDS.keys())
)
def test_hostile_user_id_is_refused_for_every_rpc(
    stub: pb_grpc.AvatarSignerStub, user_id: str
) -> None:
    upload = pb.CreateUploadUrlRequest(user_id=user_id, content_type="image/png", content_length=10)
    assert list(_invalid(lambda: stub.CreateUploadUrl(upload))) == ["user_id"]
    download = pb.CreateDownloadUrlRequest(user_id=user_id)
    assert list(_invalid(lambda: stub.CreateDownloadUrl(download))) == ["user_id"]
    batch = pb.BatchCreateDownloadUrlsRequest(user_ids=["ok", user_id])
    assert list(_invalid(lambda: stub.BatchCreateDownloadUrls(batch))) == ["user_ids[1]"]


@pytest.mark.parametrize("user_id", GOOD_USER_IDS)
def test_good_user_id_maps_to_its_own_key(stub: pb_grpc.AvatarSignerStub, user_id: str) -> None:
    response = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id=user_id))
    assert response.key == f"profiles/{user_id}/avatar"
    assert f"/profiles/{user_id}/avatar?" in response.url


def _upload(**fields: object) -> pb.CreateUploadUrlRequest:
    values: dict[str, object] = {
        "user_id": "alice",
        "content_type": "image/png",
        "content_length": 1000,
    }
    values.update(fields)
    return pb.CreateUploadUrlRequest(**values)  # type: ignore[arg-type]


GOOD_SHA = base64.b64encode(hashlib.sha256(b"x").digest()).decode()

BAD_UPLOADS = {
    "type-html": ({"content_type": "text/html"}, "content_type"),
    "type-svg": ({"content_type": "image/svg+xml"}, "content_type"),
    "type-empty": ({"content_type": ""}, "content_type"),
    "type-uppercase": ({"content_type": "image/PNG"}, "content_type"),
    "type-with-params": ({"content_type": "image/png; charset=x"}, "content_type"),
    "length-zero": ({"content_length": 0}, "content_length"),
    "length-negative": ({"content_length": -1}, "content_length"),
    "length-over-limit": ({"content_length": 5 * 1024 * 1024 + 1}, "content_length"),
    "sha-not-base64": ({"checksum_sha256": "not base64!"}, "checksum_sha256"),
    "sha-hex": ({"checksum_sha256": hashlib.sha256(b"x").hexdigest()}, "checksum_sha256"),
    "sha-short": ({"checksum_sha256": base64.b64encode(b"x" * 31).decode()}, "checksum_sha256"),
    "sha-long": ({"checksum_sha256": base64.b64encode(b"x" * 33).decode()}, "checksum_sha256"),
    "sha-unpadded": ({"checksum_sha256": GOOD_SHA.rstrip("=")}, "checksum_sha256"),
    "sha-urlsafe": (
        {"checksum_sha256": base64.urlsafe_b64encode(b"\xfb" * 32).decode()},
        "checksum_sha256",
    ),
    "ttl-zero": ({"ttl": duration_pb2.Duration(seconds=0)}, "ttl"),
    "ttl-negative": ({"ttl": duration_pb2.Duration(seconds=-5)}, "ttl"),
    "ttl-fraction": ({"ttl": duration_pb2.Duration(seconds=1, nanos=500)}, "ttl"),
    "ttl-over-max": ({"ttl": duration_pb2.Duration(seconds=1201)}, "ttl"),
}


@pytest.mark.parametrize(
    ("fields", "field"), list(BAD_UPLOADS.values()), ids=list(BAD_UPLOADS.keys())
)
def test_bad_upload_field_is_named(
    stub: pb_grpc.AvatarSignerStub, fields: dict[str, object], field: str
) -> None:
    assert list(_invalid(lambda: stub.CreateUploadUrl(_upload(**fields)))) == [field]


def test_every_bad_field_is_reported_at_once(stub: pb_grpc.AvatarSignerStub) -> None:
    request = pb.CreateUploadUrlRequest(
        user_id="../x",
        content_type="text/html",
        content_length=0,
        checksum_sha256="zz",
        ttl=duration_pb2.Duration(seconds=0),
    )
    violations = _invalid(lambda: stub.CreateUploadUrl(request))
    assert set(violations) == {
        "user_id",
        "content_type",
        "content_length",
        "checksum_sha256",
        "ttl",
    }


def test_ttl_over_max_is_an_error_not_a_clamp(stub: pb_grpc.AvatarSignerStub) -> None:
    request = pb.CreateDownloadUrlRequest(user_id="alice", ttl=duration_pb2.Duration(seconds=1201))
    assert "1200" in _invalid(lambda: stub.CreateDownloadUrl(request))["ttl"]


def test_batch_size_limits(stub: pb_grpc.AvatarSignerStub) -> None:
    empty = pb.BatchCreateDownloadUrlsRequest(user_ids=[])
    assert list(_invalid(lambda: stub.BatchCreateDownloadUrls(empty))) == ["user_ids"]
    too_many = pb.BatchCreateDownloadUrlsRequest(user_ids=[f"u{i}" for i in range(1001)])
    assert list(_invalid(lambda: stub.BatchCreateDownloadUrls(too_many))) == ["user_ids"]
    most = stub.BatchCreateDownloadUrls(
        pb.BatchCreateDownloadUrlsRequest(user_ids=[f"u{i}" for i in range(1000)])
    )
    assert len(most.urls) == 1000


def test_batch_names_every_bad_index(stub: pb_grpc.AvatarSignerStub) -> None:
    ids = ["ok", "../a", "fine", "a/b", "", "good"]
    violations = _invalid(
        lambda: stub.BatchCreateDownloadUrls(pb.BatchCreateDownloadUrlsRequest(user_ids=ids))
    )
    assert sorted(violations) == ["user_ids[1]", "user_ids[3]", "user_ids[4]"]


def test_batch_results_are_in_request_order(stub: pb_grpc.AvatarSignerStub) -> None:
    ids = ["zed", "amy", "mo", "amy", "b.c"]
    response = stub.BatchCreateDownloadUrls(pb.BatchCreateDownloadUrlsRequest(user_ids=ids))
    assert [u.user_id for u in response.urls] == ids
    assert [u.key for u in response.urls] == [f"profiles/{i}/avatar" for i in ids]
    assert all(f"/profiles/{u.user_id}/avatar?" in u.url for u in response.urls)


def test_many_bad_ids_fit_in_a_trailer_and_the_count_travels(
    stub: pb_grpc.AvatarSignerStub, server: ServerThread
) -> None:
    """300 bad ids: INVALID_ARGUMENT with the first 10 violations and the count (300), in a
    status trailer far below the 8 KiB some clients accept."""
    bad = [f"../bad-{n}" for n in range(300)]
    with pytest.raises(grpc.RpcError) as refused:
        stub.BatchCreateDownloadUrls(pb.BatchCreateDownloadUrlsRequest(user_ids=bad))
    error = refused.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailer = dict(error.trailing_metadata())["grpc-status-details-bin"]
    assert len(trailer) < 2048
    assert "300 bad fields in all" in (error.details() or "")
    with AvatarSignerClient(server.target) as client, pytest.raises(AvatarSignerError) as seen:
        client.batch_create_download_urls(bad)
    assert seen.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert seen.value.violation_count == 300
    assert [v.field for v in seen.value.field_violations] == [f"user_ids[{n}]" for n in range(10)]
    assert "and 295 more" in str(seen.value)
