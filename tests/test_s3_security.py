"""The security model, judged by a real S3 that verifies SigV4 presigned URLs (SeaweedFS).

Every URL here comes from the running service (or, for the identity-split proofs, from our
signer fed the *other* identity's credentials), and S3 decides whether it works.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
import seaweed_s3
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.credentials.sources import StaticCredentials
from avatarsigner_server.signing import sigv4
from avatarsigner_server.signing.key_pairs import Credentials
from avatarsigner_server.signing.url_signers import (
    OBJECT_HEADERS,
    BucketEndpoint,
    DownloadSigner,
    UploadSigner,
)
from google.protobuf import duration_pb2
from s3http import Reply, request

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(300)
JPEG = b"\xff\xd8\xff\xe0" + os.urandom(200)

LocalS3 = tuple[seaweed_s3.LocalS3, seaweed_s3.Identity, seaweed_s3.Identity]


def _user() -> str:
    return "u-" + uuid.uuid4().hex[:12]


def _sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _upload_url(
    stub: pb_grpc.AvatarSignerStub,
    user_id: str,
    data: bytes,
    content_type: str = "image/png",
    checksum: bool = False,
) -> pb.CreateUploadUrlResponse:
    return stub.CreateUploadUrl(
        pb.CreateUploadUrlRequest(
            user_id=user_id,
            content_type=content_type,
            content_length=len(data),
            checksum_sha256=_sha256(data) if checksum else "",
        )
    )


def _put(upload: pb.CreateUploadUrlResponse, data: bytes, **override: str) -> Reply:
    headers = dict(upload.headers)
    headers.update(override)
    return request(upload.method, upload.url, data, headers)


def _download(stub: pb_grpc.AvatarSignerStub, user_id: str, ttl: int | None = None) -> str:
    req = pb.CreateDownloadUrlRequest(user_id=user_id)
    if ttl is not None:
        req.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl))
    return stub.CreateDownloadUrl(req).url


def _credential(url: str) -> str:
    return parse_qs(urlsplit(url).query)["X-Amz-Credential"][0].split("/")[0]


def _stored(stub: pb_grpc.AvatarSignerStub, user_id: str, data: bytes) -> None:
    """Put `data` as the user's avatar through the service (setup for a test)."""
    reply = _put(_upload_url(stub, user_id, data), data)
    assert reply.status == 200, reply


# --- the round trip -----------------------------------------------------------------------


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "with-sha256"])
def test_round_trip_keeps_bytes_and_content_type(
    s3_stub: pb_grpc.AvatarSignerStub, checksum: bool
) -> None:
    user = _user()
    upload = _upload_url(s3_stub, user, JPEG, "image/jpeg", checksum=checksum)
    assert _put(upload, JPEG).status == 200

    reply = request("GET", _download(s3_stub, user))
    assert reply.status == 200
    assert reply.body == JPEG
    assert reply.headers["content-type"] == "image/jpeg"


def test_batch_urls_fetch_each_users_own_avatar(s3_stub: pb_grpc.AvatarSignerStub) -> None:
    users = [_user() for _ in range(3)]
    images = {u: PNG + u.encode() for u in users}
    for user, data in images.items():
        _stored(s3_stub, user, data)
    batch = s3_stub.BatchCreateDownloadUrls(
        pb.BatchCreateDownloadUrlsRequest(user_ids=[users[2], users[0], users[1]])
    )
    for entry in batch.urls:
        assert request("GET", entry.url).body == images[entry.user_id]


# --- what S3 refuses ----------------------------------------------------------------------


def test_upload_url_rejects_other_content_type(s3_stub: pb_grpc.AvatarSignerStub) -> None:
    upload = _upload_url(s3_stub, _user(), PNG)
    reply = _put(upload, PNG, **{"Content-Type": "text/html"})
    assert reply.status == 403
    assert reply.s3_code == "SignatureDoesNotMatch"


def test_upload_url_rejects_other_length(s3_stub: pb_grpc.AvatarSignerStub) -> None:
    upload = _upload_url(s3_stub, _user(), PNG)
    bigger = PNG + b"\x00" * 1000
    reply = _put(upload, bigger, **{"Content-Length": str(len(bigger))})
    assert reply.status == 403


def test_upload_url_rejects_other_bytes_under_signed_checksum(
    s3_stub: pb_grpc.AvatarSignerStub,
) -> None:
    user = _user()
    upload = _upload_url(s3_stub, user, PNG, checksum=True)
    tampered = bytes([PNG[0] ^ 0xFF]) + PNG[1:]  # same length, other bytes
    reply = _put(upload, tampered)
    assert reply.status in (400, 403), reply
    assert request("GET", _download(s3_stub, user)).status in (403, 404)  # nothing stored


def test_upload_url_rejects_dropping_the_signed_checksum(
    s3_stub: pb_grpc.AvatarSignerStub,
) -> None:
    upload = _upload_url(s3_stub, _user(), PNG, checksum=True)
    headers = {k: v for k, v in upload.headers.items() if k != "x-amz-checksum-sha256"}
    assert request("PUT", upload.url, PNG, headers).status == 403


def test_upload_url_cannot_be_used_for_get(s3_stub: pb_grpc.AvatarSignerStub) -> None:
    user = _user()
    _stored(s3_stub, user, PNG)
    upload = _upload_url(s3_stub, user, PNG)
    # The same signed headers, minus the body length (a GET has no body).
    headers = {k: v for k, v in upload.headers.items() if k != "Content-Length"}
    reply = request("GET", upload.url, headers=headers)
    assert reply.status == 403
    assert PNG not in reply.body


def test_download_url_cannot_be_used_for_put(s3_stub: pb_grpc.AvatarSignerStub) -> None:
    user = _user()
    _stored(s3_stub, user, PNG)
    reply = request("PUT", _download(s3_stub, user), JPEG, {"Content-Type": "image/jpeg"})
    assert reply.status == 403
    assert request("GET", _download(s3_stub, user)).body == PNG  # unchanged


def test_upload_url_with_edited_key_is_refused(s3_stub: pb_grpc.AvatarSignerStub) -> None:
    mallory, alice = _user(), _user()
    _stored(s3_stub, alice, PNG)
    upload = _upload_url(s3_stub, mallory, JPEG, "image/jpeg")
    edited = upload.url.replace(f"/profiles/{mallory}/avatar", f"/profiles/{alice}/avatar")
    assert edited != upload.url
    reply = request("PUT", edited, JPEG, dict(upload.headers))
    assert reply.status == 403
    assert request("GET", _download(s3_stub, alice)).body == PNG


def test_download_url_with_edited_key_is_refused(s3_stub: pb_grpc.AvatarSignerStub) -> None:
    alice, bob = _user(), _user()
    _stored(s3_stub, alice, PNG)
    url = _download(s3_stub, bob)
    edited = url.replace(f"/profiles/{bob}/avatar", f"/profiles/{alice}/avatar")
    assert request("GET", edited).status == 403


def test_forged_signature_is_refused(s3_stub: pb_grpc.AvatarSignerStub) -> None:
    user = _user()
    _stored(s3_stub, user, PNG)
    url = _download(s3_stub, user)
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    forged = url.replace(signature, "0" * len(signature))
    assert request("GET", forged).status == 403
    assert request("GET", url).status == 200


def test_download_url_dies_after_its_ttl(s3_stub: pb_grpc.AvatarSignerStub) -> None:
    user = _user()
    _stored(s3_stub, user, PNG)
    response = s3_stub.CreateDownloadUrl(
        pb.CreateDownloadUrlRequest(user_id=user, ttl=duration_pb2.Duration(seconds=1))
    )
    while time.time() < response.expires_at.seconds + 1.5:
        time.sleep(0.2)
    reply = request("GET", response.url)
    assert reply.status == 403, reply
    assert PNG not in reply.body
    assert request("GET", _download(s3_stub, user)).body == PNG  # a fresh URL still works


# --- the identity split -------------------------------------------------------------------


def _signers(
    s3: seaweed_s3.LocalS3, identity: seaweed_s3.Identity
) -> tuple[UploadSigner, DownloadSigner]:
    creds = StaticCredentials(Credentials(identity.access_key_id, identity.secret_access_key))
    endpoint = BucketEndpoint(s3.bucket, s3.region, s3.endpoint_url)
    return UploadSigner(creds, endpoint, s3.region), DownloadSigner(creds, endpoint, s3.region)


def test_reader_credentials_cannot_put(
    local_s3: LocalS3, s3_stub: pb_grpc.AvatarSignerStub
) -> None:
    s3, _, reader = local_s3
    user = _user()
    _stored(s3_stub, user, PNG)
    uploads, _ = _signers(s3, reader)
    signed = uploads.sign(
        f"profiles/{user}/avatar",
        content_type="image/jpeg",
        content_length=len(JPEG),
        checksum_sha256=None,
        ttl_seconds=60,
    )
    reply = request("PUT", signed.url, JPEG, dict(signed.headers))
    assert reply.status == 403
    assert reply.s3_code == "AccessDenied"
    assert request("GET", _download(s3_stub, user)).body == PNG


def test_uploader_credentials_cannot_get(
    local_s3: LocalS3, s3_stub: pb_grpc.AvatarSignerStub
) -> None:
    s3, uploader, _ = local_s3
    user = _user()
    _stored(s3_stub, user, PNG)
    _, downloads = _signers(s3, uploader)
    reply = request("GET", downloads.sign(f"profiles/{user}/avatar", ttl_seconds=60).url)
    assert reply.status == 403
    assert reply.s3_code == "AccessDenied"
    assert PNG not in reply.body


def test_every_url_carries_the_right_access_key_id(
    local_s3: LocalS3, s3_stub: pb_grpc.AvatarSignerStub
) -> None:
    _, uploader, reader = local_s3
    user = _user()
    assert _credential(_upload_url(s3_stub, user, PNG).url) == uploader.access_key_id
    assert _credential(_download(s3_stub, user)) == reader.access_key_id
    batch = s3_stub.BatchCreateDownloadUrls(
        pb.BatchCreateDownloadUrlsRequest(user_ids=[user, _user()])
    )
    assert {_credential(u.url) for u in batch.urls} == {reader.access_key_id}


# --- what a viewer gets: never a header the uploader chose ---------------------------------

# Headers S3 stores with an object and replays on every GET, each with what a hostile holder
# of an upload URL would send (a PNG served as gzip is a decompression bomb for every viewer).
HOSTILE_OBJECT_HEADERS = [
    pytest.param("Content-Encoding", "gzip", id="content-encoding"),
    pytest.param("Content-Disposition", 'attachment; filename="avatar.html"', id="disposition"),
    pytest.param("Cache-Control", "public, max-age=31536000", id="cache-control"),
    pytest.param("Content-Language", "fr", id="content-language"),
    pytest.param("Expires", "Fri, 01 Jan 2100 00:00:00 GMT", id="expires"),
]


@pytest.mark.parametrize(("name", "value"), HOSTILE_OBJECT_HEADERS)
def test_upload_url_refuses_a_header_s3_would_replay_to_viewers(
    s3_stub: pb_grpc.AvatarSignerStub, name: str, value: str
) -> None:
    user = _user()
    upload = _upload_url(s3_stub, user, PNG)
    assert name in upload.headers  # signed with a fixed value, sent as listed
    reply = _put(upload, PNG, **{name: value})
    assert reply.status == 403, reply
    assert reply.s3_code == "SignatureDoesNotMatch"
    assert request("GET", _download(s3_stub, user)).status in (403, 404)  # nothing stored


def test_viewer_gets_the_fixed_object_headers(s3_stub: pb_grpc.AvatarSignerStub) -> None:
    user = _user()
    _stored(s3_stub, user, PNG)
    reply = request("GET", _download(s3_stub, user))
    assert reply.status == 200 and reply.body == PNG
    assert reply.headers["content-type"] == "image/png"
    for name, value in OBJECT_HEADERS.items():
        assert reply.headers[name.lower()] == value, name


def test_download_url_overrides_encoding_and_disposition_an_object_carries(
    local_s3: LocalS3, s3_stub: pb_grpc.AvatarSignerStub
) -> None:
    """An object stored some other way (before upload URLs signed the fixed headers, or by
    another writer) still reaches a viewer inline and without a content coding."""
    s3, uploader, _ = local_s3
    user = _user()
    endpoint = BucketEndpoint(s3.bucket, s3.region, s3.endpoint_url)
    type_and_length = {"content-type": "image/png", "content-length": str(len(PNG))}
    old_style = sigv4.presign(
        method="PUT",
        origin=endpoint.origin,
        host=endpoint.host,
        path=endpoint.path(f"profiles/{user}/avatar"),
        access_key_id=uploader.access_key_id,
        secret_access_key=uploader.secret_access_key,
        session_token=None,
        region=s3.region,
        signed_at=datetime.now(UTC).replace(microsecond=0),
        expires_in=60,
        headers=type_and_length,
    )
    carried = {"Content-Encoding": "gzip", "Content-Disposition": 'attachment; filename="a.html"'}
    assert request("PUT", old_style, PNG, {**type_and_length, **carried}).status == 200

    reply = request("GET", _download(s3_stub, user))
    assert reply.status == 200 and reply.body == PNG
    assert reply.headers["content-encoding"] == "identity"
    assert reply.headers["content-disposition"] == "inline"
