"""The one place that builds the service from its settings.

    Settings -> credential sources (watched) -> the two URL signers, each holding one
    identity -> the servicer; metrics and the audit log; access control around it, with
    the shared rate-limit store (RATE_LIMIT_REDIS_URL: one per process, on its event loop)
    and the tracing (OTEL_*, built by the caller from the environment) it uses.

Nothing else constructs these parts, so what runs in production is what `build()` returns;
the server (server.py) only runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..access.control import AccessControl
from ..access.shared_rate_limits import SharedStore
from ..api.servicer import AvatarSignerService, UploadGate
from ..api.validation import Limits
from ..credentials.watcher import CredentialWatcher, build_watcher
from ..settings import Settings
from ..signing.clock import Clock, utc_now, utc_now_to_the_second
from ..signing.object_keys import ObjectKeys
from ..signing.url_signers import BucketEndpoint, DownloadSigner, UploadSigner
from ..telemetry.audit import Audit
from ..telemetry.metrics import Metrics
from ..telemetry.tracing import Tracing


def build_servicer(
    settings: Settings,
    credentials: CredentialWatcher,
    clock: Clock = utc_now,
    *,
    audit: Audit | None = None,
    upload_gates: tuple[UploadGate, ...] = (),
) -> AvatarSignerService:
    """The servicer with its two signers, each holding only its own identity."""
    endpoint = BucketEndpoint(settings.bucket, settings.region, settings.endpoint_url)
    # The real clock, read to the second (and cheaply) for signing; a test's clock as given.
    signing_clock = utc_now_to_the_second if clock is utc_now else clock
    return AvatarSignerService(
        limits=Limits.from_settings(settings),
        keys=ObjectKeys(settings.key_prefix),
        uploads=UploadSigner(credentials["uploader"], endpoint, settings.region, signing_clock),
        downloads=DownloadSigner(
            credentials["reader"],
            endpoint,
            settings.region,
            signing_clock,
            reuse_seconds=settings.download_url_reuse_seconds,
        ),
        audit=audit,
        upload_gates=upload_gates,
    )


@dataclass(frozen=True)
class Parts:
    """Everything a server runs, built from one Settings."""

    settings: Settings
    credentials: CredentialWatcher
    metrics: Metrics
    audit: Audit
    access: AccessControl
    servicer: AvatarSignerService
    # The shared rate-limit store (None: buckets per process); the server closes it.
    store: SharedStore | None
    # Spans of every AvatarSigner call (off unless OTEL_* says otherwise); flushed on drain.
    tracing: Tracing


def rate_limit_store(settings: Settings, metrics: Metrics) -> SharedStore | None:
    """The store of RATE_LIMIT_REDIS_URL, its outages counted and its reachability a gauge.

    No connection is made here: the first check connects, on the event loop that runs it,
    so each worker process has its own pool. Health never depends on it.
    """
    if settings.rate_limit_store is None:
        return None
    store = SharedStore.from_settings(
        settings.rate_limit_store, on_unreachable=metrics.store_unreachable
    )
    metrics.watch_store(lambda: store.reachable)
    return store


def build(
    settings: Settings,
    clock: Clock = utc_now,
    credentials: CredentialWatcher | None = None,
    tracing: Tracing | None = None,
) -> Parts:
    """Every part, checked (files are read now; a bad one is a one-line SettingsError)."""
    if credentials is None:
        credentials = build_watcher(settings, clock)
    tracing = tracing or Tracing.off()
    metrics = Metrics()
    metrics.watch_credentials(credentials.seconds_left)
    audit = Audit(metrics)
    store = rate_limit_store(settings, metrics)
    access = AccessControl(settings.access, audit, metrics, store=store, tracing=tracing)
    servicer = build_servicer(
        settings, credentials, clock, audit=audit, upload_gates=access.upload_gates
    )
    return Parts(settings, credentials, metrics, audit, access, servicer, store, tracing)
