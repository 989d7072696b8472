"""The service's rate limits shared through a real redis-server: one limit across servers.

Servers are the production `AvatarSignerServer` (ServerThread: its own event loop in a
thread) and, once, two `avatar-signer serve` processes; the store is Debian's
redis-server on 127.0.0.1 (the conftest.py fixture), killed, restarted and frozen
(SIGSTOP) to show what each failure mode does. Health never follows the store.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import leaks
import pytest
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.access.shared_rate_limits import KEY_PREFIX
from avatarsigner_server.commands.check.rate_limit_store import store_row
from avatarsigner_server.settings import SettingsError
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from guarded import caller, retry_delay, write_callers
from redis_server import RedisServer
from servers import FAKE_ENV, ServerThread, free_port, settings_from, wait_serving
from test_cloudfront_service import cloudfront_env
from test_metrics import scrape

PROFILE = caller("profile-service", ["CreateUploadUrl", "CreateDownloadUrl"])
FEED = caller("feed-service", ["CreateDownloadUrl", "BatchCreateDownloadUrls"])
VIEWER = caller("web-app", ["CreateViewerCookies", "CreateDownloadUrl"])
NO_REFILL = "0.001"  # tokens per second: nothing comes back within a test, counts are exact


def upload_request(user_id: str) -> Any:
    return pb.CreateUploadUrlRequest(user_id=user_id, content_type="image/png", content_length=9)


def code(call: Any, request: Any, metadata: tuple[tuple[str, str], ...]) -> str:
    try:
        call(request, metadata=metadata, timeout=15)
    except grpc.RpcError as error:
        return str(error.code().name)
    return "OK"


def upload(stub: pb_grpc.AvatarSignerStub, user_id: str = "alice") -> str:
    return code(stub.CreateUploadUrl, upload_request(user_id), PROFILE.metadata())


def download(stub: pb_grpc.AvatarSignerStub, user_id: str = "alice") -> str:
    request = pb.CreateDownloadUrlRequest(user_id=user_id)
    return code(stub.CreateDownloadUrl, request, PROFILE.metadata())


def health(target: str) -> str:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="avatarsigner.v1.AvatarSigner"), timeout=5
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def shared_env(store: RedisServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        **FAKE_ENV,
        "CALLERS_FILE": str(write_callers(tmp_path / "callers.toml", [PROFILE, FEED])),
        "RATE_LIMIT_REDIS_URL": store.url,
        "UPLOADS_PER_USER_PER_SECOND": NO_REFILL,
        "UPLOADS_PER_USER_BURST": "3",
    }
    return env | extra


class Servers:
    """ServerThreads on their own event loops, stopped together."""

    def __init__(self) -> None:
        self.running: list[ServerThread] = []
        self._channels: list[grpc.Channel] = []

    def start(self, env: dict[str, str]) -> tuple[ServerThread, pb_grpc.AvatarSignerStub]:
        server = ServerThread(settings_from(env))
        self.running.append(server)
        channel = server.channel()
        self._channels.append(channel)
        return server, pb_grpc.AvatarSignerStub(channel)

    def stop(self) -> None:
        for channel in self._channels:
            channel.close()
        for server in self.running:
            server.stop()


@pytest.fixture
def servers() -> Iterator[Servers]:
    made = Servers()
    yield made
    made.stop()


# -- one limit across servers ---------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["shared-store", "per-process"])
def test_a_callers_download_limit_counts_urls_across_two_servers(
    redis_server: RedisServer, tmp_path: Path, servers: Servers, shared: bool
) -> None:
    env = shared_env(
        redis_server,
        tmp_path,
        DOWNLOADS_PER_CALLER_PER_SECOND=NO_REFILL,
        DOWNLOADS_PER_CALLER_BURST="10",
    )
    if not shared:
        del env["RATE_LIMIT_REDIS_URL"]
    stubs = [servers.start(env)[1], servers.start(env)[1]]
    batch = pb.BatchCreateDownloadUrlsRequest(user_ids=[f"u{n}" for n in range(4)])
    urls = 0
    for _ in range(4):  # 4 URLs a call, alternating: 32 asked for, 10 admitted if shared
        for stub in stubs:
            if code(stub.BatchCreateDownloadUrls, batch, FEED.metadata()) == "OK":
                urls += 4
    for stub in stubs:  # single URLs take what is left
        while code(stub.CreateDownloadUrl, pb.CreateDownloadUrlRequest(user_id="u"),
                   FEED.metadata()) == "OK":  # fmt: skip
            urls += 1
    assert urls == (10 if shared else 20)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-store", "per-process"])
def test_viewer_cookies_take_from_the_callers_download_limit_across_two_servers(
    redis_server: RedisServer, tmp_path: Path, servers: Servers, shared: bool
) -> None:
    env = cloudfront_env(tmp_path, ec.generate_private_key(ec.SECP256R1())) | shared_env(
        redis_server,
        tmp_path,
        CALLERS_FILE=str(write_callers(tmp_path / "viewer-callers.toml", [VIEWER])),
        DOWNLOADS_PER_CALLER_PER_SECOND=NO_REFILL,
        DOWNLOADS_PER_CALLER_BURST="4",
    )
    if not shared:
        del env["RATE_LIMIT_REDIS_URL"]
    stubs = [servers.start(env)[1], servers.start(env)[1]]
    cookies = pb.CreateViewerCookiesRequest()
    # 2 grants on the first server, 1 on the second: one bucket of 4 if shared, else two.
    granted = [code(stubs[n % 2].CreateViewerCookies, cookies, VIEWER.metadata())
               for n in range(3)]  # fmt: skip
    assert granted == ["OK"] * 3
    urls = 0
    for stub in stubs:  # download URLs take what the grants left, from the same bucket
        while code(stub.CreateDownloadUrl, pb.CreateDownloadUrlRequest(user_id="u"),
                   VIEWER.metadata()) == "OK":  # fmt: skip
            urls += 1
    assert urls == (1 if shared else 5)
    with pytest.raises(grpc.RpcError) as caught:
        stubs[1].CreateViewerCookies(cookies, metadata=VIEWER.metadata(), timeout=15)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == (
        "rate limit: caller web-app asked for too many download URLs and viewer cookies; "
        "retry later"
    )
    assert retry_delay(caught.value) > 0
    key = f"{KEY_PREFIX}download_per_caller:web-app"
    assert bool(redis_server.client().exists(key)) is shared


@pytest.mark.slow
def test_two_server_processes_admit_exactly_n_uploads_for_a_user(
    redis_server_with_password: RedisServer, tmp_path: Path
) -> None:
    store = redis_server_with_password
    assert store.password is not None
    password_file = tmp_path / "redis-password"
    password_file.write_text(store.password + "\n")
    env = shared_env(
        store,
        tmp_path,
        RATE_LIMIT_REDIS_URL=f"redis://127.0.0.1:{store.port}/0",  # no password in the URL
        RATE_LIMIT_REDIS_PASSWORD_FILE=str(password_file),
        RATE_LIMIT_REDIS_FAILURE="closed",  # a store we cannot reach would show as UNAVAILABLE
        UPLOADS_PER_USER_BURST="4",
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_", "RATE_"))}
    processes, targets = [], []
    for _ in range(2):
        port = free_port()
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve"],
                env=clean | env | {"GRPC_PORT": str(port), "METRICS_PORT": "0"},
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        targets.append(f"127.0.0.1:{port}")
    try:
        for target in targets:
            wait_serving(target, time.monotonic() + 30)
        channels = [grpc.insecure_channel(target) for target in targets]
        stubs = [pb_grpc.AvatarSignerStub(channel) for channel in channels]
        codes = [upload(stubs[n % 2]) for n in range(10)]  # alternating between the two
        for channel in channels:
            channel.close()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        stderr = [process.communicate(timeout=30)[1] for process in processes]
    assert codes.count("OK") == 4, codes
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}
    assert [process.returncode for process in processes] == [0, 0]
    serving = [json.loads(line) for text in stderr for line in text.splitlines()
               if '"msg": "serving"' in line]  # fmt: skip
    assert [line["rate_limits"] for line in serving] == [
        f"shared: redis://127.0.0.1:{store.port}/0 (failure closed)"
    ] * 2
    assert leaks.find(line for text in stderr for line in text.splitlines()) == []


# -- the store down, then back --------------------------------------------------------------


def test_open_mode_limits_per_process_while_the_store_is_down_then_shares_again(
    redis_server: RedisServer, tmp_path: Path, servers: Servers
) -> None:
    server, stub = servers.start(shared_env(redis_server, tmp_path))
    assert [upload(stub) for _ in range(2)] == ["OK", "OK"]  # 1 of alice's 3 left in the store
    redis_server.stop()
    # The per-process bucket (full) decides: 3 more, then the limit holds.
    assert [upload(stub) for _ in range(4)] == ["OK", "OK", "OK", "RESOURCE_EXHAUSTED"]
    assert download(stub) == "OK"  # no download limit: the store is never asked
    assert health(server.target) == "SERVING"
    down = scrape(server.server.metrics_port)
    assert down[("avatarsigner_rate_limit_store_reachable", ())] == 0
    unreachable = {labels: value for (name, labels), value in down.items()
                   if name == "avatarsigner_rate_limit_store_unreachable_total"}  # fmt: skip
    # Each upload checks two limits (caller, user): the first check found the store gone,
    # the other 7 did not ask it again within retry_after (1 s).
    assert unreachable == {(("reason", "connection"),): 1, (("reason", "skipped"),): 7}

    redis_server.start_again()  # empty, as after a crash
    time.sleep(1.1)  # the store is asked again retry_after after the failure
    assert [upload(stub, "bob") for _ in range(4)] == ["OK", "OK", "OK", "RESOURCE_EXHAUSTED"]
    assert redis_server.client().exists(f"{KEY_PREFIX}upload_per_user:bob")
    assert scrape(server.server.metrics_port)[("avatarsigner_rate_limit_store_reachable", ())] == 1
    assert health(server.target) == "SERVING"


def test_closed_mode_answers_unavailable_while_the_store_is_down_then_recovers(
    redis_server: RedisServer,
    tmp_path: Path,
    servers: Servers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="avatarsigner")
    env = shared_env(redis_server, tmp_path, RATE_LIMIT_REDIS_FAILURE="closed")
    server, stub = servers.start(env)
    assert upload(stub) == "OK"
    redis_server.stop()
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateUploadUrl(upload_request("alice"), metadata=PROFILE.metadata(), timeout=15)
    error = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "rate limits cannot be checked right now; retry later"
    assert 0 < retry_delay(error) <= 1.0  # when the store will be asked again
    assert upload(stub) == "UNAVAILABLE"  # waiting out retry_after: not even asked
    assert download(stub) == "OK"  # a call no limit covers never needs the store
    assert health(server.target) == "SERVING"
    audit = [r for r in caplog.records if r.name == "avatarsigner.audit"]
    denied = [r for r in audit if getattr(r, "decision", "") == "denied"]
    assert [(r.code, r.reason, r.caller) for r in denied] == [
        ("UNAVAILABLE", "rate_limit_store_unavailable", "profile-service")
    ] * 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    denials = scrape(server.server.metrics_port)
    assert denials[
        (
            "avatarsigner_denials_total",
            (("method", "CreateUploadUrl"), ("reason", "rate_limit_store_unavailable")),
        )
    ] == 2

    redis_server.start_again()
    time.sleep(1.1)
    assert upload(stub) == "OK"  # the crash emptied the store: alice's bucket is full again
    assert any("answers again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("failure", ["open", "closed"])
def test_a_frozen_store_holds_only_its_own_call_never_the_event_loop(
    redis_server: RedisServer, tmp_path: Path, servers: Servers, failure: str
) -> None:
    # A long timeout, so that "the other calls finished first" is an order, not a race.
    env = shared_env(
        redis_server,
        tmp_path,
        RATE_LIMIT_REDIS_FAILURE=failure,
        RATE_LIMIT_REDIS_TIMEOUT_SECONDS="1.5",
    )
    server, stub = servers.start(env)
    assert upload(stub) == "OK"  # a pooled connection to the store
    redis_server.pause()  # connections stay open; nothing is answered
    try:
        finished: list[str] = []
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(lambda: (upload(stub), finished.append("upload"))[0])
            time.sleep(0.2)  # the upload is now waiting on the store
            others = [download(stub, f"user{n}") for n in range(20)]
            others.append(health(server.target))
            finished.append("others")
            answer = waiting.result(30)
    finally:
        redis_server.resume()
    assert others == ["OK"] * 20 + ["SERVING"]
    assert finished == ["others", "upload"]  # served while the upload waited on the store
    assert answer == ("OK" if failure == "open" else "UNAVAILABLE")
    metrics = scrape(server.server.metrics_port)
    timeouts = ("avatarsigner_rate_limit_store_unreachable_total", (("reason", "timeout"),))
    assert metrics[timeouts] == 1


# -- avatar-signer check --------------------------------------------------------------------


def test_check_shows_the_store_version_and_address_never_the_password(
    redis_server_with_password: RedisServer,
) -> None:
    store = redis_server_with_password
    assert store.password is not None
    row = store_row(settings_from(RATE_LIMIT_REDIS_URL=store.url))
    assert row is not None and row.outcome == "PASS", row
    assert row.detail.startswith(("redis ", "valkey "))
    assert f"at redis://127.0.0.1:{store.port}/0, failure mode open" in row.detail
    wrong = store.url.replace(store.password, "not-the-password-" + store.password[:4])
    refused = store_row(settings_from(RATE_LIMIT_REDIS_URL=wrong))
    assert refused is not None and refused.outcome == "FAIL"
    assert "check the password" in refused.detail
    store.stop()
    down = store_row(settings_from(RATE_LIMIT_REDIS_URL=store.url))
    assert down is not None and down.outcome == "FAIL"
    assert "(connection: ConnectionError)" in down.detail
    for detail in (row.detail, refused.detail, down.detail):
        assert store.password not in detail and "not-the-password" not in detail


def test_check_has_no_store_row_without_a_store() -> None:
    assert store_row(settings_from()) is None


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "variable", "problem"),
    [
        ({"RATE_LIMIT_REDIS_URL": "http://:pw-3f9a1c@cache:6379"}, "RATE_LIMIT_REDIS_URL",
         "must be a redis:// or rediss:// URL"),
        ({"RATE_LIMIT_REDIS_URL": "redis://:pw-3f9a1c@cache:6379/0?timeout=9"},
         "RATE_LIMIT_REDIS_URL", "must not have a query"),
        ({"RATE_LIMIT_REDIS_URL": "redis://cache", "RATE_LIMIT_REDIS_FAILURE": "half"},
         "RATE_LIMIT_REDIS_FAILURE", "must be one of open, closed"),
        ({"RATE_LIMIT_REDIS_URL": "redis://cache", "RATE_LIMIT_REDIS_TIMEOUT_SECONDS": "60"},
         "RATE_LIMIT_REDIS_TIMEOUT_SECONDS", "must be between"),
        ({"RATE_LIMIT_REDIS_URL": "redis://cache", "RATE_LIMIT_REDIS_CA_FILE": "CA"},
         "RATE_LIMIT_REDIS_CA_FILE", "needs a rediss://"),
        ({"RATE_LIMIT_REDIS_URL": "redis://:pw-3f9a1c@cache",
          "RATE_LIMIT_REDIS_PASSWORD_FILE": "PASSWORD"},
         "RATE_LIMIT_REDIS_PASSWORD_FILE", "has a password too"),
        ({"RATE_LIMIT_REDIS_URL": "redis://cache", "RATE_LIMIT_REDIS_PASSWORD_FILE": "EMPTY"},
         "RATE_LIMIT_REDIS_PASSWORD_FILE", "must hold one password"),
        ({"RATE_LIMIT_REDIS_FAILURE": "closed"}, "RATE_LIMIT_REDIS_FAILURE",
         "RATE_LIMIT_REDIS_URL is not"),
    ],
    ids=["scheme", "query", "failure", "timeout", "ca-without-tls", "two-passwords",
         "empty-password-file", "no-url"],
)  # fmt: skip
def test_store_settings_fail_in_one_line_naming_the_variable(
    tmp_path: Path, env: dict[str, str], variable: str, problem: str
) -> None:
    files = {"CA": "ca.pem", "PASSWORD": "password", "EMPTY": "empty"}
    for name, value in list(env.items()):
        if value in files:
            path = tmp_path / files[value]
            path.write_text("" if value == "EMPTY" else "pw-3f9a1c\n")
            env[name] = str(path)
    with pytest.raises(SettingsError) as caught:
        settings_from(**env)
    assert caught.value.name == variable
    assert problem in str(caught.value)
    assert "pw-3f9a1c" not in str(caught.value) and "\n" not in str(caught.value)


def test_store_settings_defaults_and_address_without_password() -> None:
    assert settings_from().rate_limit_store is None  # per process, exactly as before
    store = settings_from(RATE_LIMIT_REDIS_URL="rediss://:pw-3f9a1c@valkey.cache:6380/2")
    settings = store.rate_limit_store
    assert settings is not None
    assert (settings.failure, settings.timeout_seconds) == ("open", 0.25)
    assert str(settings.address) == "rediss://valkey.cache:6380/2"
    assert "pw-3f9a1c" not in repr(store)
