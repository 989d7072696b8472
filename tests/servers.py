"""Test helpers: run the real grpc.aio server in a background thread of the test process.

The server is the production `AvatarSignerServer` on 127.0.0.1 with an ephemeral port; the
tests talk to it with ordinary gRPC clients, so every call crosses a real HTTP/2 connection.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import grpc
from avatarsigner_server import config
from avatarsigner_server.app import AvatarSignerServer

FAKE_ENV: dict[str, str] = {
    "S3_UPLOAD_KEY": "UPLOADERKEYID0001",
    "S3_UPLOAD_SECRET": "uploader-secret-0001",
    "S3_READ_KEY": "READERKEYID0000001",
    "S3_READ_SECRET": "reader-secret-00001",
    "AWS_REGION": "eu-west-1",
    "S3_BUCKET": "avatars",
    "GRPC_HOST": "127.0.0.1",
    "GRPC_PORT": "0",
    "METRICS_PORT": "0",  # an ephemeral port: servers in parallel must not collide on 9464
}


def settings_from(env: Mapping[str, str] | None = None, **overrides: str) -> config.Settings:
    merged = dict(FAKE_ENV if env is None else env)
    merged.update(overrides)
    return config.load(merged)


class ServerThread:
    """An AvatarSignerServer running on its own event loop in a daemon thread."""

    def __init__(
        self,
        settings: config.Settings,
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

    def shutdown_async(self, grace: float | None = None) -> Future[Any]:
        """Begin the graceful shutdown; returns a future that completes when it is done."""
        self._stopped = True
        return asyncio.run_coroutine_threadsafe(self.server.shutdown(grace), self._loop)

    def stop(self, grace: float | None = 0) -> None:
        if not self._stopped:
            self.shutdown_async(grace).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)
