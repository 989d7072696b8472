"""The one place that builds the service from its settings.

    Settings -> credential sources (watched) -> the two URL signers, each holding one
    identity -> the servicer; metrics and the audit log; access control around it.

Download URLs are S3 presigned GETs signed with the reader's credentials, or, when
CLOUDFRONT_URL is set, CloudFront signed URLs signed with the CloudFront key (which also
signs viewer cookies). That choice is made here and nowhere else: the servicer sees one
`DownloadUrls`.

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
from ..signing.cloudfront_viewers import CloudFrontDownloadSigner, ViewerCookieSigner
from ..signing.object_keys import ObjectKeys
from ..signing.url_signers import BucketEndpoint, DownloadSigner, DownloadUrls, UploadSigner
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
    """The servicer with its signers, each holding only its own identity or key."""
    endpoint = BucketEndpoint(settings.bucket, settings.region, settings.endpoint_url)
    # The real clock, read to the second (and cheaply) for signing; a test's clock as given.
    signing_clock = utc_now_to_the_second if clock is utc_now else clock
    keys = ObjectKeys(settings.key_prefix)
    cloudfront, key = settings.cloudfront, credentials.cloudfront
    downloads: DownloadUrls
    viewer_cookies = None
    if cloudfront is None or key is None:
        downloads = DownloadSigner(
            credentials["reader"],
            endpoint,
            settings.region,
            signing_clock,
            reuse_seconds=settings.download_url_reuse_seconds,
        )
    else:
        downloads = CloudFrontDownloadSigner(
            key,
            cloudfront.url,
            cloudfront.hash_algorithm,
            signing_clock,
            reuse_seconds=settings.download_url_reuse_seconds,
        )
        viewer_cookies = ViewerCookieSigner(
            key,
            cloudfront.url,
            keys,
            cloudfront.hash_algorithm,
            signing_clock,
            domain=cloudfront.cookie_domain,
        )
    return AvatarSignerService(
        limits=Limits.from_settings(settings),
        keys=keys,
        uploads=UploadSigner(credentials["uploader"], endpoint, settings.region, signing_clock),
        downloads=downloads,
        audit=audit,
        upload_gates=upload_gates,
        viewer_cookies=viewer_cookies,
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
