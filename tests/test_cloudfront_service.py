"""CloudFront through the real gRPC server: download URLs, viewer cookies, refusals, rotation.

Every call crosses a real HTTP/2 connection to the production server (tests/servers.py). What
it hands out is judged by botocore (URLs, byte for byte), AWS's JavaScript signer (cookies)
and the edge model (tests/cloudfront_edge.py), which holds only the public key. There is no
CloudFront to run here; the edge model is AWS's documented rules, written out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.cookies import SimpleCookie
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cloudfront_edge as edge
import grpc
import leaks
import pytest
from avatarsigner import AsyncAvatarSignerClient, AvatarSignerClient, ViewerCookies, cli
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.signing import cloudfront_viewers
from avatarsigner_server.signing.cloudfront import CloudFrontSigner, load_private_key
from avatarsigner_server.signing.cloudfront_viewers import CloudFrontKeyPair
from avatarsigner_server.signing.object_keys import ObjectKeys
from botocore.signers import CloudFrontSigner as BotocoreCloudFrontSigner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from guarded import caller, write_callers
from servers import FAKE_ENV, ServerThread, settings_from
from webapp.serving import Background
from webapp.settings import WebSettings

ORIGIN = "https://avatars.example.com"
KEY_ID = edge.KEY_ID
NEW_KEY_ID = "K3NEWKEYPAIR42"
# A window boundary: a whole number of minutes (and hours) since the epoch.
T0 = datetime(2030, 1, 1, tzinfo=UTC)
WINDOW = 60


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# --------------------------------------------------------------------------- keys and servers


def pem(key: Any, fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> bytes:
    data = bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    leaks.remember(*(line.decode() for line in data.splitlines() if not line.startswith(b"-")))
    return data


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def replace_file(path: Path, data: bytes) -> None:
    """Write whole, then move into place (as a Kubernetes Secret update does)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def cloudfront_env(tmp_path: Path, key: Any, **extra: str) -> dict[str, str]:
    key_file = tmp_path / "cloudfront.pem"
    replace_file(key_file, pem(key))
    env = {
        **FAKE_ENV,
        "CLOUDFRONT_URL": ORIGIN,
        "CLOUDFRONT_KEY_PAIR_ID": KEY_ID,
        "CLOUDFRONT_PRIVATE_KEY_FILE": str(key_file),
    }
    env.update(extra)
    return {name: value for name, value in env.items() if value}


@pytest.fixture
def serve() -> Iterator[Callable[..., pb_grpc.AvatarSignerStub]]:
    """serve(env, clock=None) -> a stub of a real server with those settings."""
    running: list[tuple[ServerThread, grpc.Channel]] = []

    def start(env: Mapping[str, str], clock: FakeClock | None = None) -> pb_grpc.AvatarSignerStub:
        kwargs = {} if clock is None else {"clock": clock}
        server = ServerThread(settings_from(dict(env)), **kwargs)
        channel = server.channel()
        running.append((server, channel))
        return pb_grpc.AvatarSignerStub(channel)

    yield start
    for server, channel in running:
        channel.close()
        server.stop()


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every CloudFront policy really signed (cache hits sign nothing), in any server."""
    signed: list[bytes] = []
    sign = CloudFrontSigner.signature

    def counted(self: CloudFrontSigner, policy_bytes: bytes) -> str:
        signed.append(policy_bytes)
        return sign(self, policy_bytes)

    monkeypatch.setattr(CloudFrontSigner, "signature", counted)
    return signed


def ttl(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=seconds))
    return duration


def violations(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    found: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.update((v.field, v.description) for v in bad.field_violations)
    return found


def expires(stamp: Any) -> datetime:
    return datetime.fromtimestamp(stamp.seconds, UTC)


# --------------------------------------------------------------------------- download URLs


def test_download_url_is_byte_identical_to_botocore(
    tmp_path: Path, serve: Callable[..., pb_grpc.AvatarSignerStub], rsa_key: rsa.RSAPrivateKey
) -> None:
    stub = serve(cloudfront_env(tmp_path, rsa_key), FakeClock(T0 + timedelta(seconds=7.5)))
    answer = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice"))
    sha1 = hashes.SHA1()  # noqa: S303 - what botocore documents for CloudFront
    botocore = BotocoreCloudFrontSigner(
        KEY_ID, lambda message: rsa_key.sign(message, padding.PKCS1v15(), sha1)
    )
    expected_expiry = T0 + timedelta(seconds=7 + 300)  # DOWNLOAD_TTL_SECONDS' default
    assert answer.url == botocore.generate_presigned_url(
        f"{ORIGIN}/profiles/alice/avatar", date_less_than=expected_expiry
    )
    assert expires(answer.expires_at) == expected_expiry
    assert answer.key == "profiles/alice/avatar"


def test_batch_urls_are_cloudfront_urls_in_request_order(
    tmp_path: Path, serve: Callable[..., pb_grpc.AvatarSignerStub], rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = FakeClock(T0)
    stub = serve(cloudfront_env(tmp_path, rsa_key, S3_KEY_PREFIX="avatars/v1/"), clock)
    ids = ["bob", "alice", "bob", "c.d_e-9"]
    answer = stub.BatchCreateDownloadUrls(
        pb.BatchCreateDownloadUrlsRequest(user_ids=ids, ttl=ttl(120))
    )
    assert [item.user_id for item in answer.urls] == ids
    for user_id, item in zip(ids, answer.urls, strict=True):
        assert item.key == f"avatars/v1/{user_id}/avatar"
        assert item.url.startswith(f"{ORIGIN}/avatars/v1/{user_id}/avatar?Expires=")
        assert expires(item.expires_at) == T0 + timedelta(seconds=120)
        public = rsa_key.public_key()
        assert edge.accepts_url(item.url, public, T0 + timedelta(seconds=119))
        assert not edge.accepts_url(item.url, public, T0 + timedelta(seconds=120))
        other = item.url.replace(f"/{user_id}/", "/mallory/")
        assert not edge.accepts_url(other, public, T0)


def test_sha256_and_ecdsa_urls_verify_with_the_public_key(
    tmp_path: Path, serve: Callable[..., pb_grpc.AvatarSignerStub]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    stub = serve(cloudfront_env(tmp_path, key, CLOUDFRONT_HASH_ALGORITHM="sha256"), FakeClock(T0))
    answer = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice"))
    assert answer.url.endswith(f"&Key-Pair-Id={KEY_ID}&Hash-Algorithm=SHA256")
    public = key.public_key()
    assert edge.accepts_url(answer.url, public, T0)
    assert not edge.accepts_url(answer.url.replace("&Hash-Algorithm=SHA256", ""), public, T0)


@pytest.mark.parametrize(
    ("seconds", "field"),
    [(1201, "ttl"), (0.5, "ttl"), (0, "ttl")],
    ids=["over-maximum", "fraction", "zero"],
)
def test_download_ttl_rules_are_the_s3_rules(
    tmp_path: Path,
    serve: Callable[..., pb_grpc.AvatarSignerStub],
    rsa_key: rsa.RSAPrivateKey,
    seconds: float,
    field: str,
) -> None:
    stub = serve(cloudfront_env(tmp_path, rsa_key))
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice", ttl=ttl(seconds)))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(caught.value)


# --------------------------------------------------------------------------- the reuse window


def _batch(stub: pb_grpc.AvatarSignerStub, ids: list[str]) -> list[str]:
    answer = stub.BatchCreateDownloadUrls(pb.BatchCreateDownloadUrlsRequest(user_ids=ids))
    return [item.url for item in answer.urls]


FEED = [f"user{n:03d}" for n in range(100)]


def test_reuse_window_gives_identical_urls_for_one_signature_each(
    tmp_path: Path,
    serve: Callable[..., pb_grpc.AvatarSignerStub],
    rsa_key: rsa.RSAPrivateKey,
    signatures: list[bytes],
) -> None:
    clock = FakeClock(T0 + timedelta(seconds=5))
    env = cloudfront_env(tmp_path, rsa_key, DOWNLOAD_URL_REUSE_SECONDS=str(WINDOW))
    stub = serve(env, clock)
    first = _batch(stub, FEED)
    clock.now = T0 + timedelta(seconds=WINDOW - 1)
    assert _batch(stub, FEED) == first
    single = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id=FEED[7]))
    assert single.url == first[7]
    # Signed at the window's start; expires_at is the true expiry, ttl after it.
    assert expires(single.expires_at) == T0 + timedelta(seconds=300)
    assert len(signatures) == len(FEED)  # the second page and the single URL: no signature

    clock.now = T0 + timedelta(seconds=WINDOW)
    later = _batch(stub, FEED)
    assert all(new != old for new, old in zip(later, first, strict=True))
    assert len(signatures) == 2 * len(FEED)


def test_without_a_window_every_call_signs_each_url(
    tmp_path: Path,
    serve: Callable[..., pb_grpc.AvatarSignerStub],
    rsa_key: rsa.RSAPrivateKey,
    signatures: list[bytes],
) -> None:
    clock = FakeClock(T0)
    stub = serve(cloudfront_env(tmp_path, rsa_key), clock)
    _batch(stub, FEED)
    clock.now = T0 + timedelta(seconds=1)
    _batch(stub, FEED)
    assert len(signatures) == 2 * len(FEED)


def test_past_the_window_cache_bound_urls_are_signed_per_call_and_still_identical(
    rsa_key: rsa.RSAPrivateKey, signatures: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cloudfront_viewers, "WINDOW_CACHE_SIZE", 3)
    pair = CloudFrontKeyPair(load_private_key(pem(rsa_key)), KEY_ID)
    signer = cloudfront_viewers.CloudFrontDownloadSigner(
        SimpleNamespace(current=lambda: pair), ORIGIN, clock=FakeClock(T0), reuse_seconds=WINDOW
    )
    keys = [f"profiles/u{n}/avatar" for n in range(5)]
    first = [signer.sign(key, ttl_seconds=300).url for key in keys]
    again = [signer.sign(key, ttl_seconds=300).url for key in keys]
    assert again == first
    assert len(signatures) == 5 + 2  # the three kept, the two past the bound signed again


def test_a_ttl_not_longer_than_the_window_gets_a_fresh_url(
    tmp_path: Path, serve: Callable[..., pb_grpc.AvatarSignerStub], rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = FakeClock(T0 + timedelta(seconds=42))
    stub = serve(cloudfront_env(tmp_path, rsa_key, DOWNLOAD_URL_REUSE_SECONDS="60"), clock)
    answer = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice", ttl=ttl(60)))
    assert expires(answer.expires_at) == T0 + timedelta(seconds=42 + 60)


# --------------------------------------------------------------------------- viewer cookies


def _cookies(stub: pb_grpc.AvatarSignerStub, seconds: float | None = None) -> Any:
    request = pb.CreateViewerCookiesRequest(ttl=None if seconds is None else ttl(seconds))
    return stub.CreateViewerCookies(request)


def test_viewer_cookies_grant_every_avatar_and_nothing_else_until_expiry(
    tmp_path: Path, serve: Callable[..., pb_grpc.AvatarSignerStub], rsa_key: rsa.RSAPrivateKey
) -> None:
    stub = serve(cloudfront_env(tmp_path, rsa_key), FakeClock(T0 + timedelta(seconds=0.9)))
    answer = _cookies(stub)
    until = T0 + timedelta(seconds=3600)  # CLOUDFRONT_COOKIE_TTL_SECONDS' default
    assert expires(answer.expires_at) == until
    assert answer.resource == f"{ORIGIN}/profiles/*/avatar"
    assert answer.url_template == f"{ORIGIN}/profiles/{{user_id}}/avatar"
    cookies = dict(answer.cookies)
    assert set(cookies) == {"CloudFront-Policy", "CloudFront-Signature", "CloudFront-Key-Pair-Id"}
    public, before = rsa_key.public_key(), until - timedelta(seconds=1)
    for user_id in ("alice", "bob", "c.d_e-9"):
        url = answer.url_template.format(user_id=user_id)
        assert edge.accepts_cookies(cookies, url, public, before)
        assert not edge.accepts_cookies(cookies, url, public, until)
    keys = ObjectKeys()
    for denied in (
        f"{ORIGIN}/{keys.staging_key('alice', 'upload-1')}",  # a staged, unverified upload
        f"{ORIGIN}/{keys.confirmed_key('alice', 'upload-1')}",  # a confirmation marker
        f"{ORIGIN}/{keys.canary_key()}",  # avatar-signer check's canary
        f"{ORIGIN}/uploads/alice/avatar",
        "https://evil.example.com/profiles/a/avatar",
    ):
        assert not edge.accepts_cookies(cookies, denied, public, before), denied


def test_set_cookie_headers_carry_the_documented_attributes(
    tmp_path: Path, serve: Callable[..., pb_grpc.AvatarSignerStub], rsa_key: rsa.RSAPrivateKey
) -> None:
    env = cloudfront_env(
        tmp_path, rsa_key, S3_KEY_PREFIX="media/avatars/", CLOUDFRONT_COOKIE_DOMAIN="example.com"
    )
    answer = _cookies(serve(env, FakeClock(T0)), 600)
    assert answer.resource == f"{ORIGIN}/media/avatars/*/avatar"
    assert [header.split("=", 1)[0] for header in answer.set_cookie] == [
        "CloudFront-Policy",
        "CloudFront-Signature",
        "CloudFront-Key-Pair-Id",
    ]
    for header in answer.set_cookie:
        (morsel,) = SimpleCookie(header).values()
        assert morsel.value == answer.cookies[morsel.key]
        assert morsel["domain"] == "example.com"
        assert morsel["path"] == "/media/avatars/"
        assert morsel["expires"] == format_datetime(T0 + timedelta(seconds=600), usegmt=True)
        assert morsel["secure"] is True and morsel["httponly"] is True
        assert morsel["samesite"] == "Strict"


def test_cookies_are_host_only_without_a_cookie_domain(
    tmp_path: Path, serve: Callable[..., pb_grpc.AvatarSignerStub], rsa_key: rsa.RSAPrivateKey
) -> None:
    answer = _cookies(serve(cloudfront_env(tmp_path, rsa_key)))
    for header in answer.set_cookie:
        assert "Domain=" not in header
        assert "; Path=/profiles/;" in header


@pytest.mark.parametrize(
    ("env", "seconds", "expected"),
    [
        ({}, 43200, None),
        ({}, 43201, "ttl"),
        ({}, 1.5, "ttl"),
        (
            {"CLOUDFRONT_COOKIE_TTL_SECONDS": "600", "CLOUDFRONT_COOKIE_MAX_TTL_SECONDS": "900"},
            901,
            "ttl",
        ),
        ({"CLOUDFRONT_COOKIE_TTL_SECONDS": "120"}, None, None),
    ],
    ids=["at-maximum", "over-maximum", "fraction", "over-configured-maximum", "default"],
)
def test_cookie_ttl_has_its_own_default_and_maximum(
    tmp_path: Path,
    serve: Callable[..., pb_grpc.AvatarSignerStub],
    rsa_key: rsa.RSAPrivateKey,
    env: dict[str, str],
    seconds: float | None,
    expected: str | None,
) -> None:
    stub = serve(cloudfront_env(tmp_path, rsa_key, **env), FakeClock(T0))
    if expected is None:
        answer = _cookies(stub, seconds)
        wanted = seconds or int(env["CLOUDFRONT_COOKIE_TTL_SECONDS"])
        assert expires(answer.expires_at) == T0 + timedelta(seconds=wanted)
        return
    with pytest.raises(grpc.RpcError) as caught:
        _cookies(stub, seconds)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in violations(caught.value)


def test_cookies_within_one_second_cost_one_signature(
    tmp_path: Path,
    serve: Callable[..., pb_grpc.AvatarSignerStub],
    rsa_key: rsa.RSAPrivateKey,
    signatures: list[bytes],
) -> None:
    clock = FakeClock(T0)
    stub = serve(cloudfront_env(tmp_path, rsa_key), clock)
    first = _cookies(stub)
    assert _cookies(stub) == first
    clock.now = T0 + timedelta(seconds=1)
    assert _cookies(stub).cookies != first.cookies
    assert len(signatures) == 2


def test_without_cloudfront_cookies_are_failed_precondition_naming_the_settings(
    serve: Callable[..., pb_grpc.AvatarSignerStub],
) -> None:
    stub = serve(FAKE_ENV)
    with pytest.raises(grpc.RpcError) as caught:
        _cookies(stub)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    message = caught.value.details() or ""
    for name in ("CLOUDFRONT_URL", "CLOUDFRONT_KEY_PAIR_ID", "CLOUDFRONT_PRIVATE_KEY_FILE"):
        assert name in message
    # And downloads stay S3 presigned GETs.
    answer = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice"))
    assert answer.url.startswith("https://avatars.s3.eu-west-1.amazonaws.com/profiles/alice/")


@pytest.mark.slow  # runs Node
def test_cookies_match_aws_javascript_signer(
    tmp_path: Path, serve: Callable[..., pb_grpc.AvatarSignerStub], rsa_key: rsa.RSAPrivateKey
) -> None:
    env = cloudfront_env(tmp_path, rsa_key, CLOUDFRONT_HASH_ALGORITHM="SHA256")
    answer = _cookies(serve(env, FakeClock(T0)), 900)
    (theirs,) = edge.aws_javascript_signer(
        {
            "cookies": [
                {
                    "privateKey": pem(rsa_key).decode(),
                    "keyPairId": KEY_ID,
                    "resource": answer.resource,
                    "expires": answer.expires_at.seconds,
                    "algorithm": "SHA256",
                }
            ]
        }
    )["cookies"]
    assert dict(answer.cookies) == theirs["cookies"]


def test_a_caller_needs_the_right_to_create_viewer_cookies(
    tmp_path: Path, serve: Callable[..., pb_grpc.AvatarSignerStub], rsa_key: rsa.RSAPrivateKey
) -> None:
    web = caller("web-app", ["CreateViewerCookies"])
    feed = caller("feed-service", ["BatchCreateDownloadUrls"])
    callers = write_callers(tmp_path / "callers.toml", [web, feed])
    stub = serve(cloudfront_env(tmp_path, rsa_key, CALLERS_FILE=str(callers)))
    request = pb.CreateViewerCookiesRequest()
    assert stub.CreateViewerCookies(request, metadata=web.metadata()).resource
    for metadata, code in ((feed.metadata(), "PERMISSION_DENIED"), ((), "UNAUTHENTICATED")):
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateViewerCookies(request, metadata=metadata)
        assert caught.value.code().name == code


# --------------------------------------------------------------------------- key rotation


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def credential_log() -> Iterator[Captured]:
    handler = Captured()
    logger = logging.getLogger("avatarsigner.credentials")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _key_pair_id(url: str) -> str:
    return url.rsplit("Key-Pair-Id=", 1)[1]


def test_rotated_key_and_id_files_are_used_without_a_restart(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    credential_log: Captured,
) -> None:
    id_file = tmp_path / "key-pair-id"
    id_file.write_text(KEY_ID + "\n")
    env = cloudfront_env(
        tmp_path,
        rsa_key,
        CLOUDFRONT_KEY_PAIR_ID="",
        CLOUDFRONT_KEY_PAIR_ID_FILE=str(id_file),
        DOWNLOAD_URL_REUSE_SECONDS=str(WINDOW),
    )
    server = ServerThread(settings_from(env), clock=FakeClock(T0))
    try:
        with server.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            request = pb.CreateDownloadUrlRequest(user_id="alice")
            before = stub.CreateDownloadUrl(request).url
            assert edge.accepts_url(before, rsa_key.public_key(), T0)

            replace_file(Path(env["CLOUDFRONT_PRIVATE_KEY_FILE"]), pem(other_rsa_key))
            replace_file(id_file, NEW_KEY_ID.encode())
            server.server.credentials.refresh_all()  # seen once: not yet trusted whole
            assert stub.CreateDownloadUrl(request).url == before
            server.server.credentials.refresh_all()  # unchanged since: adopted
            after = stub.CreateDownloadUrl(request).url  # same window: not the cached URL
            assert _key_pair_id(after) == NEW_KEY_ID
            assert edge.accepts_url(after, other_rsa_key.public_key(), T0, NEW_KEY_ID)
            cookies = dict(_cookies(stub).cookies)
            assert cookies["CloudFront-Key-Pair-Id"] == NEW_KEY_ID
            url = f"{ORIGIN}/profiles/alice/avatar"
            assert edge.accepts_cookies(cookies, url, other_rsa_key.public_key(), T0, NEW_KEY_ID)
    finally:
        server.stop()
    assert any("CloudFront key rotated" in m for m in credential_log.messages(logging.INFO))
    assert not credential_log.messages(logging.WARNING)


def test_another_key_under_the_same_id_is_refused_and_the_old_key_kept(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    credential_log: Captured,
) -> None:
    env = cloudfront_env(tmp_path, rsa_key)
    server = ServerThread(settings_from(env), clock=FakeClock(T0))
    try:
        with server.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            replace_file(Path(env["CLOUDFRONT_PRIVATE_KEY_FILE"]), pem(other_rsa_key))
            for _ in range(3):
                server.server.credentials.refresh_all()
            url = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice")).url
            assert edge.accepts_url(url, rsa_key.public_key(), T0)
    finally:
        server.stop()
    (warning,) = credential_log.messages(logging.WARNING)  # once, not once per check
    assert "CLOUDFRONT_PRIVATE_KEY_FILE" in warning and KEY_ID in warning
    assert "keeping the previous key" in warning


def test_the_same_key_rewritten_in_another_format_is_no_rotation(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, credential_log: Captured
) -> None:
    env = cloudfront_env(tmp_path, rsa_key)
    server = ServerThread(settings_from(env), clock=FakeClock(T0))
    try:
        pkcs1 = pem(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL)
        replace_file(Path(env["CLOUDFRONT_PRIVATE_KEY_FILE"]), pkcs1)
        for _ in range(2):
            server.server.credentials.refresh_all()
    finally:
        server.stop()
    assert not credential_log.messages(logging.WARNING)
    assert not any("rotated" in m for m in credential_log.messages(logging.INFO))


# --------------------------------------------------------------------------- client and CLI


def _serve_thread(tmp_path: Path, key: Any) -> ServerThread:
    return ServerThread(settings_from(cloudfront_env(tmp_path, key)), clock=FakeClock(T0))


def test_python_clients_create_viewer_cookies(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    server = _serve_thread(tmp_path, rsa_key)
    try:
        with AvatarSignerClient(server.target) as client:
            cookies = client.create_viewer_cookies(timedelta(minutes=10))

        async def from_async() -> ViewerCookies:
            async with AsyncAvatarSignerClient(server.target) as client:
                return await client.create_viewer_cookies(600)

        assert asyncio.run(from_async()) == cookies
    finally:
        server.stop()
    assert cookies.expires_at == T0 + timedelta(seconds=600)
    assert cookies.resource == f"{ORIGIN}/profiles/*/avatar"
    assert cookies.url_for("alice") == f"{ORIGIN}/profiles/alice/avatar"
    assert edge.accepts_cookies(cookies.cookies, cookies.url_for("alice"), rsa_key.public_key(), T0)
    assert len(cookies.set_cookie) == 3
    shown = repr(cookies)
    assert cookies.cookies["CloudFront-Signature"] not in shown and "set_cookie" not in shown


def test_cli_prints_viewer_cookies_as_json(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    server = _serve_thread(tmp_path, rsa_key)
    try:
        code = cli.main(["--target", server.target, "viewer-cookies", "--ttl", "120"])
    finally:
        server.stop()
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["expires_at"] == "2030-01-01T00:02:00Z"
    assert printed["url_template"] == f"{ORIGIN}/profiles/{{user_id}}/avatar"
    assert set(printed["cookies"]) == {
        "CloudFront-Policy",
        "CloudFront-Signature",
        "CloudFront-Key-Pair-Id",
    }
    assert len(printed["set_cookie"]) == 3


def test_cli_without_cloudfront_fails_in_one_line_naming_the_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = ServerThread(settings_from(FAKE_ENV))
    try:
        code = cli.main(["--target", server.target, "viewer-cookies"])
    finally:
        server.stop()
    assert code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("avatar-signer-client: FAILED_PRECONDITION: ")
    assert "CLOUDFRONT_URL" in line


# --------------------------------------------------------------------------- the web example


def test_the_web_example_feed_under_viewer_cookies(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """examples/web with FEED_AVATARS=cookies: plain avatar URLs, and the cookies that grant
    them sent as Set-Cookie. (Its browser test stays on S3: there is no CloudFront here.)"""
    web_caller = caller("profile-web", ["CreateViewerCookies"])
    callers = write_callers(tmp_path / "callers.toml", [web_caller])
    env = cloudfront_env(
        tmp_path, rsa_key, CALLERS_FILE=str(callers), CLOUDFRONT_COOKIE_DOMAIN="example.com"
    )
    server = ServerThread(settings_from(env), clock=FakeClock(T0))
    web = Background(
        WebSettings(
            signer_target=server.target,
            signer_token=web_caller.token,
            port=0,
            feed_users=("alice", "bob"),
            feed_avatars="cookies",
        )
    )
    try:
        with urllib.request.urlopen(f"{web.origin}/api/feed", timeout=10) as response:
            body = json.loads(response.read())
            set_cookie = response.headers.get_all("set-cookie")
    finally:
        web.stop()
        server.stop()
    assert [avatar["url"] for avatar in body["avatars"]] == [
        f"{ORIGIN}/profiles/alice/avatar",
        f"{ORIGIN}/profiles/bob/avatar",
    ]
    cookies = {}
    for header in set_cookie:
        (morsel,) = SimpleCookie(header).values()
        assert morsel["domain"] == "example.com" and morsel["httponly"] is True
        cookies[morsel.key] = morsel.value
    for avatar in body["avatars"]:
        assert edge.accepts_cookies(cookies, avatar["url"], rsa_key.public_key(), T0)
