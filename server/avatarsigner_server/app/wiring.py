"""The one place that builds the service from its settings.

    Settings -> credential sources (watched) -> the two URL signers, each holding one
    identity -> the servicer; in verified mode the confirmer, reading and writing as the
    verifier; metrics and the audit log; access control around it, with the shared
    rate-limit store (RATE_LIMIT_REDIS_URL: one per process, on its event loop) and the
    tracing (OTEL_*, built by the caller from the environment) it uses.

Download URLs are S3 presigned GETs signed with the reader's credentials, or, when
CLOUDFRONT_URL is set, CloudFront signed URLs signed with the CloudFront key (which also
signs viewer cookies). That choice is made here and nowhere else: the servicer sees one
`DownloadUrls`.

Nothing else constructs these parts, so what runs in production is what `build()` returns;
the server (server.py) only runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..access.control import AccessControl
from ..api.servicer import AvatarSignerService, UserGate
from ..api.validation import Limits
from ..credentials.watcher import CredentialWatcher, build_watcher, check_sources
from ..settings import Settings
from ..settings import cloudfront as cloudfront_settings
from ..settings.load import SERVER_REQUEST_SECONDS
from ..signing.clock import Clock, utc_now, utc_now_to_the_second
from ..signing.cloudfront_viewers import CloudFrontDownloadSigner, ViewerCookieSigner
from ..signing.object_keys import ObjectKeys
from ..signing.url_signers import BucketEndpoint, DownloadSigner, DownloadUrls, UploadSigner
from ..storage import probes
from ..storage.objects import ObjectStore
from ..telemetry.audit import Audit
from ..telemetry.metrics import Metrics
from ..telemetry.tracing import Tracing
from ..verification.confirm import Confirmer, limits_from, require_verifiable
from ..verification.removal import Remover

if TYPE_CHECKING:  # imported only with a store: the Redis client costs ~20 MB per process
    from ..access.shared_rate_limits import SharedStore


def check(settings: Settings) -> None:
    """What start-up verifies before anything runs (SettingsError, one line naming the
    variable): every key file readable and every identity distinct; in verified mode,
    that every allowed type and limit is one verification can honour."""
    check_sources(settings)
    if settings.uploads.verified:
        require_verifiable(settings.allowed_content_types)
        limits_from(settings.uploads)


def _store(
    settings: Settings, credentials: CredentialWatcher, identity: str, clock: Clock
) -> ObjectStore:
    """An identity's own requests to the bucket (never a URL handed to a caller)."""
    return ObjectStore(
        credentials[identity],
        BucketEndpoint(settings.bucket, settings.region, settings.endpoint_url),
        settings.region,
        clock=utc_now_to_the_second if clock is utc_now else clock,
        expires_in=SERVER_REQUEST_SECONDS,
    )


def build_confirmer(
    settings: Settings,
    credentials: CredentialWatcher,
    clock: Clock = utc_now,
    tracing: Tracing | None = None,
) -> Confirmer | None:
    """Verified mode: ConfirmUpload reads and writes as the verifier, looks for its markers
    and tombstones as the reader. Direct mode: None."""
    if not settings.uploads.verified:
        return None
    uploads = settings.uploads
    return Confirmer(
        ObjectKeys(settings.key_prefix, uploads.staging_prefix),
        _store(settings, credentials, "verifier", clock),
        _store(settings, credentials, "reader", clock),
        limits=limits_from(uploads),
        max_upload_bytes=settings.max_upload_bytes,
        concurrency=uploads.confirm_concurrency,
        timeout_seconds=uploads.confirm_timeout_seconds,
        tracing=tracing,
    )


def build_remover(
    settings: Settings, credentials: CredentialWatcher, clock: Clock = utc_now
) -> Remover | None:
    """Verified mode: DeleteAvatar deletes as the verifier (direct mode has no identity
    that may delete: None)."""
    if not settings.uploads.verified:
        return None
    return Remover(
        ObjectKeys(settings.key_prefix, settings.uploads.staging_prefix),
        _store(settings, credentials, "verifier", clock),
        _store(settings, credentials, "reader", clock),
        delete_old_versions=settings.uploads.delete_old_versions,
    )


def cached_copies_seconds(settings: Settings) -> int:
    """How long a copy of an avatar fetched before its deletion may still be shown.

    S3 checks every request, so a download URL stops working at once; but a browser or
    proxy may keep what it fetched. Every URL signed before the deletion has expired
    DOWNLOAD_MAX_TTL_SECONDS later, and a stable URL's signed max-age (ttl - window) is
    shorter than that. Through CloudFront an edge may go on serving a copy it cached
    before the deletion, to holders of a valid URL or cookies, for up to the cache
    policy's maximum TTL (unless invalidated), and a browser then keeps it for the max-age
    the response headers policy gives (both as `avatar-signer policies` sets them up).
    """
    if settings.cloudfront is not None:
        edge = cloudfront_settings.EDGE_MAX_TTL_SECONDS
        return max(settings.download_ttl.maximum, edge + cloudfront_settings.VIEWER_MAX_AGE_SECONDS)
    return settings.download_ttl.maximum


def build_servicer(
    settings: Settings,
    credentials: CredentialWatcher,
    clock: Clock = utc_now,
    *,
    audit: Audit | None = None,
    upload_gates: tuple[UserGate, ...] = (),
    delete_gates: tuple[UserGate, ...] = (),
    tracing: Tracing | None = None,
) -> AvatarSignerService:
    """The servicer with its signers, each holding only its own identity or key (and, in
    verified mode, the confirmer, its S3 calls traced as steps)."""
    endpoint = BucketEndpoint(settings.bucket, settings.region, settings.endpoint_url)
    # The real clock, read to the second (and cheaply) for signing; a test's clock as given.
    signing_clock = utc_now_to_the_second if clock is utc_now else clock
    keys = ObjectKeys(settings.key_prefix, settings.uploads.staging_prefix)
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
        audit=audit or Audit(download_ids=settings.audit_download_ids),
        upload_gates=upload_gates,
        confirmer=build_confirmer(settings, credentials, clock, tracing),
        remover=build_remover(settings, credentials, clock),
        delete_gates=delete_gates,
        cached_copies_seconds=cached_copies_seconds(settings),
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
    from ..access.shared_rate_limits import SharedStore

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
    check(settings)
    if credentials is None:
        endpoint = BucketEndpoint(settings.bucket, settings.region, settings.endpoint_url)
        probe_key = ObjectKeys(settings.key_prefix).probe_key()
        credentials = build_watcher(
            settings, clock, probes.prover(endpoint, settings.region, probe_key)
        )
    tracing = tracing or Tracing.off()
    metrics = Metrics()
    metrics.watch_credentials(credentials.seconds_left, lambda: dict(credentials.valid))
    audit = Audit(metrics, settings.audit_download_ids)
    store = rate_limit_store(settings, metrics)
    access = AccessControl(settings.access, audit, metrics, store=store, tracing=tracing)
    servicer = build_servicer(
        settings,
        credentials,
        clock,
        audit=audit,
        upload_gates=access.upload_gates,
        delete_gates=access.delete_gates,
        tracing=tracing,
    )
    return Parts(settings, credentials, metrics, audit, access, servicer, store, tracing)
