"""Which bucket, where: AWS_REGION, S3_BUCKET, S3_ENDPOINT_URL and S3_KEY_PREFIX."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ..signing.object_keys import DEFAULT_PREFIX, is_valid_prefix
from .env import Env, SettingsError

_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Regions whose endpoints and ARNs are not the aws partition's (amazonaws.com, arn:aws).
_OTHER_PARTITION = re.compile(r"cn-|us-gov-|[a-z]{2}-iso[a-z]*-")


def is_valid_region(name: str) -> bool:
    """An AWS region name such as eu-west-1."""
    return _REGION.fullmatch(name) is not None


def is_valid_bucket(name: str) -> bool:
    """An S3 bucket name: 3-63 of a-z 0-9 . -, alphanumeric at both ends, no '..'."""
    return _BUCKET.fullmatch(name) is not None and ".." not in name


def endpoint_url(env: Env) -> str | None:
    """S3_ENDPOINT_URL: scheme://host[:port] of an S3-compatible server, lowercased."""
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


def region(env: Env, endpoint: str | None) -> str:
    value = env.required("AWS_REGION")
    if not is_valid_region(value):
        raise SettingsError("AWS_REGION", "must be an AWS region name such as eu-west-1")
    if endpoint is None and _OTHER_PARTITION.match(value):
        raise SettingsError(
            "AWS_REGION",
            "is outside the standard aws partition (China, GovCloud, ISO): not supported",
        )
    return value


def bucket(env: Env, endpoint: str | None) -> str:
    name = env.required("S3_BUCKET")
    if not is_valid_bucket(name):
        raise SettingsError("S3_BUCKET", "must be a valid S3 bucket name (3-63 of a-z 0-9 . -)")
    if endpoint is None and "." in name:
        raise SettingsError(
            "S3_BUCKET",
            "must not contain dots: its virtual-hosted HTTPS name would not match "
            "the S3 certificate",
        )
    return name


def key_prefix(env: Env) -> str:
    value = env.raw("S3_KEY_PREFIX")
    prefix = DEFAULT_PREFIX if value is None else value
    if not is_valid_prefix(prefix):
        raise SettingsError(
            "S3_KEY_PREFIX", "must be segments of A-Z a-z 0-9 . _ - each ending in '/'"
        )
    return prefix
