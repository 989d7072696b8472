"""Metadata that decides who is calling, for whom or which request may be sent once: a
second value is refused, never resolved by "the last one wins" (real server)."""

from __future__ import annotations

from collections.abc import Iterator

import jwt
import pytest
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from guarded import caller, code_of, new_token, write_callers
from servers import ServerThread, settings_from

PROFILE = caller("profile-service", ["CreateUploadUrl", "CreateDownloadUrl"])
FEED = caller("feed-service", ["CreateDownloadUrl", "BatchCreateDownloadUrls"])
SECRET = "an-hs256-secret-of-more-than-32-bytes!!"


def _end_user_token(sub: str) -> str:
    claims = {"sub": sub, "iss": "https://id.example/", "aud": "avatar-signer", "exp": 4102444800}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.AvatarSignerStub]:
    callers_file = write_callers(tmp_path_factory.mktemp("c") / "callers.toml", [PROFILE, FEED])
    running = ServerThread(
        settings_from(
            CALLERS_FILE=str(callers_file),
            END_USER_JWT_SECRET=SECRET,
            END_USER_JWT_ISSUER="https://id.example/",
            END_USER_JWT_AUDIENCE="avatar-signer",
        )
    )
    try:
        with running.channel() as channel:
            yield pb_grpc.AvatarSignerStub(channel)
    finally:
        running.stop()


def _bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


def test_one_of_each_is_accepted(stub: pb_grpc.AvatarSignerStub) -> None:
    metadata = (*PROFILE.metadata(), ("x-end-user-token", _end_user_token("alice")))
    assert code_of(stub, "CreateUploadUrl", (*metadata, ("x-request-id", "r-1"))) == "OK"


ALICE = ("x-end-user-token", _end_user_token("alice"))


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((_bearer(new_token()), *PROFILE.metadata(), ALICE), id="bad-token-then-good"),
        pytest.param((*FEED.metadata(), *PROFILE.metadata(), ALICE), id="two-callers-tokens"),
        pytest.param((*PROFILE.metadata(), *PROFILE.metadata(), ALICE), id="same-token-twice"),
        pytest.param(
            (
                *PROFILE.metadata(),
                ("x-end-user-token", _end_user_token("bob")),
                ("x-end-user-token", _end_user_token("alice")),
            ),
            id="two-end-users",
        ),
        pytest.param(
            (
                *PROFILE.metadata(),
                ("x-end-user-token", _end_user_token("alice")),
                ("x-request-id", "r-1"),
                ("x-request-id", "r-2"),
            ),
            id="two-request-ids",
        ),
    ],
)
def test_repeated_metadata_is_refused(
    stub: pb_grpc.AvatarSignerStub, metadata: tuple[tuple[str, str], ...]
) -> None:
    assert code_of(stub, "CreateUploadUrl", metadata) == "UNAUTHENTICATED"
