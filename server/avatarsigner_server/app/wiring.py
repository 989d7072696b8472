"""The one place that builds the service from its settings.

    Settings -> credential sources (watched) -> the two URL signers, each holding one
    identity -> the servicer; metrics and the audit log; access control around it.

Nothing else constructs these parts, so what runs in production is what `build()` returns;
the server (server.py) only runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..access.control import AccessControl
from ..api.servicer import AvatarSignerService, UploadGate
from ..api.validation import Limits
from ..credentials.watcher import CredentialWatcher, build_watcher
from ..settings import Settings
from ..signing.clock import Clock, utc_now, utc_now_to_the_second
from ..signing.object_keys import ObjectKeys
from ..signing.url_signers import BucketEndpoint, DownloadSigner, UploadSigner
from ..telemetry.audit import Audit
from ..telemetry.metrics import Metrics


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


def build(
    settings: Settings, clock: Clock = utc_now, credentials: CredentialWatcher | None = None
) -> Parts:
    """Every part, checked (files are read now; a bad one is a one-line SettingsError)."""
    if credentials is None:
        credentials = build_watcher(settings, clock)
    metrics = Metrics()
    metrics.watch_credentials(credentials.seconds_left)
    audit = Audit(metrics)
    access = AccessControl(settings.access, audit, metrics)
    servicer = build_servicer(
        settings, credentials, clock, audit=audit, upload_gates=access.upload_gates
    )
    return Parts(settings, credentials, metrics, audit, access, servicer)
