"""Settings from the environment, validated once at start-up into a frozen object.

Every problem is a `SettingsError` whose message is one line naming the variable and the
rule; it never echoes a secret. `avatar-signer serve` prints it and exits with status 2.
Each concern reads its own variables (identities, bucket, limits, network, access, the
rate-limit store); this module composes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..signing.object_keys import DEFAULT_PREFIX
from . import bucket, identities, limits, network, uploads
from .access import AccessSettings, access
from .cloudfront import CloudFrontSettings, cloudfront
from .env import Env, SettingsError
from .identities import IdentitySetting
from .limits import TtlRule
from .rate_limit_store import RateLimitStoreSettings, rate_limit_store
from .serving import Serving, serving
from .uploads import UploadSettings

DEFAULT_SHUTDOWN_GRACE_SECONDS = 10.0
# The verifier signs no URL: its own requests to S3 are signed to live this long.
SERVER_REQUEST_SECONDS = 60


@dataclass(frozen=True)
class Settings:
    """Everything the service needs, validated. Secrets are kept out of repr()."""

    # Each identity's credentials: static keys, key files or a role (settings.identities).
    uploader: IdentitySetting = field(repr=False)
    reader: IdentitySetting = field(repr=False)
    region: str
    bucket: str
    endpoint_url: str | None = None
    key_prefix: str = DEFAULT_PREFIX
    grpc_host: str = network.DEFAULT_GRPC_HOST
    grpc_port: int = network.DEFAULT_GRPC_PORT
    metrics_port: int = network.DEFAULT_METRICS_PORT
    # Where /metrics listens; None: GRPC_HOST.
    metrics_host: str | None = None
    # A plaintext port serving only grpc.health.v1, for probes that cannot speak TLS
    # (Kubernetes' native gRPC probes); None: health only on GRPC_PORT.
    health_port: int | None = None
    upload_ttl: TtlRule = limits.UPLOAD_TTL
    download_ttl: TtlRule = limits.DOWNLOAD_TTL
    max_upload_bytes: int = limits.DEFAULT_MAX_UPLOAD_BYTES
    allowed_content_types: tuple[str, ...] = limits.DEFAULT_CONTENT_TYPES
    shutdown_grace_seconds: float = DEFAULT_SHUTDOWN_GRACE_SECONDS
    log_level: str = "INFO"
    # Audit one line per download URL (user id, key) rather than one per download call.
    audit_download_ids: bool = False
    # Server processes sharing GRPC_PORT (SO_REUSEPORT) under one supervisor; 1 = no supervisor.
    workers: int = 1
    # With workers > 1: a worker whose event loop is silent this long is killed (app.workers).
    worker_heartbeat_timeout_seconds: float = network.DEFAULT_WORKER_HEARTBEAT_TIMEOUT_SECONDS
    # Download URLs signed at the time rounded down to this window, so callers share one URL
    # per user and window (cache-friendly); 0 = off. Always smaller than download_ttl.default.
    download_url_reuse_seconds: int = 0
    # Callers, TLS, end-user tokens and rate limits (settings.access).
    access: AccessSettings = field(default_factory=AccessSettings)
    # The Redis/Valkey server holding the rate-limit buckets of every process and replica
    # (settings.rate_limit_store); None: each process keeps its own buckets.
    rate_limit_store: RateLimitStoreSettings | None = None
    # Verified or direct uploads (settings.uploads); the verifier exists in verified mode.
    uploads: UploadSettings = field(default_factory=UploadSettings)
    verifier: IdentitySetting | None = field(default=None, repr=False)
    # How often each identity's pair in force is put to S3, to notice a revoked key (0: never).
    credentials_probe_seconds: float = identities.DEFAULT_PROBE_SECONDS
    # A CloudFront distribution in front of the bucket (settings.cloudfront); None: off, and
    # download URLs are S3 presigned GETs.
    cloudfront: CloudFrontSettings | None = None
    # The drain at shutdown, connection age and keepalive, shedding (settings.serving).
    serving: Serving = field(default_factory=Serving)

    def identities(self) -> dict[str, IdentitySetting]:
        """identity name -> its credential setting (the verifier only in verified mode)."""
        found = {"uploader": self.uploader, "reader": self.reader}
        if self.verifier is not None:
            found["verifier"] = self.verifier
        return found

    def ttl_rules(self) -> dict[str, TtlRule]:
        """identity name -> how long what it signs must live (the verifier: its requests)."""
        server = TtlRule(SERVER_REQUEST_SECONDS, SERVER_REQUEST_SECONDS)
        return {"uploader": self.upload_ttl, "reader": self.download_ttl, "verifier": server}


def _log_level(env: Env) -> str:
    level = (env.raw("LOG_LEVEL") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError("LOG_LEVEL", "must be one of DEBUG, INFO, WARNING, ERROR")
    return level


def load(environ: Mapping[str, str]) -> Settings:
    """Build Settings from an environment mapping, or raise SettingsError (one line)."""
    env = Env(environ)
    upload_mode = uploads.mode(env)
    seconds = identities.role_seconds(env)
    uploader = identities.identity_setting(env, "uploader", seconds)
    reader = identities.identity_setting(env, "reader", seconds)
    verifier = identities.verifier_setting(
        env, upload_mode is uploads.UploadMode.VERIFIED, seconds
    )

    endpoint_url = bucket.endpoint_url(env)
    region = bucket.region(env, endpoint_url)
    bucket_name = bucket.bucket(env, endpoint_url)
    key_prefix = bucket.key_prefix(env)
    upload_settings = uploads.uploads(env, upload_mode, key_prefix)
    listen = network.listen(env)

    upload_ttl = limits.ttl(env, "UPLOAD", *limits.DEFAULT_UPLOAD_TTL)
    download_ttl = limits.ttl(env, "DOWNLOAD", *limits.DEFAULT_DOWNLOAD_TTL)
    identities.require_role_covers(uploader, upload_ttl.maximum, "UPLOAD_MAX_TTL_SECONDS")
    identities.require_role_covers(reader, download_ttl.maximum, "DOWNLOAD_MAX_TTL_SECONDS")
    reuse = limits.reuse_seconds(env, download_ttl)
    log_level = _log_level(env)

    return Settings(
        uploader=uploader,
        reader=reader,
        region=region,
        bucket=bucket_name,
        endpoint_url=endpoint_url,
        key_prefix=key_prefix,
        grpc_host=listen.grpc_host,
        grpc_port=listen.grpc_port,
        metrics_port=listen.metrics_port,
        metrics_host=listen.metrics_host,
        health_port=listen.health_port,
        upload_ttl=upload_ttl,
        download_ttl=download_ttl,
        max_upload_bytes=limits.max_upload_bytes(env),
        allowed_content_types=limits.content_types(env),
        shutdown_grace_seconds=env.number(
            "SHUTDOWN_GRACE_SECONDS", DEFAULT_SHUTDOWN_GRACE_SECONDS, 0.0, 3600.0
        ),
        log_level=log_level,
        audit_download_ids=env.boolean("AUDIT_DOWNLOAD_IDS", False),
        access=access(env),
        rate_limit_store=rate_limit_store(env),
        workers=listen.workers,
        worker_heartbeat_timeout_seconds=listen.worker_heartbeat_timeout_seconds,
        download_url_reuse_seconds=reuse,
        uploads=upload_settings,
        verifier=verifier,
        credentials_probe_seconds=identities.probe_seconds(env),
        serving=serving(env, upload_settings.confirm_timeout_seconds),
        cloudfront=cloudfront(env),
    )
