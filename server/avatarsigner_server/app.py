"""Wiring and lifecycle of the server.

Settings -> credential sources -> the two signers -> the servicer -> a grpc.aio server
with health and reflection. The lifecycle reads as one sequence:

    start:    bind, start, mark "" and avatarsigner.v1.AvatarSigner SERVING
    shutdown: health NOT_SERVING (probes stop routing to us), stop accepting new calls,
              let in-flight calls finish within the grace period, return.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

import grpc
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import observability
from .config import Settings
from .credentials import StaticCredentials
from .keys import KeyPolicy
from .service import SERVICE_NAME, AvatarSignerService
from .signers import BucketEndpoint, Clock, DownloadSigner, UploadSigner, utc_now
from .validation import Limits

HEALTH_SERVICES = ("", SERVICE_NAME)


class StartupError(RuntimeError):
    """The server could not start; str() is one line naming the setting at fault."""


def build_service(settings: Settings, clock: Clock = utc_now) -> AvatarSignerService:
    """The servicer with its two signers, each holding only its own identity."""
    endpoint = BucketEndpoint(settings.bucket, settings.region, settings.endpoint_url)
    return AvatarSignerService(
        limits=Limits.from_settings(settings),
        keys=KeyPolicy(settings.key_prefix),
        uploads=UploadSigner(
            StaticCredentials(settings.uploader), endpoint, settings.region, clock
        ),
        downloads=DownloadSigner(
            StaticCredentials(settings.reader), endpoint, settings.region, clock
        ),
    )


class AvatarSignerServer:
    """One grpc.aio server serving AvatarSigner, health and reflection."""

    def __init__(
        self,
        settings: Settings,
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self.health = health.aio.HealthServicer()
        self._service = build_service(settings, clock)
        self._server = grpc.aio.server(
            interceptors=list(interceptors),
            # Refuse to share a port silently: a second server on it is a mistake.
            options=[("grpc.so_reuseport", 0)],
        )
        self.port = 0

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (useful with GRPC_PORT=0)."""
        pb_grpc.add_AvatarSignerServicer_to_server(self._service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise StartupError(f"GRPC_PORT: cannot listen on {address} (in use or not allowed)")
        await self._server.start()
        for service in HEALTH_SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def shutdown(self, grace: float | None = None) -> None:
        """NOT_SERVING, refuse new calls, let in-flight calls finish within the grace."""
        if grace is None:
            grace = self.settings.shutdown_grace_seconds
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    server = AvatarSignerServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    port = await server.start()
    observability.log.info(
        "serving",
        extra={
            "address": f"{settings.grpc_host}:{port}",
            "bucket": settings.bucket,
            "region": settings.region,
            "endpoint": settings.endpoint_url or "aws",
            "uploader_key_id": settings.uploader.access_key_id,
            "reader_key_id": settings.reader.access_key_id,
        },
    )
    await stop.wait()
    observability.log.info(
        "shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds}
    )
    await server.shutdown()
    observability.log.info("stopped")
