"""The suite-wide secret check is real: it sees the server's lines and it catches leaks.

conftest.py runs `leaks.find` over every avatarsigner log line produced during each test
(see tests/leaks.py); these tests prove that the capture is live (lines from the server's
own thread, at every level, arrive) and that planted secrets of each kind are caught.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import leaks
import pytest
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from guarded import caller, code_of, new_token, write_callers
from servers import FAKE_ENV, ServerThread, settings_from

PROFILE = caller("profile-service", ["CreateUploadUrl", "CreateDownloadUrl"])


def _collector() -> leaks.Collector:
    (collector,) = [
        h for h in logging.getLogger("avatarsigner").handlers if isinstance(h, leaks.Collector)
    ]
    return collector


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[pb_grpc.AvatarSignerStub]:
    running = ServerThread(
        settings_from(CALLERS_FILE=str(write_callers(tmp_path / "c.toml", [PROFILE])))
    )
    with running.channel() as channel:
        yield pb_grpc.AvatarSignerStub(channel)
    running.stop()


def test_every_avatarsigner_line_is_collected_at_every_level() -> None:
    assert logging.getLogger("avatarsigner").getEffectiveLevel() == logging.DEBUG
    assert _collector() is not None


def test_server_lines_reach_the_check_and_hold_no_secret(
    guarded: pb_grpc.AvatarSignerStub,
) -> None:
    before = len(_collector().peek())
    response = guarded.CreateUploadUrl(
        pb.CreateUploadUrlRequest(user_id="alice", content_type="image/png", content_length=3),
        metadata=PROFILE.metadata(),
        timeout=10,
    )
    leaks.remember(response.url.split("X-Amz-Signature=")[1])
    unknown = (("authorization", f"Bearer {new_token()}"),)
    assert code_of(guarded, "CreateDownloadUrl", unknown) == "UNAUTHENTICATED"
    lines = _collector().peek()[before:]
    assert any(
        '"decision": "allowed"' in line and '"key": "uploads/alice/' in line
        for line in lines
    )
    assert any('"reason": "unknown_token"' in line for line in lines)
    assert leaks.find(lines) == []


PLANTED = [
    ("s3-secret", FAKE_ENV["S3_UPLOAD_SECRET"]),
    ("presigned-url", "https://avatars.s3.eu-west-1.amazonaws.com/k?X-Amz-Signature=abc"),
    ("signature", "a" * 64),
    ("token-hash", PROFILE.token_sha256 or ""),
    ("bearer", "authorization: Bearer abcdefgh12345678"),
    ("bearer-token-alone", PROFILE.token or ""),
    ("jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"),
    ("unsigned-jwt", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0."),
    (
        "cloudfront-url",
        "https://avatars.example.com/profiles/a/avatar?Expires=1&Signature=" + "Ab~-_" * 10,
    ),
    ("cloudfront-cookie", "Set-Cookie: CloudFront-Signature=" + "Ab~-_" * 10),
    ("cloudfront-policy", '{"CloudFront-Policy": "' + "eyJTdGF0ZW1lbnQiOlt7IlJlc29" * 2 + '"}'),
    ("private-key", "-----BEGIN RSA PRIVATE KEY-----"),
]


@pytest.mark.parametrize("secret", [s for _, s in PLANTED], ids=[c for c, _ in PLANTED])
def test_planted_secret_is_caught(secret: str) -> None:
    line = f'{{"msg": "oops", "detail": "{secret}"}}'
    assert leaks.find([line]), line


def test_ordinary_audit_lines_pass() -> None:
    lines = [
        '{"msg": "allowed", "request_id": "0123456789abcdef0123456789abcdef", '
        '"caller": "profile-service", "key": "profiles/alice/avatar", '
        '"expires_at": "2030-01-01T00:00:00+00:00", "reason": "signed"}',
        '{"msg": "denied", "reason": "unknown_token", "code": "UNAUTHENTICATED"}',
        '{"msg": "serving", "uploader_credentials": "environment (UPLOADERKEYID0001)"}',
        '{"msg": "allowed", "rpc": "CreateViewerCookies", "reason": "signed", '
        '"grant": "https://avatars.example.com/profiles/*", '
        '"expires_at": "2030-01-01T00:00:00+00:00"}',
        '{"msg": "CloudFront key rotated from the key files", "old_key_pair_id": "K2JCJMDEHXQW5F"}',
    ]
    assert leaks.find(lines) == []
