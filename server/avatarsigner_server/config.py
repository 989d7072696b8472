"""Settings from the environment, validated once at start-up into a frozen object.

Every problem is a `SettingsError` whose message is one line naming the variable and the
rule; it never echoes a secret. `avatar-signer serve` prints it and exits with status 2.
The seed's six variable names are kept as they are; everything else has a default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .credentials import Credentials
from .keys import is_valid_prefix

MIB = 1024 * 1024
# S3 limits: a single PUT is at most 5 GiB; a SigV4 presigned URL lives at most 7 days.
S3_MAX_PUT_BYTES = 5 * 1024 * MIB
SIGV4_MAX_EXPIRES = 7 * 24 * 3600
DEFAULT_CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp")
# Types a browser may run script from when opened directly: never served from our bucket.
REFUSED_CONTENT_TYPES = frozenset({"image/svg+xml"})

_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_MEDIA_TYPE = re.compile(r"image/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_ACCESS_KEY_ID = re.compile(r"[A-Za-z0-9]{3,128}")


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
class Settings:
    """Everything the service needs, validated. Secrets are kept out of repr()."""

    uploader: Credentials = field(repr=False)
    reader: Credentials = field(repr=False)
    region: str
    bucket: str
    endpoint_url: str | None = None
    key_prefix: str = "profiles/"
    grpc_host: str = "0.0.0.0"  # noqa: S104 - a service in a pod listens on all interfaces
    grpc_port: int = 50051
    metrics_port: int = 9464
    upload_ttl: TtlRule = TtlRule(600, 3600)
    download_ttl: TtlRule = TtlRule(300, 3600)
    max_upload_bytes: int = 5 * MIB
    allowed_content_types: tuple[str, ...] = DEFAULT_CONTENT_TYPES
    shutdown_grace_seconds: float = 10.0
    log_level: str = "INFO"


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
    if not _ACCESS_KEY_ID.fullmatch(access_key_id):
        # Don't echo it: someone may have pasted the secret here by mistake.
        raise SettingsError(key_var, "must be an access key id (3-128 letters and digits)")
    secret = env.required(secret_var)
    if len(secret) < 8 or any(c.isspace() for c in secret):
        raise SettingsError(secret_var, "must be a secret access key (8+ characters, no spaces)")
    return Credentials(access_key_id, secret)


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
    return f"{parts.scheme}://{parts.netloc}"


def load(environ: Mapping[str, str]) -> Settings:
    """Build Settings from an environment mapping, or raise SettingsError (one line)."""
    env = _Env(environ)
    uploader = _credentials(env, "S3_UPLOAD_KEY", "S3_UPLOAD_SECRET")
    reader = _credentials(env, "S3_READ_KEY", "S3_READ_SECRET")
    if uploader.access_key_id == reader.access_key_id:
        raise SettingsError(
            "S3_READ_KEY",
            "must differ from S3_UPLOAD_KEY: the uploader and reader must be two identities",
        )

    region = env.required("AWS_REGION")
    if not _REGION.fullmatch(region):
        raise SettingsError("AWS_REGION", "must be an AWS region name such as eu-west-1")

    endpoint_url = _endpoint(env)
    bucket = env.required("S3_BUCKET")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise SettingsError("S3_BUCKET", "must be a valid S3 bucket name (3-63 of a-z 0-9 . -)")
    if endpoint_url is None and "." in bucket:
        raise SettingsError(
            "S3_BUCKET",
            "must not contain dots: its virtual-hosted HTTPS name would not match "
            "the S3 certificate",
        )

    prefix = env.raw("S3_KEY_PREFIX")
    key_prefix = "profiles/" if prefix is None else prefix
    if not is_valid_prefix(key_prefix):
        raise SettingsError(
            "S3_KEY_PREFIX", "must be segments of A-Z a-z 0-9 . _ - each ending in '/'"
        )

    grpc_port = env.integer("GRPC_PORT", 50051, 0, 65535)
    metrics_port = env.integer("METRICS_PORT", 9464, 0, 65535)
    if grpc_port and grpc_port == metrics_port:
        raise SettingsError("METRICS_PORT", "must differ from GRPC_PORT")

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
        grpc_host=env.raw("GRPC_HOST") or "0.0.0.0",  # noqa: S104
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        upload_ttl=_ttl(env, "UPLOAD", 600, 3600),
        download_ttl=_ttl(env, "DOWNLOAD", 300, 3600),
        max_upload_bytes=env.integer("MAX_UPLOAD_BYTES", 5 * MIB, 1, S3_MAX_PUT_BYTES),
        allowed_content_types=_content_types(env),
        shutdown_grace_seconds=env.number("SHUTDOWN_GRACE_SECONDS", 10.0, 0.0, 3600.0),
        log_level=log_level,
    )
