"""The Python client and its CLI never send a bearer token in plaintext to another machine
unless told to (real server on 127.0.0.1 for what is allowed; the refusals happen before
any connection is made)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from avatarsigner import AvatarSignerClient, PlaintextCredentialsError, cli
from avatarsigner.client import AsyncAvatarSignerClient, is_loopback_target
from guarded import caller, server_with_callers
from servers import ServerThread

FEED = caller("feed-service", ["CreateDownloadUrl"])
ELSEWHERE = "10.20.30.40:50051"  # never contacted: the refusal comes first


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.9.9.9:1", True),
        ("localhost:50051", True),
        ("LOCALHOST:50051", True),
        ("[::1]:50051", True),
        ("dns:///localhost:50051", True),
        ("ipv4:127.0.0.1:50051", True),
        ("ipv6:[::1]:50051", True),
        ("unix:/run/avatar-signer.sock", True),
        ("10.20.30.40:50051", False),
        ("avatar-signer:50051", False),
        ("dns:///avatar-signer-headless:50051", False),
        ("localhost.example.com:50051", False),
        ("[2001:db8::1]:50051", False),
    ],
)
def test_loopback_targets(target: str, loopback: bool) -> None:
    assert is_loopback_target(target) is loopback


def test_bearer_token_to_another_machine_in_plaintext_is_refused() -> None:
    bearer = {"authorization": "Bearer not-sent"}
    with pytest.raises(PlaintextCredentialsError, match="plaintext"):
        AvatarSignerClient(ELSEWHERE, metadata=bearer)
    with pytest.raises(PlaintextCredentialsError):
        AsyncAvatarSignerClient(ELSEWHERE, metadata=bearer)
    # Allowed: TLS, or an explicit choice (a trusted or mesh-encrypted network).
    AvatarSignerClient(
        ELSEWHERE, metadata=bearer, channel_credentials=grpc.ssl_channel_credentials()
    ).close()
    AvatarSignerClient(ELSEWHERE, metadata=bearer, allow_plaintext_credentials=True).close()
    # No credential, nothing to protect.
    AvatarSignerClient(ELSEWHERE).close()


def test_end_user_token_to_another_machine_in_plaintext_is_refused() -> None:
    with AvatarSignerClient(ELSEWHERE) as client, pytest.raises(PlaintextCredentialsError):
        client.create_upload_url("alice", "image/png", 10, end_user_token="a.b.c")


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[ServerThread]:
    running = server_with_callers(tmp_path, [FEED])
    yield running
    running.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_bearer_token_over_loopback_plaintext_works(guarded: ServerThread, host: str) -> None:
    target = f"{host}:{guarded.port}"
    with AvatarSignerClient(target, metadata={"authorization": f"Bearer {FEED.token}"}) as client:
        assert client.create_download_url("alice").key == "profiles/alice/avatar"


def test_cli_refuses_a_token_in_plaintext_to_another_machine(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--target", ELSEWHERE, "--token", "not-sent", "download-url", "--user", "alice"]
    assert cli.main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "plaintext" in line and "--insecure" in line and "not-sent" not in line


def test_cli_token_over_loopback_works(
    guarded: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--target", guarded.target, "--token", str(FEED.token), "download-url", "--user", "a"]
    assert cli.main(args) == 0
    assert '"key": "profiles/a/avatar"' in capsys.readouterr().out
