"""CloudFront in front of the bucket: the CLOUDFRONT_* settings (off unless CLOUDFRONT_URL).

    CLOUDFRONT_URL                     the distribution's origin, https://<host>
    CLOUDFRONT_KEY_PAIR_ID             the public key's id in the distribution's trusted key
      or CLOUDFRONT_KEY_PAIR_ID_FILE   group, from the environment or from a file that
                                       rotates with the key (one of the two)
    CLOUDFRONT_PRIVATE_KEY_FILE        the private key, unencrypted PEM (RSA 2048 or ECDSA
                                       P-256; PKCS#1, PKCS#8 or SEC 1)
    CLOUDFRONT_HASH_ALGORITHM          SHA1 (default: what botocore signs) or SHA256
    CLOUDFRONT_COOKIE_TTL_SECONDS      life of viewer cookies: default 3600,
      CLOUDFRONT_COOKIE_MAX_TTL_SECONDS  at most 43200
    CLOUDFRONT_COOKIE_DOMAIN           the cookies' Domain attribute; unset: host-only

Only the shape is checked here; the key file is read and checked (one-line SettingsError
naming CLOUDFRONT_PRIVATE_KEY_FILE) by `credentials.cloudfront_key` at start-up.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..signing.cloudfront import CloudFrontKeyError, HashAlgorithm, check_key_pair_id
from .env import Env, SettingsError
from .limits import TtlRule, ttl

URL = "CLOUDFRONT_URL"
KEY_PAIR_ID = "CLOUDFRONT_KEY_PAIR_ID"
KEY_PAIR_ID_FILE = "CLOUDFRONT_KEY_PAIR_ID_FILE"
PRIVATE_KEY_FILE = "CLOUDFRONT_PRIVATE_KEY_FILE"
HASH_ALGORITHM = "CLOUDFRONT_HASH_ALGORITHM"
COOKIE_DOMAIN = "CLOUDFRONT_COOKIE_DOMAIN"
# Viewer cookies grant every avatar for their whole life: an hour by default (a feed
# session; the web app asks again before they expire), half a day at most.
DEFAULT_COOKIE_TTL = (3600, 43200)
COOKIE_TTL = TtlRule(*DEFAULT_COOKIE_TTL)
# What the distribution is set up with (`avatar-signer policies --distribution-arn` prints
# these in its cache and response headers policies; the service relies on them too):
# edges keep an avatar EDGE_TTL_SECONDS, and never longer than EDGE_MAX_TTL_SECONDS
# whatever Cache-Control the object carries; browsers are told max-age=VIEWER_MAX_AGE_SECONDS.
# The minimum TTL is EDGE_TTL_SECONDS too: avatars are stored with `Cache-Control: private,
# max-age=0` (for S3 URLs' viewers), which alone would keep CloudFront from caching them.
EDGE_TTL_SECONDS = 300
EDGE_MAX_TTL_SECONDS = 3600
VIEWER_MAX_AGE_SECONDS = 300
#: The settings that make CloudFront configured (named in FAILED_PRECONDITION messages).
REQUIRED = f"{URL}, {KEY_PAIR_ID} (or {KEY_PAIR_ID_FILE}) and {PRIVATE_KEY_FILE}"

# A lowercase DNS name with at least two labels.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+")


@dataclass(frozen=True)
class CloudFrontSettings:
    """A distribution with the bucket as its origin, and the key that signs for it."""

    url: str  # https://<host>, no trailing slash
    private_key_file: Path
    # Exactly one: the id from the environment, or a file read (and re-read) with the key.
    key_pair_id: str | None = None
    key_pair_id_file: Path | None = None
    hash_algorithm: HashAlgorithm = HashAlgorithm.SHA1
    cookie_ttl: TtlRule = COOKIE_TTL
    cookie_domain: str | None = None


def _url(env: Env) -> str | None:
    value = env.raw(URL)
    if value is None:
        return None
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = -1
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or not _HOST.fullmatch(host) or port is not None:
        raise SettingsError(
            URL, "must be https://<host>: the distribution's domain or alternate domain name"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise SettingsError(URL, "must be https://<host> only (no path, query or user)")
    return f"https://{host}"


def _cookie_domain(env: Env, host: str) -> str | None:
    value = env.raw(COOKIE_DOMAIN)
    if value is None:
        return None
    domain = value.lower().removeprefix(".")
    try:
        ipaddress.ip_address(domain)
    except ValueError:
        pass
    else:
        raise SettingsError(COOKIE_DOMAIN, "must be a domain name, not an IP address")
    if not _HOST.fullmatch(domain):
        raise SettingsError(COOKIE_DOMAIN, "must be a domain name with at least one dot")
    if host != domain and not host.endswith(f".{domain}"):
        # A browser sends a cookie only to hosts within its Domain.
        raise SettingsError(
            COOKIE_DOMAIN, f"must be {host} or a parent domain of it (CLOUDFRONT_URL's host)"
        )
    return domain


def _key_pair_id(env: Env) -> tuple[str | None, Path | None]:
    value, path = env.raw(KEY_PAIR_ID), env.file(KEY_PAIR_ID_FILE)
    if value is not None and path is not None:
        raise SettingsError(KEY_PAIR_ID_FILE, f"set {KEY_PAIR_ID} or {KEY_PAIR_ID_FILE}, not both")
    if value is None and path is None:
        raise SettingsError(
            KEY_PAIR_ID,
            f"is required with {URL}: the id of the public key in the distribution's "
            f"trusted key group (or {KEY_PAIR_ID_FILE})",
        )
    if value is not None:
        try:
            check_key_pair_id(value)
        except CloudFrontKeyError as error:
            raise SettingsError(KEY_PAIR_ID, str(error)) from None
    return value, Path(path) if path is not None else None


def _hash_algorithm(env: Env) -> HashAlgorithm:
    value = (env.raw(HASH_ALGORITHM) or HashAlgorithm.SHA1.value).upper()
    try:
        return HashAlgorithm(value)
    except ValueError:
        raise SettingsError(HASH_ALGORITHM, "must be SHA1 (the default) or SHA256") from None


def cloudfront(env: Env) -> CloudFrontSettings | None:
    """The CLOUDFRONT_* settings, or None when CloudFront is off (no CLOUDFRONT_* set)."""
    url = _url(env)
    if url is None:
        for name in (
            KEY_PAIR_ID,
            KEY_PAIR_ID_FILE,
            PRIVATE_KEY_FILE,
            HASH_ALGORITHM,
            COOKIE_DOMAIN,
            "CLOUDFRONT_COOKIE_TTL_SECONDS",
            "CLOUDFRONT_COOKIE_MAX_TTL_SECONDS",
        ):
            if env.raw(name) is not None:
                raise SettingsError(name, f"is set but {URL} is not (CloudFront is off without it)")
        return None
    key_pair_id, key_pair_id_file = _key_pair_id(env)
    private_key_file = env.file(PRIVATE_KEY_FILE)
    if private_key_file is None:
        raise SettingsError(
            PRIVATE_KEY_FILE, f"is required with {URL}: the PEM file of the CloudFront private key"
        )
    return CloudFrontSettings(
        url=url,
        private_key_file=Path(private_key_file),
        key_pair_id=key_pair_id,
        key_pair_id_file=key_pair_id_file,
        hash_algorithm=_hash_algorithm(env),
        cookie_ttl=ttl(env, "CLOUDFRONT_COOKIE", *DEFAULT_COOKIE_TTL),
        cookie_domain=_cookie_domain(env, urlsplit(url).hostname or ""),
    )
