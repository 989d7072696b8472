"""What a URL may be: lifetimes, allowed image types, the largest upload, the reuse window."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .env import Env, SettingsError

MIB = 1024 * 1024
DEFAULT_UPLOAD_TTL = (600, 1200)  # (default, maximum) seconds
DEFAULT_DOWNLOAD_TTL = (300, 1200)
DEFAULT_MAX_UPLOAD_BYTES = 5 * MIB
# S3 limits: a single PUT is at most 5 GiB; a SigV4 presigned URL lives at most 7 days.
S3_MAX_PUT_BYTES = 5 * 1024 * MIB
SIGV4_MAX_EXPIRES = 7 * 24 * 3600
DEFAULT_CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp")
# Types a browser may run script from when opened directly: never served from our bucket.
REFUSED_CONTENT_TYPES = frozenset({"image/svg+xml"})

_MEDIA_TYPE = re.compile(r"image/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


@dataclass(frozen=True)
class TtlRule:
    """Default and maximum lifetime of one kind of URL, in seconds."""

    default: int
    maximum: int


UPLOAD_TTL = TtlRule(*DEFAULT_UPLOAD_TTL)
DOWNLOAD_TTL = TtlRule(*DEFAULT_DOWNLOAD_TTL)


def ttl(env: Env, kind: str, default: int, default_max: int) -> TtlRule:
    """<KIND>_TTL_SECONDS and <KIND>_MAX_TTL_SECONDS (kind: UPLOAD or DOWNLOAD)."""
    maximum = env.integer(f"{kind}_MAX_TTL_SECONDS", default_max, 1, SIGV4_MAX_EXPIRES)
    value = env.integer(f"{kind}_TTL_SECONDS", default, 1, SIGV4_MAX_EXPIRES)
    if value > maximum:
        raise SettingsError(
            f"{kind}_TTL_SECONDS", f"must not exceed {kind}_MAX_TTL_SECONDS ({maximum})"
        )
    return TtlRule(value, maximum)


def content_types(env: Env) -> tuple[str, ...]:
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


def max_upload_bytes(env: Env) -> int:
    return env.integer("MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES, 1, S3_MAX_PUT_BYTES)


def reuse_seconds(env: Env, download_ttl: TtlRule) -> int:
    """DOWNLOAD_URL_REUSE_SECONDS: always smaller than the default download ttl."""
    reuse = env.integer("DOWNLOAD_URL_REUSE_SECONDS", 0, 0, SIGV4_MAX_EXPIRES)
    if reuse >= download_ttl.default:
        raise SettingsError(
            "DOWNLOAD_URL_REUSE_SECONDS",
            f"must be smaller than DOWNLOAD_TTL_SECONDS ({download_ttl.default})",
        )
    return reuse
