"""Prometheus metrics on METRICS_PORT: scraped over HTTP from the real server."""

from __future__ import annotations

import asyncio
import math
import socket
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.app.server import AvatarSignerServer, StartupError
from avatarsigner_server.credentials.sources import StaticCredentials
from avatarsigner_server.credentials.watcher import CredentialWatcher, build_watcher
from avatarsigner_server.signing.key_pairs import Credentials as Creds
from guarded import caller, code_of, new_token, write_callers
from prometheus_client.parser import text_string_to_metric_families
from servers import ServerThread, settings_from

PROFILE = caller("profile-service", ["CreateUploadUrl", "CreateDownloadUrl"])
FEED = caller("feed-service", ["CreateDownloadUrl", "BatchCreateDownloadUrls"])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counters_move_with_calls_and_refusals(tmp_path: Path) -> None:
    running = ServerThread(
        settings_from(CALLERS_FILE=str(write_callers(tmp_path / "c.toml", [PROFILE, FEED])))
    )
    try:
        with running.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            assert code_of(stub, "CreateUploadUrl", PROFILE.metadata()) == "OK"
            assert code_of(stub, "BatchCreateDownloadUrls", FEED.metadata()) == "OK"  # 2 URLs
            assert code_of(stub, "CreateUploadUrl", FEED.metadata()) == "PERMISSION_DENIED"
            unknown = (("authorization", f"Bearer {new_token()}"),)
            assert code_of(stub, "CreateDownloadUrl", unknown) == "UNAUTHENTICATED"
        metrics = scrape(running.server.metrics_port)
    finally:
        running.stop()

    def value(name: str, **labels: str) -> float:
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("avatarsigner_rpcs_total", method="CreateUploadUrl", code="OK") == 1
    assert value("avatarsigner_rpcs_total", method="CreateUploadUrl", code="PERMISSION_DENIED") == 1
    assert value("avatarsigner_rpcs_total", method="BatchCreateDownloadUrls", code="OK") == 1
    assert value("avatarsigner_rpcs_total", method="CreateDownloadUrl", code="UNAUTHENTICATED") == 1
    assert value("avatarsigner_urls_signed_total", kind="upload", caller="profile-service") == 1
    assert value("avatarsigner_urls_signed_total", kind="download", caller="feed-service") == 2
    assert (
        value("avatarsigner_denials_total", method="CreateUploadUrl", reason="rpc_not_allowed") == 1
    )
    assert (
        value("avatarsigner_denials_total", method="CreateDownloadUrl", reason="unknown_token") == 1
    )
    assert value("avatarsigner_rpc_duration_seconds_count", method="CreateUploadUrl") == 2
    assert (
        value("avatarsigner_rpc_duration_seconds_bucket", method="CreateUploadUrl", le="+Inf") == 2
    )
    # Static keys never expire: +Inf, so an alert on "< 600" never fires for them.
    assert value("avatarsigner_credentials_expiry_seconds", identity="uploader") == math.inf
    assert value("avatarsigner_credentials_expiry_seconds", identity="reader") == math.inf
    assert value("process_resident_memory_bytes") > 0


def test_expiry_gauge_counts_down_for_temporary_credentials() -> None:
    settings = settings_from()
    soon = datetime.now(UTC) + timedelta(minutes=30)
    watcher = build_watcher(settings)
    temporary = CredentialWatcher(
        {
            "uploader": StaticCredentials(Creds("ASIATEMPUPLOADER", "x" * 40, "t" * 20, soon)),
            "reader": watcher["reader"],
            "verifier": watcher["verifier"],
        },
        needed={"uploader": timedelta(0), "reader": timedelta(0), "verifier": timedelta(0)},
    )
    running = ServerThread(settings, credentials=temporary)
    try:
        metrics = scrape(running.server.metrics_port)
    finally:
        running.stop()
    left = metrics[("avatarsigner_credentials_expiry_seconds", (("identity", "uploader"),))]
    assert 1790 <= left <= 1800
    assert metrics[("avatarsigner_credentials_expiry_seconds", (("identity", "reader"),))] == (
        math.inf
    )


def test_metrics_port_in_use_is_a_startup_error_naming_it() -> None:
    async def start(port: int) -> None:
        server = AvatarSignerServer(settings_from(METRICS_PORT=str(port)))
        try:
            await server.start()
        finally:
            await server.shutdown(0)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(StartupError, match=r"^METRICS_PORT: cannot listen"):
            asyncio.run(start(busy.getsockname()[1]))
