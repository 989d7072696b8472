"""Settings from the environment, validated once at start-up into a frozen object.

Every problem is a `SettingsError` whose message is one line naming the variable and the
rule; it never echoes a secret. `avatar-signer serve` prints it and exits with status 2.
The seed's six variable names are kept as they are; everything else has a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .credentials import (
    ROLE_MAX_SECONDS,
    ROLE_MIN_SECONDS,
    AssumedRole,
    Credentials,
    CredentialSetting,
    KeyFileError,
    KeyFiles,
    access_key_id_problem,
    is_role_arn,
    read_key_files,
    secret_problem,
)
from .keys import DEFAULT_PREFIX, is_valid_prefix

MIB = 1024 * 1024
DEFAULT_GRPC_HOST = "0.0.0.0"  # noqa: S104 - a service in a pod listens on all interfaces
DEFAULT_GRPC_PORT = 50051
DEFAULT_METRICS_PORT = 9464
DEFAULT_UPLOAD_TTL = (600, 1200)  # (default, maximum) seconds
DEFAULT_DOWNLOAD_TTL = (300, 1200)
DEFAULT_MAX_UPLOAD_BYTES = 5 * MIB
DEFAULT_SHUTDOWN_GRACE_SECONDS = 10.0
DEFAULT_ROLE_SECONDS = 3600
# S3 limits: a single PUT is at most 5 GiB; a SigV4 presigned URL lives at most 7 days.
S3_MAX_PUT_BYTES = 5 * 1024 * MIB
SIGV4_MAX_EXPIRES = 7 * 24 * 3600
MAX_WORKERS = 64
DEFAULT_CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp")
# Types a browser may run script from when opened directly: never served from our bucket.
REFUSED_CONTENT_TYPES = frozenset({"image/svg+xml"})

_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_MEDIA_TYPE = re.compile(r"image/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
# Regions whose endpoints and ARNs are not the aws partition's (amazonaws.com, arn:aws).
_OTHER_PARTITION = re.compile(r"cn-|us-gov-|[a-z]{2}-iso[a-z]*-")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def is_valid_bucket(name: str) -> bool:
    """An S3 bucket name: 3-63 of a-z 0-9 . -, alphanumeric at both ends, no '..'."""
    return _BUCKET.fullmatch(name) is not None and ".." not in name


class SettingsError(ValueError):
    """A missing or malformed setting. str() is one line that names the variable."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name


@dataclass(frozen=True)
class TtlRule:
    """Default and maximum lifetime of one kind of URL, in seconds."""

    default: int
    maximum: int


@dataclass(frozen=True)
class TlsSettings:
    """Server certificate and key (PEM files); with a client CA, mutual TLS is required."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


@dataclass(frozen=True)
class EndUserSettings:
    """How end-user tokens (JWTs) are verified: an HS256 secret or a JWKS file, never both."""

    issuer: str
    audience: str
    hs256_secret: str | None = field(default=None, repr=False)
    jwks_file: str | None = None
    leeway_seconds: int = 30


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `rate` tokens per second, holding at most `burst`."""

    rate: float
    burst: int


@dataclass(frozen=True)
class RateLimits:
    """Token buckets per caller and per user; None means no limit of that kind."""

    upload_per_caller: RateLimit | None = RateLimit(100.0, 200)
    upload_per_user: RateLimit | None = RateLimit(0.2, 10)
    download_per_caller: RateLimit | None = None


@dataclass(frozen=True)
class AuthSettings:
    """Who may call (callers file, TLS), end-user binding and rate limits (issue 4)."""

    tls: TlsSettings | None = None
    callers_file: str | None = None
    end_user: EndUserSettings | None = None
    rate_limits: RateLimits = RateLimits()


@dataclass(frozen=True)
class Settings:
    """Everything the service needs, validated. Secrets are kept out of repr()."""

    # Each identity's credentials: static keys, key files or a role (`_credential_sources`).
    uploader: CredentialSetting = field(repr=False)
    reader: CredentialSetting = field(repr=False)
    region: str
    bucket: str
    endpoint_url: str | None = None
    key_prefix: str = DEFAULT_PREFIX
    grpc_host: str = DEFAULT_GRPC_HOST
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    # A plaintext port serving only grpc.health.v1, for probes that cannot speak TLS
    # (Kubernetes' native gRPC probes); None: health only on GRPC_PORT.
    health_port: int | None = None
    upload_ttl: TtlRule = TtlRule(*DEFAULT_UPLOAD_TTL)
    download_ttl: TtlRule = TtlRule(*DEFAULT_DOWNLOAD_TTL)
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    allowed_content_types: tuple[str, ...] = DEFAULT_CONTENT_TYPES
    shutdown_grace_seconds: float = DEFAULT_SHUTDOWN_GRACE_SECONDS
    log_level: str = "INFO"
    # Server processes sharing GRPC_PORT (SO_REUSEPORT) under one supervisor; 1 = no supervisor.
    workers: int = 1
    # Download URLs signed at the time rounded down to this window, so callers share one URL
    # per user and window (cache-friendly); 0 = off. Always smaller than download_ttl.default.
    download_url_reuse_seconds: int = 0
    # Callers, TLS, end-user tokens and rate limits: see `_auth()` below.
    auth: AuthSettings = AuthSettings()


class _Env:
    """Typed readers over an environment mapping; each failure names its variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def required(self, name: str) -> str:
        value = self.raw(name)
        if value is None:
            raise SettingsError(name, "is required but not set")
        return value

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        if not re.fullmatch(r"\d+", value):
            raise SettingsError(name, "must be a whole number")
        number = int(value)
        if not minimum <= number <= maximum:
            raise SettingsError(name, f"must be between {minimum} and {maximum}, got {number}")
        return number

    def number(self, name: str, default: float, minimum: float, maximum: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise SettingsError(name, "must be a number of seconds") from None
        if not minimum <= number <= maximum:
            raise SettingsError(name, f"must be between {minimum:g} and {maximum:g}")
        return number


def _credentials(env: _Env, key_var: str, secret_var: str) -> Credentials:
    access_key_id = env.required(key_var)
    # Don't echo it: someone may have pasted the secret here by mistake.
    problem = access_key_id_problem(access_key_id)
    if problem:
        raise SettingsError(key_var, problem)
    secret = env.required(secret_var)
    problem = secret_problem(secret)
    if problem:
        raise SettingsError(secret_var, problem)
    return Credentials(access_key_id, secret)


# --- credential sources: exactly one per identity -----------------------------------------


def _identity_source(
    env: _Env, prefix: str, identity: str, role_seconds: int
) -> tuple[CredentialSetting, str | None, str]:
    """(setting, key id when known now, the variable naming that key) for one identity.

    Sources: the seed's `<prefix>_KEY`/`_SECRET`, or `<prefix>_KEY_FILE`/`_SECRET_FILE`
    (read once here, so a missing or bad file stops start-up), or `<prefix>_ROLE_ARN`.
    """
    key, secret = f"{prefix}_KEY", f"{prefix}_SECRET"
    key_file, secret_file = f"{prefix}_KEY_FILE", f"{prefix}_SECRET_FILE"
    role = f"{prefix}_ROLE_ARN"
    groups = {"env": (key, secret), "files": (key_file, secret_file), "role": (role,)}
    present = {
        kind: [name for name in names if env.raw(name) is not None]
        for kind, names in groups.items()
    }
    chosen = [kind for kind, names in present.items() if names]
    if len(chosen) > 1:
        raise SettingsError(
            ", ".join(name for kind in chosen for name in present[kind]),
            f"set only one credential source for the {identity}: {key} and {secret}, "
            f"or {key_file} and {secret_file}, or {role}",
        )
    if chosen == ["files"]:
        files = KeyFiles(
            Path(env.required(key_file)), Path(env.required(secret_file)), key_file, secret_file
        )
        try:
            _, creds = read_key_files(files)
        except KeyFileError as error:
            raise SettingsError(error.variable, error.problem) from None
        return files, creds.access_key_id, key_file
    if chosen == ["role"]:
        arn = env.required(role)
        if not is_role_arn(arn):
            raise SettingsError(
                role, "must be an IAM role ARN such as arn:aws:iam::123456789012:role/NAME"
            )
        return AssumedRole(arn, role, role_seconds), None, role
    if not chosen:
        raise SettingsError(
            key, f"is required but not set (or use {key_file} and {secret_file}, or {role})"
        )
    creds = _credentials(env, key, secret)
    return creds, creds.access_key_id, key


def _credential_sources(env: _Env) -> tuple[CredentialSetting, CredentialSetting]:
    """The uploader's and the reader's credential settings; they must be two identities."""
    role_seconds = env.integer(
        "S3_ROLE_DURATION_SECONDS", DEFAULT_ROLE_SECONDS, ROLE_MIN_SECONDS, ROLE_MAX_SECONDS
    )
    uploader, uploader_key, uploader_var = _identity_source(
        env, "S3_UPLOAD", "uploader", role_seconds
    )
    reader, reader_key, reader_var = _identity_source(env, "S3_READ", "reader", role_seconds)
    same_role = (
        isinstance(uploader, AssumedRole)
        and isinstance(reader, AssumedRole)
        and uploader.role_arn == reader.role_arn
    )
    if same_role or (uploader_key is not None and uploader_key == reader_key):
        raise SettingsError(
            reader_var,
            f"must differ from {uploader_var}: the uploader and reader must be two identities",
        )
    return uploader, reader


def _ttl(env: _Env, kind: str, default: int, default_max: int) -> TtlRule:
    maximum = env.integer(f"{kind}_MAX_TTL_SECONDS", default_max, 1, SIGV4_MAX_EXPIRES)
    value = env.integer(f"{kind}_TTL_SECONDS", default, 1, SIGV4_MAX_EXPIRES)
    if value > maximum:
        raise SettingsError(
            f"{kind}_TTL_SECONDS", f"must not exceed {kind}_MAX_TTL_SECONDS ({maximum})"
        )
    return TtlRule(value, maximum)


def _content_types(env: _Env) -> tuple[str, ...]:
    name = "ALLOWED_CONTENT_TYPES"
    value = env.raw(name)
    if value is None:
        return DEFAULT_CONTENT_TYPES
    types = tuple(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    if not types:
        raise SettingsError(name, "must list at least one image type")
    for media_type in types:
        if not _MEDIA_TYPE.fullmatch(media_type):
            raise SettingsError(
                name, f"{media_type!r} is not a lowercase image/* media type without parameters"
            )
        if media_type in REFUSED_CONTENT_TYPES:
            raise SettingsError(name, f"{media_type} is refused: it can carry script")
    return types


def _endpoint(env: _Env) -> str | None:
    name = "S3_ENDPOINT_URL"
    value = env.raw(name)
    if value is None:
        return None
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        raise SettingsError(name, "has an invalid port") from None
    del port
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(name, "must be an http:// or https:// URL with a host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise SettingsError(name, "must be scheme://host[:port] only (no path, query or user)")
    # Lowercase, as the signed Host header is: a server comparing them as sent must agree.
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _listen_host(env: _Env) -> str:
    """GRPC_HOST: an IP address (IPv6 with or without brackets) or a host name; kept bare."""
    name = "GRPC_HOST"
    value = env.raw(name)
    if value is None:
        return DEFAULT_GRPC_HOST
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise SettingsError(name, "must be an IP address or a host name") from None
    return host


def host_port(host: str, port: int) -> str:
    """host:port for binding and logs; an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _role_durations(
    uploader: CredentialSetting, reader: CredentialSetting, upload: TtlRule, download: TtlRule
) -> None:
    """A role session must cover every allowed URL with room to renew before it is needed.

    The watcher renews a session `max ttl + 60 s` before it ends (at most half-way), so a
    session of at least twice that always covers the longest URL without STS on the path.
    """
    for setting, rule, variable in (
        (uploader, upload, "UPLOAD_MAX_TTL_SECONDS"),
        (reader, download, "DOWNLOAD_MAX_TTL_SECONDS"),
    ):
        if isinstance(setting, AssumedRole):
            needed = 2 * (rule.maximum + 60)
            if setting.duration_seconds < needed:
                raise SettingsError(
                    "S3_ROLE_DURATION_SECONDS",
                    f"must be at least 2 x ({variable} + 60 s) = {needed} s so every allowed "
                    f"URL fits a role session; raise it (at most 3600 s for chained IRSA "
                    f"roles) or lower {variable}",
                )


def load(environ: Mapping[str, str]) -> Settings:
    """Build Settings from an environment mapping, or raise SettingsError (one line)."""
    env = _Env(environ)
    uploader, reader = _credential_sources(env)

    endpoint_url = _endpoint(env)
    region = env.required("AWS_REGION")
    if not _REGION.fullmatch(region):
        raise SettingsError("AWS_REGION", "must be an AWS region name such as eu-west-1")
    if endpoint_url is None and _OTHER_PARTITION.match(region):
        raise SettingsError(
            "AWS_REGION",
            "is outside the standard aws partition (China, GovCloud, ISO): not supported",
        )
    bucket = env.required("S3_BUCKET")
    if not is_valid_bucket(bucket):
        raise SettingsError("S3_BUCKET", "must be a valid S3 bucket name (3-63 of a-z 0-9 . -)")
    if endpoint_url is None and "." in bucket:
        raise SettingsError(
            "S3_BUCKET",
            "must not contain dots: its virtual-hosted HTTPS name would not match "
            "the S3 certificate",
        )

    prefix = env.raw("S3_KEY_PREFIX")
    key_prefix = DEFAULT_PREFIX if prefix is None else prefix
    if not is_valid_prefix(key_prefix):
        raise SettingsError(
            "S3_KEY_PREFIX", "must be segments of A-Z a-z 0-9 . _ - each ending in '/'"
        )

    grpc_port = env.integer("GRPC_PORT", DEFAULT_GRPC_PORT, 0, 65535)
    metrics_port = env.integer("METRICS_PORT", DEFAULT_METRICS_PORT, 0, 65535)
    if grpc_port and grpc_port == metrics_port:
        raise SettingsError("METRICS_PORT", "must differ from GRPC_PORT")
    health_port = None
    if env.raw("HEALTH_PORT") is not None:
        health_port = env.integer("HEALTH_PORT", 0, 0, 65535)
        if health_port and health_port in (grpc_port, metrics_port):
            raise SettingsError("HEALTH_PORT", "must differ from GRPC_PORT and METRICS_PORT")

    workers = env.integer("WORKERS", 1, 1, MAX_WORKERS)
    if workers > 1 and grpc_port == 0:
        raise SettingsError("WORKERS", "needs a fixed GRPC_PORT: the workers share one port")
    # Each worker serves its own metrics: worker i on METRICS_PORT + i (0: each an ephemeral one).
    last_metrics_port = metrics_port + workers - 1
    if workers > 1 and metrics_port and last_metrics_port > 65535:
        raise SettingsError("METRICS_PORT", "plus WORKERS - 1 must not exceed 65535")
    if workers > 1 and metrics_port and metrics_port <= grpc_port <= last_metrics_port:
        raise SettingsError(
            "METRICS_PORT",
            f"the workers' metrics ports {metrics_port}-{last_metrics_port} include GRPC_PORT",
        )
    if health_port and metrics_port and metrics_port <= health_port <= last_metrics_port:
        raise SettingsError(
            "HEALTH_PORT",
            f"must not be one of the metrics ports {metrics_port}-{last_metrics_port}",
        )
    upload_ttl = _ttl(env, "UPLOAD", *DEFAULT_UPLOAD_TTL)
    download_ttl = _ttl(env, "DOWNLOAD", *DEFAULT_DOWNLOAD_TTL)
    _role_durations(uploader, reader, upload_ttl, download_ttl)
    reuse = env.integer("DOWNLOAD_URL_REUSE_SECONDS", 0, 0, SIGV4_MAX_EXPIRES)
    if reuse >= download_ttl.default:
        raise SettingsError(
            "DOWNLOAD_URL_REUSE_SECONDS",
            f"must be smaller than DOWNLOAD_TTL_SECONDS ({download_ttl.default})",
        )

    log_level = (env.raw("LOG_LEVEL") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError("LOG_LEVEL", "must be one of DEBUG, INFO, WARNING, ERROR")

    return Settings(
        uploader=uploader,
        reader=reader,
        region=region,
        bucket=bucket,
        endpoint_url=endpoint_url,
        key_prefix=key_prefix,
        grpc_host=_listen_host(env),
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        health_port=health_port,
        upload_ttl=upload_ttl,
        download_ttl=download_ttl,
        max_upload_bytes=env.integer(
            "MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES, 1, S3_MAX_PUT_BYTES
        ),
        allowed_content_types=_content_types(env),
        shutdown_grace_seconds=env.number(
            "SHUTDOWN_GRACE_SECONDS", DEFAULT_SHUTDOWN_GRACE_SECONDS, 0.0, 3600.0
        ),
        log_level=log_level,
        auth=_auth(env),
        workers=workers,
        download_url_reuse_seconds=reuse,
    )


# -- callers, TLS, end-user tokens, rate limits ---------------------------------------------
# Only the shape of these settings is checked here; the files they name are read (and their
# contents checked, with one-line SettingsErrors) by tls, callers and enduser at start-up.

MAX_RATE = 1_000_000.0


def _file(env: _Env, name: str) -> str | None:
    path = env.raw(name)
    if path is not None and not os.path.isfile(path):
        raise SettingsError(name, f"{path} is not a readable file")
    return path


def _tls(env: _Env) -> TlsSettings | None:
    cert = _file(env, "TLS_CERT_FILE")
    key = _file(env, "TLS_KEY_FILE")
    client_ca = _file(env, "TLS_CLIENT_CA_FILE")
    if cert is None and key is None:
        if client_ca is not None:
            raise SettingsError(
                "TLS_CLIENT_CA_FILE", "needs TLS_CERT_FILE and TLS_KEY_FILE (mutual TLS is TLS)"
            )
        return None
    if cert is None:
        raise SettingsError("TLS_CERT_FILE", "must be set together with TLS_KEY_FILE")
    if key is None:
        raise SettingsError("TLS_KEY_FILE", "must be set together with TLS_CERT_FILE")
    return TlsSettings(cert, key, client_ca)


def _end_user(env: _Env) -> EndUserSettings | None:
    secret = env.raw("END_USER_JWT_SECRET")
    jwks_file = _file(env, "END_USER_JWT_JWKS_FILE")
    issuer = env.raw("END_USER_JWT_ISSUER")
    audience = env.raw("END_USER_JWT_AUDIENCE")
    if secret is None and jwks_file is None:
        for name, value in (("END_USER_JWT_ISSUER", issuer), ("END_USER_JWT_AUDIENCE", audience)):
            if value is not None:
                raise SettingsError(
                    name, "is set but END_USER_JWT_SECRET and END_USER_JWT_JWKS_FILE are not"
                )
        return None
    if secret is not None and jwks_file is not None:
        raise SettingsError(
            "END_USER_JWT_JWKS_FILE", "set END_USER_JWT_SECRET or END_USER_JWT_JWKS_FILE, not both"
        )
    if secret is not None and len(secret.encode()) < 32:
        raise SettingsError("END_USER_JWT_SECRET", "must be at least 32 bytes (an HS256 key)")
    return EndUserSettings(
        issuer=env.required("END_USER_JWT_ISSUER"),
        audience=env.required("END_USER_JWT_AUDIENCE"),
        hs256_secret=secret,
        jwks_file=jwks_file,
        leeway_seconds=env.integer("END_USER_JWT_LEEWAY_SECONDS", 30, 0, 300),
    )


def _rate_limit(env: _Env, what: str, default: RateLimit | None) -> RateLimit | None:
    """<WHAT>_PER_SECOND (0 = no limit) and <WHAT>_BURST, e.g. UPLOADS_PER_CALLER_PER_SECOND."""
    rate_name, burst_name = f"{what}_PER_SECOND", f"{what}_BURST"
    text = env.raw(rate_name)
    rate = default.rate if default else 0.0
    if text is not None:
        try:
            rate = float(text)
        except ValueError:
            raise SettingsError(rate_name, "must be a number of calls per second") from None
        if not 0 <= rate <= MAX_RATE:
            raise SettingsError(rate_name, f"must be between 0 (no limit) and {MAX_RATE:g}")
    burst = env.integer(burst_name, default.burst if default else 1, 1, int(MAX_RATE))
    if rate == 0:
        if env.raw(burst_name) is not None:
            raise SettingsError(burst_name, f"is set but {what}_PER_SECOND is 0 (no limit)")
        return None
    return RateLimit(rate, burst)


def _auth(env: _Env) -> AuthSettings:
    defaults = RateLimits()
    return AuthSettings(
        tls=_tls(env),
        callers_file=_file(env, "CALLERS_FILE"),
        end_user=_end_user(env),
        rate_limits=RateLimits(
            upload_per_caller=_rate_limit(env, "UPLOADS_PER_CALLER", defaults.upload_per_caller),
            upload_per_user=_rate_limit(env, "UPLOADS_PER_USER", defaults.upload_per_user),
            download_per_caller=_rate_limit(
                env, "DOWNLOADS_PER_CALLER", defaults.download_per_caller
            ),
        ),
    )
