"""Test helpers: run the real grpc.aio server in a background thread of the test process.

The server is the production `AvatarSignerServer` on 127.0.0.1 with an ephemeral port; the
tests talk to it with ordinary gRPC clients, so every call crosses a real HTTP/2 connection.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from avatarsigner_server.access.control import AccessControl
from avatarsigner_server.app.server import AvatarSignerServer
from avatarsigner_server.settings import Settings
from avatarsigner_server.settings import load as load_settings
from avatarsigner_server.telemetry.audit import Audit

FAKE_ENV: dict[str, str] = {
    "S3_UPLOAD_KEY": "UPLOADERKEYID0001",
    "S3_UPLOAD_SECRET": "uploader-secret-0001",
    "S3_READ_KEY": "READERKEYID0000001",
    "S3_READ_SECRET": "reader-secret-00001",
    "S3_VERIFY_KEY": "VERIFIERKEYID00001",
    "S3_VERIFY_SECRET": "verifier-secret-001",
    "AWS_REGION": "eu-west-1",
    "S3_BUCKET": "avatars",
    "GRPC_HOST": "127.0.0.1",
    "GRPC_PORT": "0",
    "METRICS_PORT": "0",  # an ephemeral port: servers in parallel must not collide on 9464
    # Server processes stop at once on SIGTERM; tests of the drain set it themselves.
    "SHUTDOWN_DRAIN_SECONDS": "0",
}


# Direct mode: two identities, upload URLs write the avatar itself, no verifier.
DIRECT_ENV: dict[str, str] = {
    **{name: value for name, value in FAKE_ENV.items() if not name.startswith("S3_VERIFY_")},
    "UPLOAD_MODE": "direct",
}


def settings_from(env: Mapping[str, str] | None = None, **overrides: str) -> Settings:
    merged = dict(FAKE_ENV if env is None else env)
    merged.update(overrides)
    return load_settings(merged)


def access_control(settings: Settings) -> AccessControl:
    """Access control as the server builds it (its files read and checked), on its own."""
    return AccessControl(settings.access, Audit())


class ServerThread:
    """An AvatarSignerServer running on its own event loop in a daemon thread."""

    def __init__(
        self,
        settings: Settings,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        **kwargs: Any,
    ) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.server: AvatarSignerServer = self._call(self._build(interceptors, kwargs))
        self.port: int = self._call(self.server.start())
        self.target = f"127.0.0.1:{self.port}"
        self._stopped = False

    async def _build(self, interceptors: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        return AvatarSignerServer(self.settings, interceptors=interceptors, **kwargs)

    def _call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def shutdown_async(self, grace: float | None = None, drain: float = 0) -> Future[Any]:
        """Begin the graceful shutdown (no drain unless asked); returns a future that
        completes when it is done."""
        self._stopped = True
        return asyncio.run_coroutine_threadsafe(
            self.server.shutdown(grace, drain=drain), self._loop
        )

    def stop(self, grace: float | None = 0) -> None:
        if not self._stopped:
            self.shutdown_async(grace).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(target: str, deadline: float) -> None:
    """Poll grpc.health.v1 for "" until SERVING; fail the test at `deadline` (monotonic)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                response = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"{target} did not become SERVING"
            time.sleep(0.05)


@contextmanager
def serve_process(
    env: Mapping[str, str], grpc_port: int, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`avatar-signer serve` as a process (env over this one's, output to `log`), yielded
    once SERVING on 127.0.0.1:grpc_port; terminated and waited for afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "avatarsigner_server.commands.cli", "serve"],
            env={**os.environ, **env, "GRPC_HOST": "127.0.0.1", "GRPC_PORT": str(grpc_port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_serving(f"127.0.0.1:{grpc_port}", time.monotonic() + 30)
            yield process
        finally:
            process.terminate()
            process.wait(30)
