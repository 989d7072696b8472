"""The profile service's settings, from the environment (see examples/web/README.md).

A missing or malformed setting stops start-up with one line naming the variable; a
token or secret is never echoed. MAX_UPLOAD_BYTES and ALLOWED_CONTENT_TYPES have the
service's names and defaults: set both programs from the same values, so the pages
refuse what the service would.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TYPES = ("image/jpeg", "image/png", "image/webp")
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_FEED_USERS = ("alice", "bob", "carol", "dave", "erin", "frank")
# How the feed shows avatars: a signed URL each (one BatchCreateDownloadUrls call), or,
# where the service has CloudFront configured, plain URLs under CloudFront viewer cookies.
FEED_AVATARS = ("urls", "cookies")
# The service's rule for user ids; checking it at sign-in gives a clear message early.
USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class SettingsError(ValueError):
    """One line naming the variable."""


@dataclass(frozen=True)
class DemoIdentityProvider:
    """Stands in for your identity provider: issues the signed-in user's token."""

    secret: str = field(repr=False)
    issuer: str
    audience: str
    ttl_seconds: int = 3600


@dataclass(frozen=True)
class WebSettings:
    signer_target: str = "127.0.0.1:50051"
    signer_token: str | None = field(default=None, repr=False)
    signer_ca_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    session_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    max_upload_bytes: int = DEFAULT_MAX_BYTES
    allowed_types: tuple[str, ...] = DEFAULT_TYPES
    identity_provider: DemoIdentityProvider | None = None
    feed_users: tuple[str, ...] = DEFAULT_FEED_USERS
    feed_avatars: str = "urls"

    @property
    def end_user_binding(self) -> bool:
        return self.identity_provider is not None


def load(env: Mapping[str, str] | None = None) -> WebSettings:
    """Settings from `env` (default: os.environ); raises SettingsError."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    if env.get("AVATAR_SIGNER_TARGET"):
        values["signer_target"] = env["AVATAR_SIGNER_TARGET"]
    values["signer_token"] = _token(env)
    if env.get("AVATAR_SIGNER_CA_FILE"):
        path = Path(env["AVATAR_SIGNER_CA_FILE"])
        if not path.is_file():
            raise SettingsError(f"AVATAR_SIGNER_CA_FILE: {path}: no such file")
        values["signer_ca_file"] = path
    if env.get("WEB_HOST"):
        values["host"] = env["WEB_HOST"]
    if env.get("WEB_PORT"):
        values["port"] = _integer(env, "WEB_PORT", 0, 65535)
    if env.get("WEB_SESSION_SECRET"):
        if len(env["WEB_SESSION_SECRET"]) < 32:
            raise SettingsError("WEB_SESSION_SECRET: must be at least 32 characters")
        values["session_secret"] = env["WEB_SESSION_SECRET"]
    if env.get("MAX_UPLOAD_BYTES"):
        values["max_upload_bytes"] = _integer(env, "MAX_UPLOAD_BYTES", 1, 5 * 1024**3)
    if env.get("ALLOWED_CONTENT_TYPES"):
        types = tuple(t.strip().lower() for t in env["ALLOWED_CONTENT_TYPES"].split(",") if t)
        if not types or any(not t.startswith("image/") or t == "image/svg+xml" for t in types):
            raise SettingsError("ALLOWED_CONTENT_TYPES: image/* types only, and never SVG")
        values["allowed_types"] = types
    values["identity_provider"] = _identity_provider(env)
    if env.get("FEED_USERS") is not None:
        users = tuple(u.strip() for u in env["FEED_USERS"].split(",") if u.strip())
        bad = [u for u in users if not USER_ID.fullmatch(u)]
        if bad:
            raise SettingsError(f"FEED_USERS: {bad[0]!r} is not a valid user id")
        values["feed_users"] = users
    if env.get("FEED_AVATARS"):
        if env["FEED_AVATARS"] not in FEED_AVATARS:
            raise SettingsError("FEED_AVATARS: must be urls (the default) or cookies")
        values["feed_avatars"] = env["FEED_AVATARS"]
    return WebSettings(**values)  # type: ignore[arg-type]


def _token(env: Mapping[str, str]) -> str | None:
    if env.get("AVATAR_SIGNER_TOKEN_FILE"):
        path = Path(env["AVATAR_SIGNER_TOKEN_FILE"])
        try:
            token = path.read_text().strip()
        except OSError as error:
            raise SettingsError(f"AVATAR_SIGNER_TOKEN_FILE: {path}: {error.strerror}") from None
        if not token:
            raise SettingsError(f"AVATAR_SIGNER_TOKEN_FILE: {path}: is empty")
        return token
    return env.get("AVATAR_SIGNER_TOKEN") or None


def _identity_provider(env: Mapping[str, str]) -> DemoIdentityProvider | None:
    names = ("DEMO_IDP_JWT_SECRET", "DEMO_IDP_JWT_ISSUER", "DEMO_IDP_JWT_AUDIENCE")
    given = [name for name in names if env.get(name)]
    if not given:
        return None
    missing = [name for name in names if name not in given]
    if missing:
        raise SettingsError(f"{missing[0]}: is required when {given[0]} is set")
    if len(env["DEMO_IDP_JWT_SECRET"]) < 32:
        raise SettingsError("DEMO_IDP_JWT_SECRET: must be at least 32 bytes")
    return DemoIdentityProvider(
        secret=env["DEMO_IDP_JWT_SECRET"],
        issuer=env["DEMO_IDP_JWT_ISSUER"],
        audience=env["DEMO_IDP_JWT_AUDIENCE"],
    )


def _integer(env: Mapping[str, str], name: str, low: int, high: int) -> int:
    try:
        value = int(env[name])
    except ValueError:
        raise SettingsError(f"{name}: must be a whole number") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}: must be between {low} and {high}")
    return value
