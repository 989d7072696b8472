"""The server's lifecycle: one grpc.aio server serving AvatarSigner, health and reflection.

The parts come from `wiring.build()`; this module runs them. The lifecycle reads as one
sequence:

    start:    bind, start, mark "" and avatarsigner.v1.AvatarSigner SERVING once both
              identities hold usable credentials (NOT_SERVING while one has none: the
              credential watcher re-checks key files and role sessions every second)
    shutdown: health NOT_SERVING at once, on GRPC_PORT and HEALTH_PORT (probes and
              health-checking balancers move traffic away); keep serving every call for
              SHUTDOWN_DRAIN_SECONDS; then refuse new calls UNAVAILABLE with a retry
              pushback for REFUSE_SECONDS, which empties gRPC's queue of received calls
              (see app.gate); then stop: the port closes and connections get a GOAWAY
              (retries go to other replicas) while the calls in handlers finish within
              SHUTDOWN_GRACE_SECONDS (once none is left, streams that never end by
              themselves, a client's health Watch, get IDLE_STOP_SECONDS), return. A call
              the server received ends OK or UNAVAILABLE, never CANCELLED
              (docs/operating.md, "Shutdown: the drain"). Last, close the shared
              rate-limit store's connections and export the spans still buffered.

Connections are closed after GRPC_MAX_CONNECTION_AGE_SECONDS (a GOAWAY, so clients
reconnect and spread over replicas; calls on it get the age grace) and pinged when quiet
for GRPC_KEEPALIVE_SECONDS (a dead peer is dropped); clients may ping every
CLIENT_PING_SECONDS. gRPC holds up to GRPC_MAX_PENDING_CALLS received calls before any
handler takes them (see settings.serving).

Health follows the credentials only: the shared rate-limit store being down never makes
the server NOT_SERVING (its failure mode decides what calls get; a metric says it).
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
from ..telemetry.tracing import Tracing
from . import wiring
from .gate import CallGate

HEALTH_SERVICES = ("", SERVICE_NAME)
# The refusing phase at the end of a drain: long enough for gRPC to hand every queued call
# to the gate (each refusal takes tens of microseconds), short next to any deadline.
REFUSE_SECONDS = 0.5
# A refused call is retried by the client no sooner than this: after the port has closed.
PUSHBACK_SECONDS = 1.0
# Once no call is in a handler, what stop() still waits for are streams nobody ends (the
# health Watch of a client that checks health itself): this long, then they are cut.
IDLE_STOP_SECONDS = 1.0
# Clients may send keepalive pings this often, also on connections without calls.
CLIENT_PING_SECONDS = 10
# How often the callers, JWKS and TLS files are checked for changes (see reload()).
FILE_CHECK_SECONDS = 5.0


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The grpc.aio server's channel arguments (see the module doc)."""
    serving = settings.serving
    options = [
        # Refuse to share a port silently: a second server on it is a mistake. Only the
        # processes of one `--workers N` supervisor share it (it checks the port is free).
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ("grpc.keepalive_timeout_ms", serving.keepalive_timeout_seconds * 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", CLIENT_PING_SECONDS * 1000),
        ("grpc.server.max_pending_requests", serving.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", 2 * serving.max_pending_calls),
    ]
    if serving.keepalive_seconds:
        options.append(("grpc.keepalive_time_ms", serving.keepalive_seconds * 1000))
    if serving.connection_age_seconds:
        options.append(("grpc.max_connection_age_ms", serving.connection_age_seconds * 1000))
        options.append(
            ("grpc.max_connection_age_grace_ms", serving.connection_age_grace_seconds * 1000)
        )
    return options


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
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.health = health.aio.HealthServicer()
        # Credentials, metrics, audit, access control, the servicer (reads their files now).
        parts = wiring.build(settings, clock, credentials, tracing)
        self.credentials = parts.credentials
        self.metrics = parts.metrics
        self.access = parts.access
        self.tracing = parts.tracing
        self._store = parts.store
        self._service = parts.servicer
        self._watch: asyncio.Task[None] | None = None
        self._reload_watch: asyncio.Task[None] | None = None
        self.gate = CallGate(settings.serving.min_time_left_seconds, self.metrics)
        self._server = grpc.aio.server(
            interceptors=[self.gate, self.access.guard, *interceptors],
            options=server_options(settings),
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

    async def shutdown(self, grace: float | None = None, *, drain: float | None = None) -> None:
        """NOT_SERVING; serve on for the drain; refuse new calls; stop within the grace.

        grace, drain: seconds, SHUTDOWN_GRACE_SECONDS and SHUTDOWN_DRAIN_SECONDS by default.
        With no drain the refusing phase is skipped too: stop at once (tests, local runs).
        """
        if grace is None:
            grace = self.settings.shutdown_grace_seconds
        if drain is None:
            drain = self.settings.serving.drain_seconds
        await self.health.enter_graceful_shutdown()
        for task in (self._watch, self._reload_watch):
            if task is not None:
                task.cancel()
        if drain > 0:
            await asyncio.sleep(drain)
            self.gate.refuse(PUSHBACK_SECONDS)
            await asyncio.sleep(REFUSE_SECONDS)
        else:
            self.gate.refuse(PUSHBACK_SECONDS)
        # Close the port and send GOAWAY now, not once the calls in handlers are done: a
        # refused call's retry, after the pushback, must find another replica rather than
        # this one, still refusing on the open connection while a slow call finishes.
        stopping = asyncio.ensure_future(self._server.stop(grace))
        if await self.gate.wait_idle(grace):
            await self._server.stop(IDLE_STOP_SECONDS)  # the most restrictive grace wins
        await stopping
        self._service.close()
        if self._health_server is not None:  # probes saw NOT_SERVING throughout the drain
            await self._health_server.stop(0)
        await self._close_shared_parts()
        await self.metrics.stop()

    async def _close_shared_parts(self) -> None:
        """Once no call is left: the store's connections closed, buffered spans exported
        (the exporter blocks, so in a thread, within its own timeout)."""
        if self._store is not None:
            await self._store.aclose()
        if self.tracing.enabled:
            await asyncio.to_thread(self.tracing.shutdown)

    def reload(self) -> None:
        """SIGHUP: re-read the callers, JWKS and TLS files; calls in flight are unaffected."""
        self.access.reloader.reload()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def serve(
    settings: Settings,
    on_serving: Callable[[int], None] | None = None,
    tracing: Tracing | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    on_serving(port) is called once the server is SERVING (a worker tells its supervisor).
    """
    server = AvatarSignerServer(settings, tracing=tracing)
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
            "tracing": "on" if server.tracing.enabled else "off",
        },
    )
    if on_serving is not None:
        on_serving(port)
    await stop.wait()
    logs.log.info(
        "shutting down",
        extra={
            "drain_seconds": settings.serving.drain_seconds,
            "grace_seconds": settings.shutdown_grace_seconds,
        },
    )
    await server.shutdown()
    logs.log.info("stopped")
    await asyncio.to_thread(logs.flush_logs)  # every line out (bounded: a stalled reader)
