"""The Python client and its CLI against the real server and the real S3."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
import run as make_run
from avatarsigner import (
    AsyncAvatarSignerClient,
    AvatarSignerClient,
    AvatarSignerError,
    UploadError,
    sha256_base64,
    upload_bytes,
)
from s3http import request
from s3http import request as http_request
from servers import ServerThread

CLI = [sys.executable, "-m", "avatarsigner.cli"]


def _cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--target", target, *args], capture_output=True, text=True, timeout=60
    )


def _user() -> str:
    return "cli-" + uuid.uuid4().hex[:10]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["direct", "verified"])
def test_cli_upload_end_to_end(mode: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    server: ServerThread = request.getfixturevalue(
        "s3_server" if mode == "direct" else "verified_server"
    )
    image = tmp_path / "me.png"
    data = make_run.sample_png(32, 32)
    image.write_bytes(data)
    user = _user()

    result = _cli(server.target, "upload", str(image), "--user", user)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["key"] == f"profiles/{user}/avatar"
    if mode == "verified":  # the CLI confirmed the upload and prints what was verified
        assert (printed["width"], printed["height"], printed["content_type"]) == (
            32,
            32,
            "image/png",
        )
        assert printed["checksum_sha256"] == sha256_base64(data)  # no metadata to remove

    shown = _cli(server.target, "download-url", "--user", user)
    assert shown.returncode == 0, shown.stderr
    fetched = http_request("GET", json.loads(shown.stdout)["url"])
    assert fetched.status == 200
    assert fetched.body == data
    assert fetched.headers["content-type"] == "image/png"


@pytest.mark.slow
def test_cli_upload_refuses_a_file_that_is_not_an_image(
    s3_server: ServerThread, tmp_path: Path
) -> None:
    page = tmp_path / "avatar.png"
    page.write_text("<html><script>alert(1)</script></html>")
    result = _cli(s3_server.target, "upload", str(page), "--user", _user())
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_reports_invalid_argument_in_one_line(s3_server: ServerThread) -> None:
    result = _cli(s3_server.target, "download-url", "--user", "../../etc/passwd")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "INVALID_ARGUMENT" in result.stderr and "user_id" in result.stderr


@pytest.mark.slow
def test_cli_health(s3_server: ServerThread) -> None:
    result = _cli(s3_server.target, "health")
    assert result.returncode == 0 and "SERVING" in result.stdout


def test_client_upload_with_checksum_round_trip(s3_server: ServerThread) -> None:
    data = make_run.sample_png(8, 8)
    user = _user()
    with AvatarSignerClient(s3_server.target) as client:
        upload = client.create_upload_url(
            user, "image/png", len(data), checksum_sha256=sha256_base64(data), ttl=60
        )
        assert upload.url not in repr(upload)
        with pytest.raises(UploadError):
            upload_bytes(upload, bytes([data[0] ^ 1]) + data[1:])  # other bytes: refused
        upload_bytes(upload, data)
        (url,) = client.batch_create_download_urls([user])
    assert request("GET", url.url).body == data


def test_client_raises_with_field_violations(s3_server: ServerThread) -> None:
    with AvatarSignerClient(s3_server.target) as client, pytest.raises(AvatarSignerError) as caught:
        client.batch_create_download_urls(["ok", "a/b", "fine", ""])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == ["user_ids[1]", "user_ids[3]"]


def test_async_client(s3_server: ServerThread) -> None:
    async def main() -> tuple[str, str]:
        async with AsyncAvatarSignerClient(s3_server.target) as client:
            download = await client.create_download_url("alice")
            health = await client.health()
        return download.key, health

    assert asyncio.run(main()) == ("profiles/alice/avatar", "SERVING")


def test_client_upload_confirms_and_surfaces_the_refusal_reason(
    verified_server: ServerThread,
) -> None:
    user = _user()
    with AvatarSignerClient(verified_server.target, timeout=30) as client:
        result = client.upload(user, make_run.sample_png(20, 10))
    assert result.confirmation is not None
    assert result.key == result.confirmation.key == f"profiles/{user}/avatar"
    assert (result.confirmation.width, result.confirmation.height) == (20, 10)

    async def upload_async() -> None:
        async with AsyncAvatarSignerClient(verified_server.target, timeout=30) as client:
            done = await client.upload(user, make_run.sample_png(8, 8))
            assert done.confirmation is not None and done.confirmation.width == 8
            assert done.confirmation.version != result.confirmation.version  # type: ignore[union-attr]

    asyncio.run(upload_async())


def test_client_sees_not_an_image_as_a_reason(verified_server: ServerThread) -> None:
    fake = b"<html>" + bytes(40)
    with AvatarSignerClient(verified_server.target, timeout=30) as client:
        upload = client.create_upload_url(_user(), "image/png", len(fake))
        upload_bytes(upload, fake)
        user = upload.key.split("/")[1]
        with pytest.raises(AvatarSignerError) as refused:
            client.confirm_upload(user, upload.upload_id)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == "NOT_AN_IMAGE"
