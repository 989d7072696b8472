"""DeleteAvatar on the real S3: the picture leaves every URL and does not come back.

Verified mode: the verifier deletes, with a signed request of its own (no URL is ever signed
for DELETE); SeaweedFS enforces that only it may. Who may call it: a right in the callers
file, and where end-user tokens are on, the user's own token or a caller that runs account
deletion.
"""

from __future__ import annotations

import base64
import hashlib
import io
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
import jwt
import leaks
import pytest
import seaweed_s3
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.commands import check
from avatarsigner_server.settings import load as load_settings
from avatarsigner_server.settings.uploads import UploadMode
from avatarsigner_server.signing import sigv4
from avatarsigner_server.signing.url_signers import BucketEndpoint
from conftest import verified_env
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from guarded import caller, write_callers
from PIL import Image
from s3_relay import S3Relay
from s3http import request
from servers import ServerThread, settings_from

VerifiedS3 = tuple[seaweed_s3.LocalS3, dict[str, seaweed_s3.Identity]]
SECRET = "a-delete-test-hs256-secret-of-32-bytes-or-more"
leaks.remember(SECRET)
JWT_ENV = {
    "END_USER_JWT_SECRET": SECRET,
    "END_USER_JWT_ISSUER": "https://id.example",
    "END_USER_JWT_AUDIENCE": "avatar-signer",
}


def _user() -> str:
    return "del-" + uuid.uuid4().hex[:10]


def _png(size: tuple[int, int] = (12, 12)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(out, "PNG")
    return out.getvalue()


def _stage(stub: pb_grpc.AvatarSignerStub, user: str, data: bytes, **kw: object) -> str:
    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
    upload = stub.CreateUploadUrl(
        pb.CreateUploadUrlRequest(
            user_id=user,
            content_type="image/png",
            content_length=len(data),
            checksum_sha256=checksum,
        ),
        **kw,  # type: ignore[arg-type]
    )
    assert request(upload.method, upload.url, data, dict(upload.headers)).status == 200
    return upload.upload_id


def _confirm(stub: pb_grpc.AvatarSignerStub, user: str, upload_id: str, **kw: object) -> object:
    return stub.ConfirmUpload(
        pb.ConfirmUploadRequest(user_id=user, upload_id=upload_id), timeout=30, **kw
    )


def _delete(stub: pb_grpc.AvatarSignerStub, user: str, **kw: object) -> pb.DeleteAvatarResponse:
    response: pb.DeleteAvatarResponse = stub.DeleteAvatar(
        pb.DeleteAvatarRequest(user_id=user), timeout=30, **kw
    )
    return response


def _shown(stub: pb_grpc.AvatarSignerStub, user: str) -> int:
    url = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id=user)).url
    return request("GET", url).status


def _reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def test_a_deleted_avatar_leaves_every_fresh_url(verified_stub: pb_grpc.AvatarSignerStub) -> None:
    user = _user()
    _confirm(verified_stub, user, _stage(verified_stub, user, _png()))
    assert _shown(verified_stub, user) == 200
    done = _delete(verified_stub, user)
    assert done.deleted and list(done.removed_keys) == [f"profiles/{user}/avatar"]
    assert done.cached_copies_expire_within.seconds == 1200  # DOWNLOAD_MAX_TTL_SECONDS
    assert not done.old_versions_remain
    assert _shown(verified_stub, user) in (403, 404)


def test_deleting_twice_or_without_an_avatar_is_fine(
    verified_stub: pb_grpc.AvatarSignerStub,
) -> None:
    user = _user()
    never = _delete(verified_stub, user)
    assert (never.deleted, list(never.removed_keys)) == (False, [])
    _confirm(verified_stub, user, _stage(verified_stub, user, _png()))
    assert _delete(verified_stub, user).deleted
    again = _delete(verified_stub, user)
    assert (again.deleted, list(again.removed_keys)) == (False, [])


def test_no_upload_made_before_the_deletion_brings_the_picture_back(
    verified_stub: pb_grpc.AvatarSignerStub,
) -> None:
    user = _user()
    confirmed = _stage(verified_stub, user, _png((10, 10)))
    _confirm(verified_stub, user, confirmed)
    staged_only = _stage(verified_stub, user, _png((11, 11)))
    _delete(verified_stub, user)
    for upload_id in (staged_only, confirmed):  # a late first confirmation, and a repeat
        with pytest.raises(grpc.RpcError) as refused:
            _confirm(verified_stub, user, upload_id)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _reason(refused.value) == "DELETED"
    assert _shown(verified_stub, user) in (403, 404)
    # A new upload, made after the deletion, is an avatar again.
    fresh = _stage(verified_stub, user, _png((13, 13)))
    assert _confirm(verified_stub, user, fresh).width == 13  # type: ignore[attr-defined]
    assert _shown(verified_stub, user) == 200


def _delete_while_publishing(
    relay: S3Relay, stub: pb_grpc.AvatarSignerStub, user: str, upload_id: str
) -> grpc.RpcError:
    """Confirm the upload, holding its write of the avatar until DeleteAvatar has run from
    start to end; what the confirmation answered (a refusal, or the test fails)."""
    publish = relay.hold("PUT", f"/profiles/{user}/avatar")
    with ThreadPoolExecutor(1) as pool:
        confirming = pool.submit(_confirm, stub, user, upload_id)
        assert publish.arrived.wait(30), "the confirmation never tried to publish"
        assert _delete(stub, user).deleted is False  # nothing published yet
        publish.release()
        with pytest.raises(grpc.RpcError) as refused:
            confirming.result(60)
    return refused.value


@pytest.fixture
def relayed(verified_s3: VerifiedS3) -> Iterator[tuple[S3Relay, pb_grpc.AvatarSignerStub]]:
    """Verified mode whose every S3 request goes through a relay that can hold one."""
    relay = S3Relay(verified_s3[0].endpoint_url)
    running = ServerThread(settings_from(verified_env(*verified_s3), S3_ENDPOINT_URL=relay.url))
    try:
        with grpc.insecure_channel(running.target) as channel:
            yield relay, pb_grpc.AvatarSignerStub(channel)
    finally:
        running.stop()
        relay.close()


def test_a_confirmation_racing_a_deletion_does_not_bring_the_picture_back(
    relayed: tuple[S3Relay, pb_grpc.AvatarSignerStub],
) -> None:
    """ConfirmUpload has found no tombstone and is about to publish when DeleteAvatar runs
    from start to end (tombstone, delete); the publication lands after it."""
    relay, stub = relayed
    user = _user()
    upload_id = _stage(stub, user, _png())
    refused = _delete_while_publishing(relay, stub, user, upload_id)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(refused) == "DELETED"
    assert _shown(stub, user) in (403, 404)
    with pytest.raises(grpc.RpcError) as again:  # and a repeat is refused too
        _confirm(stub, user, upload_id)
    assert _reason(again.value) == "DELETED"


def test_direct_mode_answers_what_to_configure(s3_stub: pb_grpc.AvatarSignerStub) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _delete(s3_stub, _user())
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(refused.value) == "DIRECT_MODE"
    assert "UPLOAD_MODE=verified" in (refused.value.details() or "")


def test_nobody_else_may_delete_avatars(verified_s3: VerifiedS3) -> None:
    """The uploader's and the reader's own signed DELETE is refused by S3."""
    s3, identities = verified_s3
    endpoint = BucketEndpoint(s3.bucket, s3.region, s3.endpoint_url)
    s3.client("s3").put_object(Bucket=s3.bucket, Key="profiles/someone/avatar", Body=b"x")
    for name in ("uploader", "reader"):
        identity = identities[name]
        url = sigv4.presign(
            method="DELETE",
            origin=endpoint.origin,
            host=endpoint.host,
            path=endpoint.path("profiles/someone/avatar"),
            access_key_id=identity.access_key_id,
            secret_access_key=identity.secret_access_key,
            session_token=None,
            region=s3.region,
            signed_at=datetime.now(UTC).replace(microsecond=0),
            expires_in=60,
        )
        assert request("DELETE", url).status == 403, name


# --- who may call it ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_verified(
    verified_s3: VerifiedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, dict[str, object]]]:
    """Verified mode with a callers file and end-user tokens (HS256)."""
    profile = caller("profile-service", ["CreateUploadUrl", "ConfirmUpload", "DeleteAvatar"])
    feed = caller("feed-service", ["CreateDownloadUrl", "BatchCreateDownloadUrls"])
    eraser = caller("account-deletion", ["DeleteAvatar"], account_deletion=True)
    path: Path = tmp_path_factory.mktemp("callers") / "callers.toml"
    write_callers(path, [profile, feed, eraser])
    env = verified_env(*verified_s3) | JWT_ENV | {"CALLERS_FILE": str(path)}
    running = ServerThread(settings_from(env))
    try:
        yield running, {"profile": profile, "feed": feed, "eraser": eraser}
    finally:
        running.stop()


def _token(sub: str) -> str:
    now = int(time.time())
    token = jwt.encode(
        {"iss": "https://id.example", "aud": "avatar-signer", "sub": sub, "iat": now,
         "exp": now + 300},
        SECRET,
        algorithm="HS256",
    )  # fmt: skip
    leaks.remember(token)
    return token


def test_a_caller_without_the_right_is_refused(
    guarded_verified: tuple[ServerThread, dict[str, object]],
) -> None:
    server, callers = guarded_verified
    feed = callers["feed"]
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.AvatarSignerStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            _delete(stub, _user(), metadata=feed.metadata())  # type: ignore[attr-defined]
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_an_end_user_may_delete_only_their_own_avatar(
    guarded_verified: tuple[ServerThread, dict[str, object]],
) -> None:
    server, callers = guarded_verified
    profile, eraser = callers["profile"], callers["eraser"]
    alice = _user()
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.AvatarSignerStub(channel)
        as_alice = profile.metadata(**{"x-end-user-token": _token(alice)})  # type: ignore[attr-defined]
        _confirm(stub, alice, _stage(stub, alice, _png(), metadata=as_alice), metadata=as_alice)
        as_bob = profile.metadata(**{"x-end-user-token": _token("bob")})  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as refused:
            _delete(stub, alice, metadata=as_bob)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as missing:
            _delete(stub, alice, metadata=profile.metadata())  # type: ignore[attr-defined]
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _shown_as(stub, alice, callers) == 200
        # The account-deletion caller needs no end-user token; the user's own token works too.
        assert _delete(stub, alice, metadata=eraser.metadata()).deleted  # type: ignore[attr-defined]
        assert not _delete(stub, alice, metadata=as_alice).deleted


def _shown_as(stub: pb_grpc.AvatarSignerStub, user: str, callers: dict[str, object]) -> int:
    feed = callers["feed"]
    url = stub.CreateDownloadUrl(
        pb.CreateDownloadUrlRequest(user_id=user),
        metadata=feed.metadata(),  # type: ignore[attr-defined]
    ).url
    return request("GET", url).status


# --- a bucket that keeps old versions -------------------------------------------------------


@pytest.fixture(scope="module")
def versioned_bucket(verified_s3: VerifiedS3) -> tuple[seaweed_s3.LocalS3, dict[str, str]]:
    """A second bucket with versioning on, and identities from `policies --versioned`."""
    s3, _ = verified_s3
    bucket = "avatars-versioned"
    admin = s3.client("s3")
    admin.create_bucket(Bucket=bucket)
    admin.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    identities = seaweed_s3.create_identities(
        s3, UploadMode.VERIFIED, bucket=bucket, versioned=True
    )
    leaks.remember(*(identity.secret_access_key for identity in identities.values()))
    return s3, verified_env(s3, identities) | {"S3_BUCKET": bucket}


def test_on_a_versioned_bucket_old_versions_are_deleted_too(
    versioned_bucket: tuple[seaweed_s3.LocalS3, dict[str, str]],
) -> None:
    s3, env = versioned_bucket
    running = ServerThread(settings_from(env, DELETE_OLD_VERSIONS="true"))
    user = _user()
    key = f"profiles/{user}/avatar"
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            for size in (10, 20):  # two confirmed avatars: two versions of the key
                _confirm(stub, user, _stage(stub, user, _png((size, size))))
            done = _delete(stub, user)
    finally:
        running.stop()
    assert done.deleted and not done.old_versions_remain
    assert done.removed_keys[0] == key
    assert len([k for k in done.removed_keys if k.startswith(f"{key}?versionId=")]) == 2
    left = s3.client("s3").list_object_versions(Bucket=env["S3_BUCKET"], Prefix=key)
    assert not left.get("Versions") and not left.get("DeleteMarkers")


def test_check_and_deletion_say_when_old_versions_would_stay(
    versioned_bucket: tuple[seaweed_s3.LocalS3, dict[str, str]],
) -> None:
    _, env = versioned_bucket
    rows = {r.check: r for r in check.run(load_settings(env))}
    row = rows["deleted avatars leave no old version"]
    assert row.outcome == "FAIL" and "DELETE_OLD_VERSIONS=true" in row.detail
    running = ServerThread(settings_from(env))
    user = _user()
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            _confirm(stub, user, _stage(stub, user, _png()))
            done = _delete(stub, user)
            assert _shown(stub, user) in (403, 404)
    finally:
        running.stop()
    assert done.deleted and done.old_versions_remain
    on = {r.check: r.outcome for r in check.run(load_settings(env | {"DELETE_OLD_VERSIONS": "1"}))}
    assert on["deleted avatars leave no old version"] == "PASS"


def test_on_a_versioned_bucket_a_racing_confirmation_leaves_no_version(
    versioned_bucket: tuple[seaweed_s3.LocalS3, dict[str, str]],
) -> None:
    """As above, where every write is a version: the one the late confirmation wrote goes."""
    s3, env = versioned_bucket
    relay = S3Relay(s3.endpoint_url)
    running = ServerThread(
        settings_from(env, S3_ENDPOINT_URL=relay.url, DELETE_OLD_VERSIONS="true")
    )
    user = _user()
    key = f"profiles/{user}/avatar"
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            refused = _delete_while_publishing(relay, stub, user, _stage(stub, user, _png()))
    finally:
        running.stop()
        relay.close()
    assert _reason(refused) == "DELETED"
    left = s3.client("s3").list_object_versions(Bucket=env["S3_BUCKET"], Prefix=key)
    assert not left.get("Versions"), left.get("Versions")


def test_deletions_stalled_on_s3_leave_the_rest_of_the_server_working(
    verified_s3: VerifiedS3, tmp_path: Path
) -> None:
    """S3 hangs on the deletions' requests while many are asked for: they hold threads of
    their own, a few at most, and the others are refused BUSY; the server's own work in
    threads goes on (here: a right taken from a caller in the callers file takes effect)."""
    profile = caller("profile-service", ["DeleteAvatar", "CreateDownloadUrl"])
    path = write_callers(tmp_path / "callers.toml", [profile])
    relay = S3Relay(verified_s3[0].endpoint_url)
    env = verified_env(*verified_s3) | {"CALLERS_FILE": str(path), "S3_ENDPOINT_URL": relay.url}
    running = ServerThread(settings_from(env))
    stalled = relay.stall("HEAD", "/avatar")
    try:
        with grpc.insecure_channel(running.target) as channel, ThreadPoolExecutor(16) as pool:
            stub = pb_grpc.AvatarSignerStub(channel)

            def delete(user: str) -> grpc.StatusCode:
                try:
                    stub.DeleteAvatar(
                        pb.DeleteAvatarRequest(user_id=user), timeout=4, metadata=profile.metadata()
                    )
                except grpc.RpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            deletions = [pool.submit(delete, _user()) for _ in range(16)]
            codes = [deletion.result(30) for deletion in deletions]
            assert stalled.arrived.is_set()
            write_callers(path, [replace(profile, allow=("DeleteAvatar",))])
            deadline = time.monotonic() + 20  # the files are looked at every 5 s
            while True:
                try:
                    stub.CreateDownloadUrl(
                        pb.CreateDownloadUrlRequest(user_id="alice"),
                        timeout=5,
                        metadata=profile.metadata(),
                    )
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
                    break
                assert time.monotonic() < deadline, "the callers file was never reloaded"
                time.sleep(0.2)
    finally:
        stalled.release()
        running.stop()
        relay.close()
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}


def test_more_old_versions_than_one_listing_holds_are_all_deleted(
    versioned_bucket: tuple[seaweed_s3.LocalS3, dict[str, str]],
) -> None:
    """S3 lists at most 1000 versions per answer: a user who changed their avatar more
    often than that keeps none of them after a deletion."""
    s3, env = versioned_bucket
    user = _user()
    key = f"profiles/{user}/avatar"
    admin = s3.client("s3")
    with ThreadPoolExecutor(8) as pool:  # what 1003 confirmed uploads leave behind
        list(pool.map(lambda _: admin.put_object(Bucket=env["S3_BUCKET"], Key=key, Body=b"x"),
                      range(1003)))  # fmt: skip
    running = ServerThread(settings_from(env, DELETE_OLD_VERSIONS="true"))
    try:
        with grpc.insecure_channel(running.target) as channel:
            done = pb_grpc.AvatarSignerStub(channel).DeleteAvatar(
                pb.DeleteAvatarRequest(user_id=user), timeout=120
            )
    finally:
        running.stop()
    assert done.deleted and not done.old_versions_remain
    left = admin.list_object_versions(Bucket=env["S3_BUCKET"], Prefix=key)
    assert len(left.get("Versions", [])) == 0
    assert len(done.removed_keys) == 1 + 1003


def test_a_user_who_uses_up_their_uploads_cannot_hold_off_account_deletion(
    verified_s3: VerifiedS3, tmp_path: Path
) -> None:
    """The user's own bucket (uploads and deletions) is theirs to use up; the caller that
    erases closed accounts is bounded by its own per-caller limit, not by it."""
    profile = caller("profile-service", ["CreateUploadUrl", "DeleteAvatar"])
    eraser = caller("account-deletion", ["DeleteAvatar"], account_deletion=True)
    path = write_callers(tmp_path / "callers.toml", [profile, eraser])
    env = verified_env(*verified_s3) | JWT_ENV | {"CALLERS_FILE": str(path)}
    running = ServerThread(
        settings_from(env, UPLOADS_PER_USER_PER_SECOND="0.001", UPLOADS_PER_USER_BURST="2")
    )
    user = _user()
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            as_user = profile.metadata(**{"x-end-user-token": _token(user)})
            upload = pb.CreateUploadUrlRequest(
                user_id=user, content_type="image/png", content_length=100
            )
            for _ in range(2):
                stub.CreateUploadUrl(upload, metadata=as_user)
            with pytest.raises(grpc.RpcError) as limited:  # the user's bucket is empty
                _delete(stub, user, metadata=as_user)
            assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert _delete(stub, user, metadata=eraser.metadata()).deleted is False
    finally:
        running.stop()
