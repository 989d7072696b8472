"""Verified uploads on the real S3: staged, checked, and only then visible.

SeaweedFS enforces the signatures, `If-None-Match: *` and the three identities'
prefix-scoped policies (exactly what `avatar-signer policies` prints), so every refusal
here is the bucket's or the service's own, never a mock's.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
import seaweed_s3
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.commands import check
from avatarsigner_server.credentials.sources import StaticCredentials
from avatarsigner_server.settings import load as load_settings
from avatarsigner_server.settings.uploads import UploadMode
from avatarsigner_server.signing.key_pairs import Credentials
from avatarsigner_server.signing.object_keys import ObjectKeys
from avatarsigner_server.signing.url_signers import OBJECT_HEADERS, BucketEndpoint, DownloadSigner
from botocore.exceptions import ClientError
from conftest import verified_env
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image
from s3http import Reply, request
from servers import ServerThread, settings_from

VerifiedS3 = tuple[seaweed_s3.LocalS3, dict[str, seaweed_s3.Identity]]


def _user() -> str:
    return "u-" + uuid.uuid4().hex[:12]


def _sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _image(kind: str, size: tuple[int, int] = (40, 30), exif: bytes | None = None) -> bytes:
    picture = Image.new("RGB", size)
    picture.putdata(
        [(x * 6 % 256, y * 8 % 256, 90) for y in range(size[1]) for x in range(size[0])]
    )
    out = io.BytesIO()
    options = {"exif": exif} if exif is not None else {}
    picture.save(out, kind, **options)
    return out.getvalue()


def _gps_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 51.0, 29.0)  # latitude ref, latitude
    gps[3], gps[4] = "E", (2.0, 17.0, 40.0)  # longitude ref, longitude
    return exif.tobytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _upload_url(
    stub: pb_grpc.AvatarSignerStub, user: str, data: bytes, content_type: str, checksum: bool = True
) -> pb.CreateUploadUrlResponse:
    return stub.CreateUploadUrl(
        pb.CreateUploadUrlRequest(
            user_id=user,
            content_type=content_type,
            content_length=len(data),
            checksum_sha256=_sha256(data) if checksum else "",
        )
    )


def _put(upload: pb.CreateUploadUrlResponse, data: bytes) -> Reply:
    return request(upload.method, upload.url, data, dict(upload.headers))


def _confirm(stub: pb_grpc.AvatarSignerStub, user: str, upload_id: str) -> pb.ConfirmUploadResponse:
    response: pb.ConfirmUploadResponse = stub.ConfirmUpload(
        pb.ConfirmUploadRequest(user_id=user, upload_id=upload_id), timeout=30
    )
    return response


def _staged(stub: pb_grpc.AvatarSignerStub, user: str, data: bytes, content_type: str) -> str:
    upload = _upload_url(stub, user, data, content_type)
    assert _put(upload, data).status == 200
    return upload.upload_id


def _download(stub: pb_grpc.AvatarSignerStub, user: str) -> Reply:
    url = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id=user)).url
    return request("GET", url)


def _refusal(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """(status code, ErrorInfo reason) of a failed call."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            assert info.domain == "avatarsigner.v1"
            return error.code(), info.reason
    raise AssertionError("no ErrorInfo in the status details")


# --- good images are published exactly as verified --------------------------------------


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP"])
def test_good_image_is_confirmed_and_downloads_as_stored(
    verified_stub: pb_grpc.AvatarSignerStub, kind: str
) -> None:
    user = _user()
    data = _image(kind)
    content_type = f"image/{kind.lower()}"
    upload_id = _staged(verified_stub, user, data, content_type)
    assert _download(verified_stub, user).status in (403, 404), "visible before confirming"

    done = _confirm(verified_stub, user, upload_id)
    assert (done.key, done.content_type, done.width, done.height) == (
        f"profiles/{user}/avatar",
        content_type,
        40,
        30,
    )
    downloaded = _download(verified_stub, user)
    assert downloaded.status == 200
    assert downloaded.headers["content-type"] == content_type
    assert _sha256(downloaded.body) == done.checksum_sha256
    assert len(downloaded.body) == done.content_length
    assert done.version


def test_published_avatar_carries_exactly_the_object_headers(
    verified_stub: pb_grpc.AvatarSignerStub,
) -> None:
    """The verifier writes the headers it chose: those every avatar object carries."""
    user = _user()
    _confirm(verified_stub, user, _staged(verified_stub, user, _image("PNG"), "image/png"))
    downloaded = _download(verified_stub, user)
    assert downloaded.status == 200
    for name, value in OBJECT_HEADERS.items():
        assert downloaded.headers[name.lower()] == value, name


def test_gps_is_removed_and_the_pixels_stay_identical(
    verified_stub: pb_grpc.AvatarSignerStub,
) -> None:
    user = _user()
    data = _image("JPEG", exif=_gps_exif())
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825), "the upload carries GPS"
    done = _confirm(verified_stub, user, _staged(verified_stub, user, data, "image/jpeg"))
    assert {"EXIF", "GPS"} <= set(done.metadata_removed)
    stored = _download(verified_stub, user).body
    published = Image.open(io.BytesIO(stored))
    assert not published.getexif().get_ifd(0x8825)
    assert b"PhoneMaker" not in stored
    assert published.tobytes() == Image.open(io.BytesIO(data)).tobytes()


# --- what is not an image of the declared type never becomes visible ----------------------

HOSTILE: list[tuple[str, Callable[[], bytes], str, str]] = [
    ("html-declared-png", lambda: b"<html><script>alert(1)</script></html>", "image/png",
     "NOT_AN_IMAGE"),
    ("svg-renamed-png",
     lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
     "image/png", "NOT_AN_IMAGE"),
    ("truncated-png", lambda: _image("PNG")[:-30], "image/png", "TRUNCATED"),
    ("png-claiming-50000x50000", lambda: _png_claiming(50_000, 50_000), "image/png",
     "TOO_MANY_PIXELS"),
    ("jpeg-declared-webp", lambda: _image("JPEG"), "image/webp", "TYPE_MISMATCH"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "content_type", "reason"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_hostile_upload_is_refused_with_its_reason_and_never_visible(
    verified_stub: pb_grpc.AvatarSignerStub,
    make: Callable[[], bytes],
    content_type: str,
    reason: str,
) -> None:
    user = _user()
    upload_id = _staged(verified_stub, user, make(), content_type)
    with pytest.raises(grpc.RpcError) as refused:
        _confirm(verified_stub, user, upload_id)
    assert _refusal(refused.value) == (grpc.StatusCode.FAILED_PRECONDITION, reason)
    assert _download(verified_stub, user).status in (403, 404)


# --- the bucket's own refusals ----------------------------------------------------------


def test_an_upload_url_writes_once(verified_stub: pb_grpc.AvatarSignerStub) -> None:
    data = _image("PNG")
    upload = _upload_url(verified_stub, _user(), data, "image/png")
    assert dict(upload.headers)["If-None-Match"] == "*"
    assert _put(upload, data).status == 200
    again = _put(upload, data)
    assert (again.status, again.s3_code) == (412, "PreconditionFailed")


def test_other_bytes_under_a_signed_checksum_are_refused_by_s3(
    verified_stub: pb_grpc.AvatarSignerStub,
) -> None:
    data = _image("PNG")
    upload = _upload_url(verified_stub, _user(), data, "image/png")
    other = bytearray(data)
    other[-20] ^= 0xFF
    assert _put(upload, bytes(other)).status == 400  # BadDigest


def test_a_download_url_edited_to_a_staging_key_is_refused(
    verified_s3: VerifiedS3, verified_stub: pb_grpc.AvatarSignerStub
) -> None:
    user = _user()
    data = _image("PNG")
    upload = _upload_url(verified_stub, user, data, "image/png")
    assert _put(upload, data).status == 200
    url = verified_stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id=user)).url
    parts = urlsplit(url)
    edited = urlunsplit(parts._replace(path=urlsplit(upload.url).path))
    assert request("GET", edited).status == 403  # the signature covers the key
    # Signed for the staging key by the reader itself: its policy has no uploads/*.
    s3, identities = verified_s3
    reader = identities["reader"]
    signer = DownloadSigner(
        StaticCredentials(Credentials(reader.access_key_id, reader.secret_access_key)),
        BucketEndpoint(s3.bucket, s3.region, s3.endpoint_url),
        s3.region,
    )
    assert request("GET", signer.sign(upload.key, ttl_seconds=60).url).status == 403


# --- ConfirmUpload's own rules ------------------------------------------------------------


def test_another_users_upload_id_is_refused(verified_stub: pb_grpc.AvatarSignerStub) -> None:
    alice, mallory = _user(), _user()
    upload_id = _staged(verified_stub, alice, _image("PNG"), "image/png")
    with pytest.raises(grpc.RpcError) as refused:
        _confirm(verified_stub, mallory, upload_id)
    assert _refusal(refused.value) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_UPLOADED")
    assert _download(verified_stub, mallory).status in (403, 404)


def test_confirming_again_gives_the_same_answer_and_writes_nothing(
    verified_stub: pb_grpc.AvatarSignerStub,
) -> None:
    user = _user()
    first_id = _staged(verified_stub, user, _image("PNG", (20, 20)), "image/png")
    first = _confirm(verified_stub, user, first_id)
    assert _confirm(verified_stub, user, first_id) == first
    second = _confirm(verified_stub, user, _staged(verified_stub, user, _image("PNG"), "image/png"))
    assert second.version != first.version
    # The first upload confirmed again: the same answer, and the newer avatar stays.
    assert _confirm(verified_stub, user, first_id) == first
    assert _sha256(_download(verified_stub, user).body) == second.checksum_sha256


def test_a_staged_object_that_differs_from_its_ticket_is_refused(
    verified_s3: VerifiedS3, verified_stub: pb_grpc.AvatarSignerStub
) -> None:
    """Defence in depth: an S3 that let other bytes through is caught at confirmation."""
    s3, _ = verified_s3
    user = _user()
    data = _image("PNG")
    upload = _upload_url(verified_stub, user, data, "image/png")
    admin = s3.client("s3")
    other = bytes(b ^ 1 for b in data)
    admin.put_object(Bucket=s3.bucket, Key=upload.key, Body=other, ContentType="image/png")
    with pytest.raises(grpc.RpcError) as refused:
        _confirm(verified_stub, user, upload.upload_id)
    assert _refusal(refused.value)[1] == "CHECKSUM_MISMATCH"

    shorter = _upload_url(verified_stub, _user(), data, "image/png")
    admin.put_object(Bucket=s3.bucket, Key=shorter.key, Body=data[:-1], ContentType="image/png")
    user_of = shorter.key.split("/")[1]
    with pytest.raises(grpc.RpcError) as refused:
        _confirm(verified_stub, user_of, shorter.upload_id)
    assert _refusal(refused.value)[1] == "SIZE_MISMATCH"


def test_nothing_uploaded_is_not_uploaded(verified_stub: pb_grpc.AvatarSignerStub) -> None:
    user = _user()
    upload = _upload_url(verified_stub, user, _image("PNG"), "image/png")
    with pytest.raises(grpc.RpcError) as refused:
        _confirm(verified_stub, user, upload.upload_id)
    assert _refusal(refused.value) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_UPLOADED")


def test_direct_mode_has_nothing_to_confirm(s3_stub: pb_grpc.AvatarSignerStub) -> None:
    user = _user()
    data = _image("PNG")
    upload = _upload_url(s3_stub, user, data, "image/png")
    assert (upload.key, upload.upload_id) == (f"profiles/{user}/avatar", "")
    assert _put(upload, data).status == 200
    assert _download(s3_stub, user).body == data  # visible at once, unchecked
    with pytest.raises(grpc.RpcError) as refused:
        _confirm(s3_stub, user, _staged_id_shape())
    assert _refusal(refused.value) == (grpc.StatusCode.FAILED_PRECONDITION, "DIRECT_MODE")


def _staged_id_shape() -> str:
    """A well-formed upload id (what a caller of a verified server would hold)."""
    from avatarsigner_server.signing.upload_ids import UploadTicket

    return UploadTicket(minted_at_ms=1, content_length=1, nonce=bytes(16)).upload_id


def test_check_proves_the_three_way_split(verified_s3: VerifiedS3) -> None:
    s3, identities = verified_s3
    settings = load_settings(verified_env(s3, identities))
    first = {r.check: r.outcome for r in check.run(settings)}
    assert first == {
        "uploader credentials": "PASS",
        "reader credentials": "PASS",
        "verifier credentials": "PASS",
        "uploader can PUT a staged upload": "PASS",
        "uploader cannot PUT avatars": "PASS",
        "uploader cannot GET": "PASS",
        "verifier can GET staged uploads": "PASS",
        "verifier can PUT avatars": "PASS",
        "verifier cannot GET avatars": "PASS",
        "verifier cannot PUT staged uploads": "PASS",
        "reader can GET avatars": "PASS",
        "reader cannot GET staged uploads": "PASS",
        "reader cannot PUT (canary unchanged)": "PASS",
        "verifier can DELETE avatars": "PASS",
        "deleted avatars leave no old version": "PASS",
        "bucket is not publicly readable": "PASS",
        "bucket is not publicly writable": "PASS",
        "uploader cannot DELETE": "PASS",
        "reader cannot DELETE": "PASS",
        "verifier cannot DELETE": "PASS",
        "uploader cannot LIST": "PASS",
        "reader cannot LIST": "PASS",
        "verifier cannot LIST": "PASS",
        "URLs use SigV4 for AWS_REGION": "PASS",
        "URLs use the regional endpoint": "SKIP",
        "bucket answers from AWS_REGION": "SKIP",
    }
    # Every run passes again: the staged canary is a new key each time (write-once URLs).
    results = check.run(settings)
    assert {r.check: r.outcome for r in results} == first
    # The verifier's DELETE removed the avatar canary, and the table says so.
    canary = ObjectKeys(settings.key_prefix).canary_key()
    with pytest.raises(ClientError):
        s3.client("s3").head_object(Bucket=s3.bucket, Key=canary)
    table = io.StringIO()
    check.render(settings, results, table)
    assert f"The verifier deleted the canary {canary} again" in table.getvalue()


@pytest.mark.parametrize(
    ("identity", "action", "prefix", "failed"),
    [
        ("uploader", "s3:PutObject", "profiles/", "uploader cannot PUT avatars"),
        ("reader", "s3:GetObject", "uploads/", "reader cannot GET staged uploads"),
        ("verifier", "s3:GetObject", "profiles/", "verifier cannot GET avatars"),
        ("verifier", "s3:PutObject", "uploads/", "verifier cannot PUT staged uploads"),
    ],
    ids=["uploader-writes-avatars", "reader-reads-staged", "verifier-reads-avatars",
         "verifier-writes-staged"],
)  # fmt: skip
def test_check_names_an_identity_that_can_do_more_than_its_job(
    verified_s3: VerifiedS3, identity: str, action: str, prefix: str, failed: str
) -> None:
    s3, identities = verified_s3
    policy = seaweed_s3.policy(identity, s3.bucket, UploadMode.VERIFIED)
    policy["Statement"].append(
        {"Effect": "Allow", "Action": action, "Resource": f"arn:aws:s3:::{s3.bucket}/{prefix}*"}
    )
    greedy = s3.create_identity(f"check-{identity}-{uuid.uuid4().hex[:8]}", policy)
    rows = {
        r.check: r
        for r in check.run(load_settings(verified_env(s3, identities | {identity: greedy})))
    }
    assert {name for name, row in rows.items() if row.outcome == "FAIL"} == {failed}
    assert f"remove {action} from the {identity}'s IAM policy" in rows[failed].detail


# --- bounds: how many verify at once, and how long a caller waits -------------------------


def test_confirmations_run_at_most_the_concurrency_limit(
    verified_s3: VerifiedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 confirmations in flight, CONFIRM_CONCURRENCY=2: never more than 2 decode at once,
    and every one completes (the others wait for a slot)."""
    from avatarsigner_server.verification import confirm as confirm_module

    real = confirm_module.verify_image
    lock = threading.Lock()
    running = peak = 0

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            time.sleep(0.05)  # long enough for the others to pile up
            return real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(confirm_module, "verify_image", counted)
    server = ServerThread(settings_from(verified_env(*verified_s3), CONFIRM_CONCURRENCY="2"))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            staged = [
                (user, _staged(stub, user, _image("PNG"), "image/png"))
                for user in [_user() for _ in range(16)]
            ]
            futures = [
                stub.ConfirmUpload.future(
                    pb.ConfirmUploadRequest(user_id=user, upload_id=upload_id), timeout=60
                )
                for user, upload_id in staged
            ]
            results = [future.result() for future in futures]
    finally:
        server.stop()
    assert len({r.key for r in results}) == 16
    assert peak == 2


def test_a_confirmation_past_its_deadline_finishes_and_confirming_again_tells(
    verified_s3: VerifiedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avatarsigner_server.verification import confirm as confirm_module

    real = confirm_module.verify_image
    release = threading.Event()

    def slow(*args: object, **kwargs: object) -> object:
        release.wait(10)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(confirm_module, "verify_image", slow)
    server = ServerThread(settings_from(verified_env(*verified_s3), CONFIRM_CONCURRENCY="1"))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            user, other = _user(), _user()
            upload_id = _staged(stub, user, _image("PNG"), "image/png")
            other_id = _staged(stub, other, _image("PNG"), "image/png")
            request = pb.ConfirmUploadRequest(user_id=user, upload_id=upload_id)
            with pytest.raises(grpc.RpcError) as late:
                stub.ConfirmUpload(request, timeout=1)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # The one slot is still held by the running verification: a second waits, then
            # is told the server is busy (retryable), before its own deadline.
            with pytest.raises(grpc.RpcError) as busy:
                stub.ConfirmUpload(
                    pb.ConfirmUploadRequest(user_id=other, upload_id=other_id), timeout=1.5
                )
            assert _refusal(busy.value) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUSY")
            release.set()
            done = stub.ConfirmUpload(request, timeout=30)
    finally:
        server.stop()
    assert done.key == f"profiles/{user}/avatar"
