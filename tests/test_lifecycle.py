"""Graceful shutdown: NOT_SERVING, new calls refused, in-flight calls finish, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import FAKE_ENV, ServerThread, free_port, settings_from, wait_serving


class SlowDownloads(grpc.aio.ServerInterceptor):
    """Holds CreateDownloadUrl calls for `delay` seconds, and says when one has started."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started = threading.Event()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if not details.method.endswith("/CreateDownloadUrl"):
            return handler
        inner = handler.unary_unary

        async def slow(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.started.set()
            await asyncio.sleep(self.delay)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            slow,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def test_in_flight_call_finishes_while_new_calls_are_refused() -> None:
    slow = SlowDownloads(delay=1.5)
    server = ServerThread(settings_from(FAKE_ENV), interceptors=[slow])
    channel = server.channel()
    stub = pb_grpc.AvatarSignerStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    in_flight = stub.CreateDownloadUrl.future(
        pb.CreateDownloadUrlRequest(user_id="alice"), timeout=10
    )
    assert slow.started.wait(5)

    done = server.shutdown_async(grace=10)
    time.sleep(0.3)
    # Health says NOT_SERVING (or the server is already refusing) during the drain.
    try:
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    # A new call on a fresh connection is refused.
    with grpc.insecure_channel(server.target) as fresh:
        try:
            pb_grpc.AvatarSignerStub(fresh).CreateUploadUrl(
                pb.CreateUploadUrlRequest(
                    user_id="bob", content_type="image/png", content_length=1
                ),
                timeout=2,
            )
            raise AssertionError("a new call was accepted during shutdown")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE

    response = in_flight.result(timeout=10)
    assert response.key == "profiles/alice/avatar"
    done.result(timeout=15)
    channel.close()
    server.stop()


@pytest.mark.slow
def test_sigterm_exits_0_and_logs_the_drain() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in FAKE_ENV}
    env |= FAKE_ENV | {"GRPC_PORT": str(port), "SHUTDOWN_GRACE_SECONDS": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", time.monotonic() + 20)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert elapsed < 3 + 2  # idle server: exits well within the grace
    assert '"msg": "shutting down"' in stderr and '"msg": "stopped"' in stderr
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_port_in_use_is_one_line_naming_grpc_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in FAKE_ENV}
        env |= FAKE_ENV | {"GRPC_PORT": str(port)}
        result = subprocess.run(
            [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert "GRPC_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_health_port_serves_only_health_in_plaintext_and_follows_the_drain() -> None:
    slow = SlowDownloads(delay=1.5)
    server = ServerThread(settings_from(FAKE_ENV, HEALTH_PORT="0"), interceptors=[slow])
    probe_target = f"127.0.0.1:{server.server.health_port}"
    assert server.server.health_port not in (0, server.port)
    with grpc.insecure_channel(probe_target) as probe, server.channel() as channel:
        health = health_pb2_grpc.HealthStub(probe)
        for service in ("", "avatarsigner.v1.AvatarSigner"):
            request = health_pb2.HealthCheckRequest(service=service)
            assert health.Check(request, timeout=2).status == health_pb2.HealthCheckResponse.SERVING
        # Nothing but health there: the signer is not reachable around TLS or the callers file.
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.AvatarSignerStub(probe).CreateDownloadUrl(
                pb.CreateDownloadUrlRequest(user_id="alice"), timeout=2
            )
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED

        in_flight = pb_grpc.AvatarSignerStub(channel).CreateDownloadUrl.future(
            pb.CreateDownloadUrlRequest(user_id="alice"), timeout=10
        )
        assert slow.started.wait(5)
        done = server.shutdown_async(grace=10)
        time.sleep(0.3)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING  # during the drain
        assert in_flight.result(timeout=10).key == "profiles/alice/avatar"
        done.result(timeout=15)
    server.stop()


def test_a_clients_health_watch_does_not_hold_the_shutdown_for_the_whole_grace() -> None:
    """A client that checks health itself keeps a Watch stream open, which never ends by
    itself: once no call is in a handler the server stops, the Watch having seen
    NOT_SERVING, rather than waiting out SHUTDOWN_GRACE_SECONDS for it."""
    server = ServerThread(settings_from(FAKE_ENV))
    seen: list[object] = []
    with server.channel() as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())

        def follow() -> None:
            try:
                seen.extend(reply.status for reply in watch)
            except grpc.RpcError as error:
                seen.append(error.code())

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        done = server.shutdown_async(grace=60)
        done.result(timeout=20)  # well before the grace: nothing was in a handler
        follower.join(10)
    server.stop()
    assert seen[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in seen
