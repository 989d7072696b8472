"""Deploys and overload: the drain at SIGTERM, refusals clients retry, connection age, and
calls whose callers gave up shed before any work.

The process tests start the real `avatar-signer serve` (1 or 2 workers) and put bounded
load on it from this process (tests/load.py); every call's outcome is kept with the moment
it was sent, so "sent before SIGTERM" is exact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from avatarsigner import AsyncAvatarSignerClient, AvatarSignerClient, AvatarSignerError
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.app.server import server_options
from avatarsigner_server.settings import SettingsError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from load import Load
from servers import FAKE_ENV, ServerThread, free_port, settings_from, wait_serving
from test_metrics import scrape

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BATCH = [f"user{i}" for i in range(100)]


async def _single(client: AsyncAvatarSignerClient, index: int) -> Any:
    return await client.create_download_url(f"user{index}")


async def _batch(client: AsyncAvatarSignerClient, index: int) -> Any:
    return await client.batch_create_download_urls(BATCH)


CALLS: dict[str, Callable[[AsyncAvatarSignerClient, int], Awaitable[Any]]] = {
    "single": _single,
    "batch": _batch,
}


def _serve(port: int, log: Path, **settings: str) -> subprocess.Popen[bytes]:
    """The server in a process; its log (thousands of audit lines) goes to the file `log`."""
    env = {k: v for k, v in os.environ.items() if k not in FAKE_ENV}
    env |= FAKE_ENV | {"GRPC_PORT": str(port)} | settings
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=stderr,
        )


def _health(target: str) -> int | str:
    """The "" health status over a fresh connection, or the error code's name."""
    with grpc.insecure_channel(target) as channel:
        try:
            return int(
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(), timeout=2)
                .status
            )
        except grpc.RpcError as error:
            return str(error.code().name)


# -- SIGTERM with calls in flight --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("rpc", ["single", "batch"])
def test_sigterm_with_calls_in_flight_cancels_none(workers: int, rpc: str, tmp_path: Path) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    process = _serve(
        port,
        tmp_path / "server.log",
        WORKERS=str(workers),
        SHUTDOWN_DRAIN_SECONDS="1.5",
        SHUTDOWN_GRACE_SECONDS="5",
    )
    try:
        wait_serving(target, time.monotonic() + 30)
        with Load(target, CALLS[rpc], callers=48, channels=8, limit_seconds=40) as load:
            time.sleep(1.0)  # calls flowing on every connection
            sigterm_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            # The drain: health already NOT_SERVING, while the port still serves calls.
            assert _health(target) == NOT_SERVING
            with AvatarSignerClient(target) as fresh:
                assert fresh.create_download_url("during-drain").url
            process.wait(timeout=40)
            exited_at = time.monotonic()
            time.sleep(0.3)
    finally:
        process.kill()
    stderr = (tmp_path / "server.log").read_text()
    assert process.returncode == 0, stderr[-2000:]
    before = load.codes(until=sigterm_at)
    after = load.codes(since=sigterm_at)
    assert sum(before.values()) >= 48, before
    assert before == {"OK": before.get("OK", 0)}, f"sent before SIGTERM: {before}"
    assert set(after) <= {"OK", "UNAVAILABLE"}, f"sent after SIGTERM: {after}"
    assert after.get("OK", 0) > 0  # new calls were served during the drain
    assert "CANCELLED" not in load.codes()
    assert load.codes(until=exited_at).get("OK")
    assert "Traceback" not in stderr


# -- the refusing phase, in process ------------------------------------------------------


def test_a_refused_call_is_unavailable_with_a_pushback_and_counted() -> None:
    running = ServerThread(settings_from())
    try:
        running.server.gate.refuse(1.0)
        with running.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice"), timeout=5)
            # Health is not gated: it keeps answering through the drain.
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        error = refused.value
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        trailers = dict(error.trailing_metadata() or ())
        assert trailers.get("grpc-retry-pushback-ms") == "1000"
        client_view = AvatarSignerError.from_rpc_error(error)
        assert client_view.reason == "SHUTTING_DOWN"
        metrics = scrape(running.server.metrics_port)
        shed = (("method", "CreateDownloadUrl"), ("reason", "draining"))
        assert metrics[("avatarsigner_calls_shed_total", shed)] == 1
    finally:
        running.stop()


def test_the_shipped_retry_policy_retries_a_refusal_on_another_server() -> None:
    """A client using the default service config, refused by a draining server, gets its
    answer from the retry (here the same server, ready again after the pushback)."""
    running = ServerThread(settings_from())
    try:
        running.server.gate.refuse(0.2)
        reopen = threading.Timer(0.1, lambda: setattr(running.server.gate, "_refusal", None))
        reopen.start()
        with AvatarSignerClient(running.target) as client:
            assert client.create_download_url("alice").url
        metrics = scrape(running.server.metrics_port)
        shed = (("method", "CreateDownloadUrl"), ("reason", "draining"))
        assert metrics[("avatarsigner_calls_shed_total", shed)] == 1
        with AvatarSignerClient(running.target, service_config=None) as plain:
            running.server.gate.refuse(0.2)
            with pytest.raises(AvatarSignerError) as refused:
                plain.create_download_url("alice")
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()


@pytest.mark.slow  # the slow call must outlast a client's retries: 8 s
def test_a_slow_call_in_flight_does_not_send_retries_back_to_the_draining_server() -> None:
    """Replica A drains while one of its calls is still in a handler. A client on a
    connection to A (kube-proxy, pick_first) is refused once; its retry, after the pushback,
    must reach replica B: A closes its port and connections after the refusing phase instead
    of keeping them open, refusing every retry, until its slow call is done."""
    from test_lifecycle import SlowDownloads

    slow = SlowDownloads(delay=8.0)
    first = ServerThread(settings_from(), interceptors=[slow])
    second = ServerThread(settings_from())
    try:
        with first.channel() as channel:
            in_flight = pb_grpc.AvatarSignerStub(channel).CreateDownloadUrl.future(
                pb.CreateDownloadUrlRequest(user_id="alice"), timeout=30
            )
            assert slow.started.wait(5)
            target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
            with AvatarSignerClient(target, timeout=20) as client:
                assert client.health() == "SERVING"  # connected, to the first address
                done = first.shutdown_async(grace=30, drain=0.1)
                time.sleep(0.3)  # refusing now
                assert client.create_download_url("bob").url  # retried, answered by B
            metrics = scrape(first.server.metrics_port)  # while A waits for its slow call
            assert in_flight.result(timeout=20).key == "profiles/alice/avatar"
            done.result(timeout=30)
        shed = (("method", "CreateDownloadUrl"), ("reason", "draining"))
        assert metrics[("avatarsigner_calls_shed_total", shed)] == 1  # the retry went to B
    finally:
        second.stop()
        first.stop()


# -- shedding calls whose callers gave up -----------------------------------------------


def test_a_call_with_too_little_time_left_is_shed_before_any_work() -> None:
    running = ServerThread(settings_from(CALL_MIN_TIME_LEFT_MS="2000"))
    try:
        with running.channel() as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            with pytest.raises(grpc.RpcError) as shed:
                stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice"), timeout=1)
            assert shed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # Plenty of time left, or no deadline at all: worked on.
            stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice"), timeout=10)
            stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice"))
        metrics = scrape(running.server.metrics_port)
        method = (("method", "CreateDownloadUrl"),)
        assert metrics[("avatarsigner_calls_shed_total", (*method, ("reason", "expired")))] == 1
        signed = (("caller", "anonymous"), ("kind", "download"))
        assert metrics[("avatarsigner_urls_signed_total", signed)] == 2  # not the shed one
        # Two calls had a deadline when their handler would start: both observed.
        assert metrics[("avatarsigner_call_time_left_seconds_count", method)] == 2
        assert metrics[("avatarsigner_calls_in_flight", ())] == 0
    finally:
        running.stop()


@pytest.mark.slow
def test_overload_is_shed_fast_and_counted_by_the_server(tmp_path: Path) -> None:
    """Far more callers than one process can serve within their deadline: calls wait in
    gRPC's queue, arrive at the handler with little time left and are shed; the server's
    own metrics show what the clients feel, and gRPC itself cancels nothing."""
    port, metrics_port = free_port(), free_port()
    process = _serve(port, tmp_path / "server.log", METRICS_PORT=str(metrics_port))
    try:
        wait_serving(f"127.0.0.1:{port}", time.monotonic() + 30)
        with Load(
            f"127.0.0.1:{port}",
            _single,
            callers=800,
            channels=8,
            timeout=0.25,
            limit_seconds=4,
            max_calls=60_000,
            client_options={"service_config": None},
        ) as load:
            time.sleep(4)
        metrics = scrape(metrics_port)
    finally:
        process.kill()
        process.wait(timeout=10)
    clients = load.codes()
    assert clients.get("DEADLINE_EXCEEDED", 0) > 0, clients  # the overload is real
    assert "CANCELLED" not in clients, clients  # no random rejections by gRPC core
    method = (("method", "CreateDownloadUrl"),)
    shed = metrics.get(("avatarsigner_calls_shed_total", (*method, ("reason", "expired"))), 0)
    assert shed > 0
    # The time left at the handler shows the wait: calls arrived with under 0.1 s of 0.25 s.
    low = metrics[("avatarsigner_call_time_left_seconds_bucket", (("le", "0.1"), *method))]
    assert low > 0


# -- connections age, so clients rebalance ----------------------------------------------


class Peers(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Remembers the client address of every AvatarSigner call."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        inner = handler.unary_unary

        async def remember(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.seen.add(context.peer())
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            remember,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@pytest.mark.slow
def test_an_aged_connection_is_replaced_without_failing_a_call() -> None:
    peers = Peers()
    running = ServerThread(
        settings_from(
            GRPC_MAX_CONNECTION_AGE_SECONDS="1", GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS="10"
        ),
        interceptors=[peers],
    )
    try:
        with AvatarSignerClient(running.target) as client:  # one channel throughout
            end = time.monotonic() + 3.5
            calls = 0
            while time.monotonic() < end:
                assert client.create_download_url(f"user{calls}").url
                calls += 1
                time.sleep(0.01)
        assert len(peers.seen) >= 2, peers.seen  # the client reconnected after a GOAWAY
    finally:
        running.stop()


# -- the settings ------------------------------------------------------------------------


def test_server_options_follow_the_settings() -> None:
    options = dict(
        server_options(
            settings_from(
                GRPC_MAX_CONNECTION_AGE_SECONDS="120",
                GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS="15",
                GRPC_KEEPALIVE_SECONDS="30",
                GRPC_KEEPALIVE_TIMEOUT_SECONDS="5",
                GRPC_MAX_PENDING_CALLS="500",
            )
        )
    )
    assert options["grpc.max_connection_age_ms"] == 120_000
    assert options["grpc.max_connection_age_grace_ms"] == 15_000
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.server.max_pending_requests"] == 500
    assert options["grpc.server.max_pending_requests_hard_limit"] == 1000
    off = dict(
        server_options(
            settings_from(GRPC_MAX_CONNECTION_AGE_SECONDS="0", GRPC_KEEPALIVE_SECONDS="0")
        )
    )
    assert "grpc.max_connection_age_ms" not in off and "grpc.keepalive_time_ms" not in off


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SHUTDOWN_DRAIN_SECONDS", "-1"),
        ("SHUTDOWN_DRAIN_SECONDS", "soon"),
        ("GRPC_MAX_CONNECTION_AGE_SECONDS", "1.5"),
        ("GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", "0"),
        ("GRPC_KEEPALIVE_SECONDS", "-5"),
        ("GRPC_KEEPALIVE_TIMEOUT_SECONDS", "0"),
        ("CALL_MIN_TIME_LEFT_MS", "fast"),
        ("GRPC_MAX_PENDING_CALLS", "0"),
    ],
)
def test_a_bad_value_names_its_setting(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as bad:
        settings_from(**{name: value})
    assert str(bad.value).startswith(name)


def test_the_age_grace_must_outlast_a_confirmation() -> None:
    with pytest.raises(SettingsError) as bad:
        settings_from(CONFIRM_TIMEOUT_SECONDS="20", GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS="10")
    assert str(bad.value).startswith("GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS")
    assert "CONFIRM_TIMEOUT_SECONDS" in str(bad.value)
    # Without an age limit the grace is never used: any value goes.
    settings_from(
        CONFIRM_TIMEOUT_SECONDS="20",
        GRPC_MAX_CONNECTION_AGE_SECONDS="0",
        GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS="10",
    )
