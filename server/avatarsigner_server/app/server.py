"""The server's lifecycle: one grpc.aio server serving AvatarSigner, health and reflection.

The parts come from `wiring.build()`; this module runs them. The lifecycle reads as one
sequence:

    start:    bind, start, mark "" and avatarsigner.v1.AvatarSigner SERVING once both
              identities hold usable credentials (NOT_SERVING while one has none: the
              credential watcher re-checks key files and role sessions every second)
    shutdown: health NOT_SERVING (probes stop routing to us), stop accepting new calls,
              let in-flight calls finish within the grace period, return.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence

import grpc
from avatarsigner.contract import SERVICE_NAME
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..credentials.watcher import CredentialWatcher
from ..settings import Settings, host_port
from ..settings.file_modes import world_readable_secrets
from ..settings.identities import describe
from ..signing.clock import Clock, utc_now
from ..telemetry import logs
from . import wiring

HEALTH_SERVICES = ("", SERVICE_NAME)
# How often the callers, JWKS and TLS files are checked for changes (see reload()).
FILE_CHECK_SECONDS = 5.0


class StartupError(RuntimeError):
    """The server could not start; str() is one line naming the setting at fault."""


class AvatarSignerServer:
    """One grpc.aio server serving AvatarSigner, health and reflection."""

    def __init__(
        self,
        settings: Settings,
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        clock: Clock = utc_now,
        credentials: CredentialWatcher | None = None,
    ) -> None:
        self.settings = settings
        self.health = health.aio.HealthServicer()
        # Credentials, metrics, audit, access control, the servicer (reads their files now).
        parts = wiring.build(settings, clock, credentials)
        self.credentials = parts.credentials
        self.metrics = parts.metrics
        self.access = parts.access
        self._service = parts.servicer
        self._watch: asyncio.Task[None] | None = None
        self._reload_watch: asyncio.Task[None] | None = None
        self._server = grpc.aio.server(
            interceptors=[self.access.guard, *interceptors],
            # Refuse to share a port silently: a second server on it is a mistake. Only the
            # processes of one `--workers N` supervisor share it (it checks the port is free).
            options=[("grpc.so_reuseport", 1 if settings.workers > 1 else 0)],
        )
        self.port = 0
        self.metrics_port = 0
        self.health_port = 0
        # Health alone, plaintext, for probes that cannot speak TLS (HEALTH_PORT).
        self._health_server: grpc.aio.Server | None = None
        if settings.health_port is not None:
            self._health_server = grpc.aio.server(
                options=[("grpc.so_reuseport", 1 if settings.workers > 1 else 0)]
            )

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (useful with GRPC_PORT=0)."""
        pb_grpc.add_AvatarSignerServicer_to_server(self._service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        address = host_port(self.settings.grpc_host, self.settings.grpc_port)
        tls = self.access.server_credentials()
        try:
            if tls is None:
                self.port = self._server.add_insecure_port(address)
            else:
                self.port = self._server.add_secure_port(address, tls)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise StartupError(f"GRPC_PORT: cannot listen on {address} (in use or not allowed)")
        metrics_host = self.settings.metrics_host or self.settings.grpc_host
        try:
            self.metrics_port = await self.metrics.serve(metrics_host, self.settings.metrics_port)
        except OSError:
            raise StartupError(
                "METRICS_PORT: cannot listen on "
                f"{host_port(metrics_host, self.settings.metrics_port)} "
                "(in use or not allowed)"
            ) from None
        if self._health_server is not None:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            health_address = host_port(self.settings.grpc_host, self.settings.health_port or 0)
            try:
                self.health_port = self._health_server.add_insecure_port(health_address)
            except RuntimeError:
                self.health_port = 0
            if self.health_port == 0:
                raise StartupError(
                    f"HEALTH_PORT: cannot listen on {health_address} (in use or not allowed)"
                )
        # NOT_SERVING until the credentials are known to work (the servicer starts "" SERVING).
        await self._set_serving(False)
        await self._server.start()
        if self._health_server is not None:
            await self._health_server.start()
        usable = await asyncio.to_thread(self.credentials.refresh_all)
        await self._set_serving(usable)
        self._watch = asyncio.create_task(self.credentials.watch(self._set_serving, usable))
        self._reload_watch = asyncio.create_task(self._reload_changed_files())
        return self.port

    async def _reload_changed_files(self) -> None:
        """Every few seconds: reload the callers, JWKS and TLS files if any changed."""
        while True:
            await asyncio.sleep(FILE_CHECK_SECONDS)
            try:
                await asyncio.to_thread(self.access.reloader.reload_if_changed)
            except Exception as error:  # noqa: BLE001 - keep checking; the old files stay
                logs.log.error(
                    "checking the callers, JWKS and TLS files failed",
                    extra={"exc_type": type(error).__name__},
                )

    async def _set_serving(self, usable: bool) -> None:
        """SERVING while both identities can sign; ignored once shutdown has begun."""
        serving = health_pb2.HealthCheckResponse
        status = serving.SERVING if usable else serving.NOT_SERVING
        for service in HEALTH_SERVICES:
            await self.health.set(service, status)

    async def shutdown(self, grace: float | None = None) -> None:
        """NOT_SERVING, refuse new calls, let in-flight calls finish within the grace."""
        if grace is None:
            grace = self.settings.shutdown_grace_seconds
        await self.health.enter_graceful_shutdown()
        for task in (self._watch, self._reload_watch):
            if task is not None:
                task.cancel()
        await self._server.stop(grace)
        self._service.close()
        if self._health_server is not None:  # probes saw NOT_SERVING throughout the drain
            await self._health_server.stop(0)
        await self.metrics.stop()

    def reload(self) -> None:
        """SIGHUP: re-read the callers, JWKS and TLS files; calls in flight are unaffected."""
        self.access.reloader.reload()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def serve(settings: Settings, on_serving: Callable[[int], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    on_serving(port) is called once the server is SERVING (a worker tells its supervisor).
    """
    server = AvatarSignerServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def reload_in_thread() -> None:  # file reads stay off the event loop
        task = loop.create_task(asyncio.to_thread(server.reload))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_in_thread)
    port = await server.start()
    for warning in (*server.access.startup_warnings(), *world_readable_secrets(settings)):
        logs.log.warning(warning)
    logs.log.info(
        "serving",
        extra={
            "address": host_port(settings.grpc_host, port),
            "bucket": settings.bucket,
            "region": settings.region,
            "endpoint": settings.endpoint_url or "aws",
            "uploader_credentials": describe(settings.uploader),
            "reader_credentials": describe(settings.reader),
            # Where download URLs point: S3, or the CloudFront distribution (no key material).
            "downloads": settings.cloudfront.url if settings.cloudfront else "s3",
            "metrics_address": host_port(
                settings.metrics_host or settings.grpc_host, server.metrics_port
            ),
            "health_address": (
                host_port(settings.grpc_host, server.health_port) if server.health_port else None
            ),
            **server.access.describe(),
        },
    )
    if on_serving is not None:
        on_serving(port)
    await stop.wait()
    logs.log.info(
        "shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds}
    )
    await server.shutdown()
    logs.log.info("stopped")
    await asyncio.to_thread(logs.flush_logs)  # every line out (bounded: a stalled reader)
