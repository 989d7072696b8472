"""DOWNLOAD_URL_REUSE_SECONDS: one byte-identical, cache-friendly download URL per window.

Signing time is rounded down to the window, so every caller asking for the same user (and
ttl) within it gets the same URL; `response-cache-control: private, max-age=<ttl - window>`
is signed in, and `expires_at` is the URL's true expiry. The clock is injected.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
import seaweed_s3
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.credentials.sources import StaticCredentials
from avatarsigner_server.settings import SettingsError
from avatarsigner_server.settings import load as load_settings
from avatarsigner_server.signing.key_pairs import Credentials
from avatarsigner_server.signing.url_signers import BucketEndpoint, DownloadSigner
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotocoreCredentials
from conftest import s3_env
from google.protobuf import duration_pb2
from s3http import request
from servers import FAKE_ENV, ServerThread, settings_from

WINDOW = 60
TTL = 300
# A window boundary: 2030-01-01T00:00:00Z is a whole number of minutes since the epoch.
WINDOW_START = datetime(2030, 1, 1, tzinfo=UTC)
READER = Credentials("READERKEYID0000001", "reader-secret-00001")


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _signer(clock: FakeClock, reuse: int = WINDOW, endpoint: str | None = None) -> DownloadSigner:
    return DownloadSigner(
        StaticCredentials(READER),
        BucketEndpoint("avatars", "eu-west-1", endpoint),
        "eu-west-1",
        clock,
        reuse_seconds=reuse,
    )


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# --- the signer, with an injected clock ----------------------------------------------------


def test_same_url_for_every_caller_within_a_window() -> None:
    clock = FakeClock(WINDOW_START + timedelta(seconds=0.2))
    signer = _signer(clock)
    first = signer.sign("profiles/alice/avatar", ttl_seconds=TTL)
    for offset in (1, 17.5, WINDOW - 0.001):
        clock.now = WINDOW_START + timedelta(seconds=offset)
        again = signer.sign("profiles/alice/avatar", ttl_seconds=TTL)
        assert again.url == first.url
        assert again.expires_at == first.expires_at


def test_new_url_in_the_next_window() -> None:
    clock = FakeClock(WINDOW_START + timedelta(seconds=WINDOW - 1))
    signer = _signer(clock)
    before = signer.sign("profiles/alice/avatar", ttl_seconds=TTL)
    clock.now = WINDOW_START + timedelta(seconds=WINDOW)
    after = signer.sign("profiles/alice/avatar", ttl_seconds=TTL)
    assert after.url != before.url
    assert after.expires_at - before.expires_at == timedelta(seconds=WINDOW)


def test_different_users_and_ttls_get_different_urls() -> None:
    signer = _signer(FakeClock(WINDOW_START + timedelta(seconds=5)))
    alice = signer.sign("profiles/alice/avatar", ttl_seconds=TTL)
    assert signer.sign("profiles/bob/avatar", ttl_seconds=TTL).url != alice.url
    assert signer.sign("profiles/alice/avatar", ttl_seconds=TTL + 1).url != alice.url


def test_url_is_signed_at_the_window_start_and_expires_exactly_ttl_later() -> None:
    signed = _signer(FakeClock(WINDOW_START + timedelta(seconds=42.9))).sign(
        "profiles/alice/avatar", ttl_seconds=TTL
    )
    query = _query(signed.url)
    assert query["X-Amz-Date"] == "20300101T000000Z"
    assert query["X-Amz-Expires"] == str(TTL)
    assert signed.expires_at == WINDOW_START + timedelta(seconds=TTL)


def test_cache_control_is_signed_with_the_least_remaining_life() -> None:
    """A holder who got the URL at the window's last moment has ttl - window seconds left."""
    signed = _signer(FakeClock(WINDOW_START)).sign("profiles/alice/avatar", ttl_seconds=TTL)
    query = _query(signed.url)
    assert query["response-cache-control"] == f"private, max-age={TTL - WINDOW}"
    # Signed, not merely appended: it sits before the auth parameters, as botocore puts it.
    names = [pair.split("=", 1)[0] for pair in urlsplit(signed.url).query.split("&")]
    assert names[0] == "response-cache-control" and names[-1] == "X-Amz-Signature"


def test_reuse_url_is_byte_identical_to_botocore_with_response_cache_control() -> None:
    signed = _signer(FakeClock(WINDOW_START + timedelta(seconds=3))).sign(
        "profiles/alice/avatar", ttl_seconds=TTL
    )
    url = (
        "https://avatars.s3.eu-west-1.amazonaws.com/profiles/alice/avatar"
        f"?response-cache-control=private%2C%20max-age%3D{TTL - WINDOW}"
        "&response-content-disposition=inline&response-content-encoding=identity"
    )
    botocore_request = AWSRequest(method="GET", url=url)
    auth = S3SigV4QueryAuth(
        BotocoreCredentials(READER.access_key_id, READER.secret_access_key),
        "s3",
        "eu-west-1",
        expires=TTL,
    )
    with mock.patch(
        "botocore.auth.get_current_datetime", return_value=WINDOW_START.replace(tzinfo=None)
    ):
        auth.add_auth(botocore_request)
    assert signed.url == botocore_request.url


@pytest.mark.parametrize("ttl", [1, WINDOW - 1, WINDOW], ids=["1s", "window-1", "window"])
def test_ttl_not_longer_than_the_window_gets_a_fresh_unshared_url(ttl: int) -> None:
    """Such a URL could be dead on arrival if shared, so it is signed now, without cache."""
    now = WINDOW_START + timedelta(seconds=WINDOW - 1)
    signed = _signer(FakeClock(now)).sign("profiles/alice/avatar", ttl_seconds=ttl)
    assert signed.expires_at == now + timedelta(seconds=ttl)
    assert "response-cache-control" not in _query(signed.url)


def test_reuse_off_signs_at_the_current_second() -> None:
    now = WINDOW_START + timedelta(seconds=42)
    signed = _signer(FakeClock(now), reuse=0).sign("profiles/alice/avatar", ttl_seconds=TTL)
    assert _query(signed.url)["X-Amz-Date"] == "20300101T000042Z"
    assert "response-cache-control" not in _query(signed.url)


# --- the setting ---------------------------------------------------------------------------


def test_reuse_is_off_by_default() -> None:
    assert settings_from(FAKE_ENV).download_url_reuse_seconds == 0


@pytest.mark.parametrize(
    ("value", "ttl"),
    [("300", "300"), ("301", "300"), ("60", "60"), ("-1", "300"), ("1.5", "300"), ("x", "300")],
    ids=["equal-to-ttl", "over-ttl", "equal-to-short-ttl", "negative", "fraction", "word"],
)
def test_bad_reuse_window_is_one_line_naming_the_variable(value: str, ttl: str) -> None:
    env = FAKE_ENV | {"DOWNLOAD_URL_REUSE_SECONDS": value, "DOWNLOAD_TTL_SECONDS": ttl}
    with pytest.raises(SettingsError) as raised:
        load_settings(env)
    message = str(raised.value)
    assert message.startswith("DOWNLOAD_URL_REUSE_SECONDS: ") and "\n" not in message


# --- through the service -------------------------------------------------------------------


@pytest.fixture
def reuse_server() -> Iterator[tuple[ServerThread, FakeClock]]:
    clock = FakeClock(WINDOW_START + timedelta(seconds=10))
    settings = settings_from(FAKE_ENV, DOWNLOAD_URL_REUSE_SECONDS=str(WINDOW))
    server = ServerThread(settings, clock=clock)
    yield server, clock
    server.stop()


def test_service_hands_every_caller_the_same_url_within_a_window(
    reuse_server: tuple[ServerThread, FakeClock],
) -> None:
    server, clock = reuse_server
    with server.channel() as one, server.channel() as other:
        first = pb_grpc.AvatarSignerStub(one).CreateDownloadUrl(
            pb.CreateDownloadUrlRequest(user_id="alice")
        )
        clock.now += timedelta(seconds=30)
        second = pb_grpc.AvatarSignerStub(other).CreateDownloadUrl(
            pb.CreateDownloadUrlRequest(user_id="alice")
        )
        batch = pb_grpc.AvatarSignerStub(other).BatchCreateDownloadUrls(
            pb.BatchCreateDownloadUrlsRequest(user_ids=["bob", "alice"])
        )
        clock.now += timedelta(seconds=WINDOW)
        next_window = pb_grpc.AvatarSignerStub(one).CreateDownloadUrl(
            pb.CreateDownloadUrlRequest(user_id="alice")
        )
    assert second.url == first.url == batch.urls[1].url
    assert batch.urls[0].url != first.url
    assert next_window.url != first.url
    assert first.expires_at.ToDatetime(UTC) == WINDOW_START + timedelta(seconds=TTL)
    assert next_window.expires_at.ToDatetime(UTC) == WINDOW_START + timedelta(seconds=WINDOW + TTL)


# --- on the real S3 ------------------------------------------------------------------------

LocalS3 = tuple[seaweed_s3.LocalS3, seaweed_s3.Identity, seaweed_s3.Identity]


def test_reused_url_works_on_s3_and_returns_the_cache_control_header(
    local_s3: LocalS3, s3_stub: pb_grpc.AvatarSignerStub
) -> None:
    user = "u-" + uuid.uuid4().hex[:12]
    image = b"\x89PNG\r\n\x1a\n" + uuid.uuid4().bytes
    upload = s3_stub.CreateUploadUrl(
        pb.CreateUploadUrlRequest(user_id=user, content_type="image/png", content_length=len(image))
    )
    assert request("PUT", upload.url, image, dict(upload.headers)).status == 200

    settings = load_settings(s3_env(*local_s3) | {"DOWNLOAD_URL_REUSE_SECONDS": str(WINDOW)})
    server = ServerThread(settings)  # the real clock: S3 judges the expiry
    try:
        with server.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            ask = pb.CreateDownloadUrlRequest(user_id=user, ttl=duration_pb2.Duration(seconds=TTL))
            urls = {stub.CreateDownloadUrl(ask).url for _ in range(3)}
    finally:
        server.stop()
    # Three calls within a second are in one window, unless one straddled a boundary.
    assert len(urls) <= 2
    for url in urls:
        reply = request("GET", url)
        assert reply.status == 200, reply
        assert reply.body == image
        assert reply.headers["content-type"] == "image/png"
        assert reply.headers["cache-control"] == f"private, max-age={TTL - WINDOW}"
